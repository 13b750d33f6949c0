"""Metrics on a case computed by hand; class mapping, split, sampling, augmentation, losses."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from cloudseg.backend.errors import InputError
from cloudseg.backend.store.dataset import open_dataset
from cloudseg.training.augment import make_augmentation
from cloudseg.training.config import Config, DataConfig, SplitConfig
from cloudseg.training.data import (
    WindowDataset,
    balanced_weights,
    make_sampler,
    map_classes,
    split_scenes,
    store_normalization,
)
from cloudseg.training.losses import LOSSES, create_loss
from cloudseg.training.metrics import confusion_matrix, metrics_from_confusion, write_report

NAMES = ["clear", "cloud", "cloud shadow"]


def test_metrics_match_a_case_computed_by_hand(tmp_path):
    reference = np.array([[0, 0, 1, 1], [2, 255, 0, 1]])
    prediction = np.array([[0, 1, 1, 1], [0, 2, 255, 1]])  # 255: nodata in the prediction
    matrix = confusion_matrix(reference, prediction, 3)
    # rows reference, columns prediction; the ignored reference and nodata prediction drop
    assert matrix.tolist() == [[1, 1, 0], [0, 3, 0], [1, 0, 0]]
    m = metrics_from_confusion(matrix, NAMES)
    clear, cloud, shadow = (m["per_class"][n] for n in NAMES)
    assert clear["iou"] == pytest.approx(1 / 3)  # tp 1, fp 1 (shadow as clear), fn 1
    assert clear["precision"] == pytest.approx(1 / 2) and clear["recall"] == pytest.approx(1 / 2)
    assert clear["f1"] == pytest.approx(1 / 2)
    assert cloud["iou"] == pytest.approx(3 / 4) and cloud["recall"] == 1.0
    assert cloud["f1"] == pytest.approx(6 / 7)
    assert shadow["iou"] == 0.0 and shadow["precision"] is None  # never predicted
    assert m["pixel_accuracy"] == pytest.approx(4 / 6)
    assert m["balanced_accuracy"] == pytest.approx((1 / 2 + 1 + 0) / 3)
    assert m["mean_iou"] == pytest.approx((1 / 3 + 3 / 4 + 0) / 3)
    assert m["pixels"] == 6
    json_path, png = write_report(m, tmp_path)
    assert json.loads(json_path.read_text())["confusion_matrix"] == matrix.tolist()
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_class_absent_from_reference_and_prediction_has_no_score():
    m = metrics_from_confusion(confusion_matrix([0, 1], [0, 1], 3), NAMES)
    assert m["per_class"]["cloud shadow"]["iou"] is None
    assert m["mean_iou"] == 1.0


def test_store_classes_map_by_name_with_overrides():
    source = [
        {"value": 0, "name": "clear"},
        {"value": 1, "name": "thick cloud"},
        {"value": 2, "name": "thin cloud"},
        {"value": 3, "name": "cloud shadow"},
    ]
    assert map_classes(source, NAMES) == {0: 0, 1: 1, 2: 1, 3: 2}
    assert map_classes(source, NAMES, {"thin cloud": None}) == {0: 0, 1: 1, 3: 2}
    with pytest.raises(InputError, match="source classes are clear, thick cloud"):
        map_classes(source, NAMES, {"haze": "cloud"})


def test_split_keeps_groups_on_one_side():
    scenes = ["A-1", "A-2", "B-1", "B-2", "C-1"]
    train, val = split_scenes(scenes, SplitConfig(val_scenes=["B-1"], group_pattern="^[^-]+"), 0)
    assert val == ["B-1", "B-2"] and train == ["A-1", "A-2", "C-1"]
    train, val = split_scenes(scenes, SplitConfig(val_fraction=0.34, group_pattern="^[^-]+"), 3)
    assert {s[0] for s in train}.isdisjoint({s[0] for s in val}) and len(train) + len(val) == 5
    with pytest.raises(InputError, match="groups are A, B, C"):
        split_scenes(scenes, SplitConfig(val_groups=["D"], group_pattern="^[^-]+"), 0)
    with pytest.raises(InputError, match="needs both"):
        split_scenes(scenes, SplitConfig(val_groups=["A", "B", "C"], group_pattern="^[^-]+"), 0)


def test_balanced_weights_give_each_cloud_bin_the_same_share():
    fractions = np.array([0.0] * 90 + [0.5] * 9 + [1.0])
    weights = balanced_weights(fractions)
    shares = [weights[fractions == f].sum() / weights.sum() for f in (0.0, 0.5, 1.0)]
    assert shares == pytest.approx([1 / 3] * 3)


def test_windows_from_the_real_store(cs12_store):
    dataset = open_dataset(cs12_store, env_file=None)
    config = DataConfig(store=str(cs12_store), bands=["B04", "B02"], window=128)
    scenes = ["ROI_1746-high-cloudy", "ROI_2507-clear"]
    mean, std = store_normalization(dataset, scenes, ["B04", "B02"], config.scale)
    windows = WindowDataset(dataset, scenes, config, NAMES, mean, std)
    # 509 px at stride 64: starts 0, 64, ..., 320, 381 -> 7 x 7 candidate windows per scene
    assert len(windows) == 2 * 49
    image, mask = windows[0]
    assert image.shape == (2, 128, 128) and image.dtype == torch.float32
    raw, raw_mask = dataset.read(windows.windows[0].scene, (0, 0, 128, 128))
    expected = (raw[[2, 0]] * 0.0001 - mean[:, None, None]) / std[:, None, None]
    assert np.allclose(image.numpy(), expected, atol=1e-5)
    # thick and thin cloud -> cloud (1), shadow 3 -> 2
    assert np.array_equal(mask.numpy(), np.array([0, 1, 1, 2, 255])[np.minimum(raw_mask, 4)])
    cloudy = [w.cloud_fraction for w in windows.windows if w.scene == "ROI_1746-high-cloudy"]
    assert max(cloudy) > 0.9 and all(
        w.cloud_fraction == 0 for w in windows.windows if w.scene == "ROI_2507-clear"
    )
    balanced = list(make_sampler(windows, "balanced", 2000, seed=1))
    plain = list(make_sampler(windows, "random", 2000, seed=1))
    clear_share = [
        np.mean([windows.windows[i].cloud_fraction < 0.01 for i in s]) for s in (balanced, plain)
    ]
    assert clear_share[0] < clear_share[1]  # cloud-free windows no longer dominate
    with pytest.raises(InputError, match="unknown sampler"):
        make_sampler(windows, "stratified", 10, 0)


def test_augmentation_moves_image_and_mask_together():
    torch.manual_seed(0)
    masks = torch.randint(0, 3, (8, 32, 32))
    masks[:, :4, :4] = 255
    images = torch.cat([masks[:, None].float(), torch.rand(8, 2, 32, 32)], dim=1)
    augment = make_augmentation(strength=0.0)
    out_images, out_masks = augment(images, masks)
    assert out_masks.dtype == torch.int64
    assert torch.equal(out_images[:, 0].round().long(), out_masks)
    assert (out_masks == 255).sum() == (masks == 255).sum()
    assert not torch.equal(out_masks, masks)  # something moved


@pytest.mark.parametrize("name", LOSSES)
def test_every_loss_ignores_the_ignore_value(name):
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 16, 16, requires_grad=True)
    target = torch.randint(0, 3, (2, 16, 16))
    target[:, :8] = 255
    loss = create_loss(name)
    changed = logits.detach().clone()
    changed[:, :, :8] = torch.randn(2, 3, 8, 16) * 10  # only ignored pixels change
    assert torch.isfinite(loss(logits, target))
    assert loss(changed, target).item() == pytest.approx(loss(logits, target).item(), rel=1e-5)
    loss(logits, target).backward()
    assert logits.grad[:, :, :8].abs().max() == 0


def test_unknown_loss_and_config_keys_are_refused():
    with pytest.raises(InputError, match="choose one of focal_dice"):
        create_loss("hinge")
    with pytest.raises(InputError, match="unknown key\\(s\\) epocs; valid: epochs"):
        Config.from_dict({"train": {"epocs": 3}})


def test_indexing_windows_reads_masks_only_and_images_window_by_window(cs12_store, tmp_path):
    import shutil

    from cloudseg.backend.store.keys import image_key

    shutil.copytree(cs12_store, tmp_path / "store")
    scene = "ROI_1746-high-cloudy"
    chunks = sorted((tmp_path / "store" / image_key(scene)).glob("0.*.*"))
    assert chunks  # the imagery's chunks: (bands, 256, 256) each
    far = [c for c in chunks if c.name != "0.0.0"]
    for chunk in far:  # spoil every image chunk but the top-left one: reading one fails
        chunk.write_bytes(b"not a compressed chunk")
    dataset = open_dataset(tmp_path / "store", env_file=None)
    config = DataConfig(store=str(tmp_path / "store"), bands=["B02"], window=128, stride=128)
    windows = WindowDataset(dataset, [scene], config, NAMES, np.zeros(1), np.ones(1))
    assert len(windows) == 16  # indexed from the mask alone
    first = windows[0][0]  # the top-left window reads only the chunk that is left
    assert first.shape == (1, 128, 128) and float(first.abs().sum()) > 0
    with pytest.raises(Exception):  # noqa: B017 (the codec's own error): a spoilt chunk is read
        windows[len(windows) - 1]
