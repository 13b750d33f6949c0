"""The segmentation engine on real Sentinel-2 data, in every input form, and its errors."""

import json
import subprocess

import numpy as np
import onnx
import pytest
import rasterio
from onnx import TensorProto, helper

from cloudseg.backend.errors import (
    BandError,
    CancelledError,
    InputError,
    ModelError,
    OutputExistsError,
)
from cloudseg.backend.inference.segment import NODATA, SegmentOptions, segment
from cloudseg.backend.models.cards import ModelCard
from cloudseg.backend.models.registry import embed_onnx_card, load_model

from .conftest import BANDS, stack_bands

L2A = SegmentOptions(product_level="L2A")


def read(path):
    with rasterio.open(path) as ds:
        return ds.read(1)


def card_dict(**changes):
    base = load_model("ukis-csmask-4b-l2a").card.to_dict()
    base.update(changes)
    return base


@pytest.fixture(scope="session")
def reference(band_folder, tmp_path_factory):
    """The mask of the chip from its folder of band files (the reference for other forms)."""
    out = tmp_path_factory.mktemp("ref") / "mask.tif"
    result = segment(
        band_folder, out, SegmentOptions(product_level="L2A", stats=out.with_suffix(".json"))
    )
    return out, result


@pytest.mark.slow
def test_folder_of_bands_gives_a_styled_cog_with_provenance(reference, band_folder):
    out, result = reference
    assert result.model == "ukis-csmask-4b-l2a"
    with rasterio.open(out) as ds, rasterio.open(band_folder / "B02.tif") as src:
        assert (ds.width, ds.height, ds.crs, ds.transform) == (
            src.width,
            src.height,
            src.crs,
            src.transform,
        )
        assert ds.dtypes[0] == "uint8" and ds.nodata == NODATA
        assert ds.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"
        assert ds.compression is not None
        colormap = ds.colormap(1)
        assert colormap[1] == (0, 229, 255, 255) and colormap[0][:3] == (46, 125, 50)
        tags = ds.tags()
        assert tags["CLOUDSEG_MODEL"] == "ukis-csmask-4b-l2a"
        assert len(tags["CLOUDSEG_MODEL_SHA256"]) == 64
        assert [c["name"] for c in json.loads(tags["CLOUDSEG_CLASSES"])] == [
            "clear",
            "cloud",
            "cloud shadow",
        ]
        assert set(json.loads(tags["CLOUDSEG_BAND_MAPPING"])) == set(BANDS)
        mask = ds.read(1)
    values, counts = np.unique(mask, return_counts=True)
    assert set(values) <= {0, 1, 2}
    # The chip is a real cloudy scene: clouds and shadows are both there.
    assert result.class_percent["cloud"] > 20 and result.class_percent["cloud shadow"] > 5
    stats = json.loads(out.with_suffix(".json").read_text())
    assert stats["class_pixels"] == {
        n: int(counts[values == i].sum()) for i, n in enumerate(["clear", "cloud", "cloud shadow"])
    }
    assert sum(stats["class_percent"].values()) == pytest.approx(100, abs=0.01)
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no temporaries


@pytest.mark.slow
def test_multiband_raster_named_by_descriptions_gives_the_same_mask(reference, multiband, tmp_path):
    out = tmp_path / "mask.tif"
    segment(multiband, out, L2A)
    np.testing.assert_array_equal(read(out), read(reference[0]))


@pytest.mark.slow
def test_bands_are_matched_by_name_not_position(reference, band_folder, tmp_path):
    shuffled = stack_bands(band_folder, tmp_path / "shuffled.tif", ["B08", "B04", "B02", "B03"])
    out = tmp_path / "mask.tif"
    segment(shuffled, out, L2A)
    np.testing.assert_array_equal(read(out), read(reference[0]))


@pytest.mark.slow
def test_explicit_band_list_names_unnamed_bands(reference, band_folder, tmp_path):
    unnamed = stack_bands(
        band_folder, tmp_path / "unnamed.tif", ["B04", "B03", "B02", "B08"], describe=False
    )
    with pytest.raises(BandError, match="name the bands in file order with --bands"):
        segment(unnamed, tmp_path / "x.tif", L2A)
    out = tmp_path / "mask.tif"
    segment(
        unnamed, out, SegmentOptions(product_level="L2A", bands=["red", "green", "blue", "nir"])
    )
    np.testing.assert_array_equal(read(out), read(reference[0]))


@pytest.mark.slow
@pytest.mark.parametrize("as_zip", [False, True], ids=["SAFE-folder", "SAFE-zip"])
def test_safe_product_with_baseline_offset_gives_the_same_mask(
    reference, band_folder, make_safe, tmp_path, as_zip
):
    product = make_safe(band_folder, tmp_path, level="L2A", baseline="04.00", as_zip=as_zip)
    out = tmp_path / "mask.tif"
    result = segment(product, out)  # level and offsets come from the product metadata
    assert result.model == "ukis-csmask-4b-l2a"
    with rasterio.open(out) as ds:
        assert ds.tags()["CLOUDSEG_PRODUCT_LEVEL"].startswith("L2A (SAFE metadata of S2B_MSIL2A")
    np.testing.assert_array_equal(read(out), read(reference[0]))


@pytest.mark.slow
def test_safe_without_offset_handling_would_differ(reference, band_folder, make_safe, tmp_path):
    """Guard: the +1000 DN offset matters, so ignoring it is visible in the mask."""
    product = make_safe(band_folder, tmp_path, level="L2A", baseline="04.00")
    out = tmp_path / "mask.tif"
    segment(product, out, SegmentOptions(offset=0.0))
    assert (read(out) != read(reference[0])).mean() > 0.01


@pytest.mark.slow
def test_coarser_band_is_resampled_to_the_finest_grid(reference, band_folder, tmp_path):
    folder = tmp_path / "mixed"
    folder.mkdir()
    for band in BANDS:
        with rasterio.open(band_folder / f"{band}.tif") as src:
            profile, data = src.profile, src.read(1)
        if band == "B08":  # as a 20 m band: 2 x 2 block average
            data = data.reshape(256, 2, 256, 2).mean(axis=(1, 3)).astype(data.dtype)
            profile.update(width=256, height=256, transform=src.transform * src.transform.scale(2))
        with rasterio.open(folder / f"{band}.tif", "w", **profile) as dst:
            dst.write(data, 1)
    out = tmp_path / "mask.tif"
    segment(folder, out, L2A)
    with rasterio.open(out) as ds:
        assert ds.res == (10.0, 10.0)
    assert (read(out) == read(reference[0])).mean() > 0.95


@pytest.mark.slow
@pytest.mark.parametrize("resolution", ["preview", "native"])
@pytest.mark.parametrize("marked_by", ["value", "mask band"])
def test_nodata_pixels_stay_nodata(band_folder, tmp_path, resolution, marked_by):
    with_hole = tmp_path / "hole.tif"
    by_value = marked_by == "value"
    stack_bands(band_folder, with_hole, BANDS, **({"nodata": 0} if by_value else {}))
    with rasterio.open(with_hole, "r+") as ds:
        data = ds.read()
        data[:, :, :100] = 0
        data[:, 300:317, 200:211] = 0  # a hole inside, across strip boundaries
        if by_value:
            ds.write(data)
        else:  # a GDAL mask band (as in many COGs); the zeros under it are not nodata
            ds.write_mask(np.where((data == 0).all(axis=0), 0, 255).astype(np.uint8))
    out = tmp_path / "mask.tif"
    result = segment(with_hole, out, SegmentOptions(product_level="L2A", resolution=resolution))
    mask = read(out)
    hole = np.zeros(mask.shape, bool)
    hole[:, :100] = hole[300:317, 200:211] = True
    assert (mask[hole] == NODATA).all()
    assert (mask[~hole] != NODATA).all()
    assert result.nodata_pixels == int(hole.sum())


def test_block_means_equal_gdals_average_resampling(band_folder, tmp_path):
    """A 10 m input runs at 30 m through k x k block means: the same as GDAL's average."""
    from cloudseg.backend.inference.resample import block_nanmean
    from cloudseg.backend.raster.reader import open_scene

    chip = stack_bands(band_folder, tmp_path / "c.tif", BANDS, nodata=0)
    with rasterio.open(chip, "r+") as ds:
        data = ds.read()
        data[:, 30:33, 60:63] = 0  # a whole 3 x 3 block of nodata
        data[0, 90:92, 120:121] = 0  # part of a block, in one band
        ds.write(data)
    with open_scene(chip, product_level="L2A") as reader:
        native = reader.read(BANDS, 0, 0, 510, 510)
        gdal = reader.read(BANDS, 0, 0, 510, 510, out_shape=(170, 170))
    ours = block_nanmean(native, 3)
    assert np.isnan(ours[:, 10, 20]).all() and np.isnan(gdal[:, 10, 20]).all()
    assert (np.isnan(ours) == np.isnan(gdal)).all()
    # GDAL averages into the file's uint16, so its means are rounded to half a DN.
    np.testing.assert_allclose(ours, gdal, rtol=0, atol=0.5e-4 + 1e-7, equal_nan=True)
    # The partly empty block is the mean of its valid pixels only.
    assert ours[0, 30, 40] == pytest.approx(np.nanmean(native[0, 90:93, 120:123]))


def test_geographic_crs_fails_with_a_reprojection_hint(band_folder, tmp_path):
    from rasterio.transform import from_origin

    degrees = stack_bands(
        band_folder,
        tmp_path / "deg.tif",
        BANDS,
        crs="EPSG:4326",
        transform=from_origin(33.0, -2.5, 0.0001, 0.0001),
    )
    with pytest.raises(InputError, match=r"geographic CRS.*gdalwarp -t_srs EPSG:32736"):
        segment(degrees, tmp_path / "x.tif", L2A)
    assert not (tmp_path / "x.tif").exists()


def test_missing_bands_are_named(real_data, tmp_path):
    chip = real_data / "cloudsen12_figures/ROI_1746/high/cloudy/S2L1C.tif"
    with pytest.raises(BandError, match=r"lacks band\(s\) B08"):
        segment(chip, tmp_path / "x.tif", SegmentOptions(bands=["B02", "B03", "B04"]))
    with pytest.raises(BandError, match=r"needs band\(s\) B08, B11, B12"):
        segment(
            chip,
            tmp_path / "x.tif",
            SegmentOptions(bands=["B02", "B03", "B04"], model="ukis-csmask-6b-l1c"),
        )


def test_unknown_model_lists_the_built_in_ones(multiband, tmp_path):
    with pytest.raises(ModelError, match="models: ukis-csmask-4b-l1c, ukis-csmask-4b-l2a"):
        segment(multiband, tmp_path / "x.tif", SegmentOptions(model="no-such-model"))


@pytest.mark.slow
def test_existing_output_needs_overwrite(multiband, tmp_path):
    out = tmp_path / "mask.tif"
    out.write_bytes(b"keep me")
    with pytest.raises(OutputExistsError, match="--overwrite"):
        segment(multiband, out, L2A)
    assert out.read_bytes() == b"keep me"
    segment(multiband, out, SegmentOptions(product_level="L2A", overwrite=True))
    assert read(out).shape == (512, 512)


@pytest.mark.slow
def test_cancelled_run_leaves_nothing_behind(multiband, tmp_path):
    calls = []

    def cancel_after_first_batch():
        calls.append(1)
        return len(calls) > 1

    out_dir = tmp_path / "out"
    out_dir.mkdir()
    options = SegmentOptions(
        product_level="L2A",
        resolution="native",
        batch_size=1,
        probabilities=out_dir / "p.tif",
        stats=out_dir / "s.json",
    )
    with pytest.raises(CancelledError):
        segment(multiband, out_dir / "mask.tif", options, cancelled=cancel_after_first_batch)
    assert list(out_dir.iterdir()) == []
    # Re-running is safe and completes.
    segment(multiband, out_dir / "mask.tif", options)
    assert sorted(p.name for p in out_dir.iterdir()) == ["mask.tif", "p.tif", "s.json"]


@pytest.mark.slow
def test_a_cancel_after_the_last_tile_still_leaves_nothing(multiband, tmp_path):
    # The default run of this chip is one batch: the cancel arrives with its progress
    # report, after every tile has run but before the outputs are published.
    seen: list[float] = []
    with pytest.raises(CancelledError):
        segment(
            multiband,
            tmp_path / "mask.tif",
            SegmentOptions(product_level="L2A", probabilities=tmp_path / "p.tif"),
            progress=lambda percent, message: seen.append(percent),
            cancelled=lambda: bool(seen) and seen[-1] >= 98.0,
        )
    assert 98.0 in seen and 99.0 not in seen
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_progress_is_reported_up_to_100(multiband, tmp_path):
    seen = []
    segment(multiband, tmp_path / "m.tif", L2A, progress=lambda pct, msg: seen.append(pct))
    assert seen[0] == 0 and seen[-1] == 100
    assert seen == sorted(seen)


def constant_onnx(path, bias):
    """A real ONNX model whose logits are the same everywhere: a 1x1 conv with zero weights."""
    weight = helper.make_tensor("w", TensorProto.FLOAT, [3, 4, 1, 1], [0.0] * 12)
    b = helper.make_tensor("b", TensorProto.FLOAT, [3], bias)
    node = helper.make_node("Conv", ["input", "w", "b"], ["output"])
    graph = helper.make_graph(
        [node],
        "constant",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["n", 4, 256, 256])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["n", 3, 256, 256])],
        [weight, b],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return embed_onnx_card(
        path, ModelCard.from_dict(card_dict(name="constant", product_level="any"))
    )


@pytest.mark.parametrize("resolution", ["preview", "native"])
def test_constant_logits_give_a_constant_output_without_seams(multiband, tmp_path, resolution):
    model = constant_onnx(tmp_path / "constant.onnx", [0.1, 1.0, -0.5])
    out, probs = tmp_path / "mask.tif", tmp_path / "probs.tif"
    segment(
        multiband, out, SegmentOptions(model=str(model), probabilities=probs, resolution=resolution)
    )
    expected = np.exp([0.1, 1.0, -0.5]) / np.exp([0.1, 1.0, -0.5]).sum()
    with rasterio.open(probs) as ds:
        p = ds.read()
    for c in range(3):
        assert (p[c] == round(expected[c] * 100)).all()
    assert (read(out) == 1).all()


@pytest.mark.slow
def test_torch_checkpoint_and_its_onnx_export_agree(multiband, tmp_path):
    import segmentation_models_pytorch as smp
    import torch

    torch.manual_seed(0)
    card = card_dict(
        name="unet-r18-test",
        format="torch",
        product_level="any",
        architecture={"name": "Unet", "encoder": "resnet18"},
    )
    net = smp.create_model(
        "Unet", encoder_name="resnet18", encoder_weights=None, in_channels=4, classes=3
    ).eval()
    checkpoint = tmp_path / "unet.pt"
    torch.save({"card": card, "state_dict": net.state_dict()}, checkpoint)
    exported = tmp_path / "unet.onnx"
    torch.onnx.export(
        net,
        (torch.zeros(1, 4, 256, 256),),
        exported,
        input_names=["input"],
        output_names=["output"],
        dynamic_axes={"input": {0: "n"}, "output": {0: "n"}},
        dynamo=False,
        opset_version=17,
    )
    embed_onnx_card(exported, ModelCard.from_dict(card | {"format": "onnx"}))

    results = {}
    for name, model in (("torch", checkpoint), ("onnx", exported)):
        probs = tmp_path / f"{name}_p.tif"
        result = segment(
            multiband,
            tmp_path / f"{name}.tif",
            SegmentOptions(model=str(model), probabilities=probs, precision="fp32"),
        )
        assert result.runner.startswith(name if name == "torch" else "onnxruntime")
        with rasterio.open(probs) as ds:
            results[name] = ds.read().astype(int)
    assert np.abs(results["torch"] - results["onnx"]).max() <= 1  # percent points
    assert (read(tmp_path / "torch.tif") == read(tmp_path / "onnx.tif")).mean() > 0.999


@pytest.mark.slow
def test_cli_segments_and_reports_errors_in_one_line(multiband, tmp_path, venv_env):
    out = tmp_path / "mask.tif"
    ok = subprocess.run(
        ["cloudseg", "segment", str(multiband), str(out), "--product-level", "L2A", "--json", "-q"],
        capture_output=True,
        text=True,
        env=venv_env,
    )
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["output"] == str(out)
    again = subprocess.run(
        ["cloudseg", "segment", str(multiband), str(out), "-q"],
        capture_output=True,
        text=True,
        env=venv_env,
    )
    assert again.returncode == 1
    assert again.stderr.strip().splitlines() == [
        f"cloudseg: error: {out} exists; pass --overwrite to replace it"
    ]


def test_models_json_lists_bands_level_resolution_and_classes(venv_env):
    out = subprocess.run(
        ["cloudseg", "models", "--json"], capture_output=True, text=True, env=venv_env, check=True
    )
    models = {m["name"]: m for m in json.loads(out.stdout)}
    assert set(models) == {
        "ukis-csmask-4b-l1c",
        "ukis-csmask-4b-l2a",
        "ukis-csmask-6b-l1c",
        "ukis-csmask-6b-l2a",
    }
    six = models["ukis-csmask-6b-l1c"]
    assert six["bands"] == ["B02", "B03", "B04", "B08", "B11", "B12"]
    assert (six["product_level"], six["resolution_m"]) == ("L1C", 30)
    assert [(c["value"], c["name"]) for c in six["classes"]] == [
        (0, "clear"),
        (1, "cloud"),
        (2, "cloud shadow"),
    ]


@pytest.mark.slow
def test_l1c_safe_is_read_as_l1c(band_folder, make_safe, tmp_path):
    product = make_safe(band_folder, tmp_path, level="L1C", baseline="05.09")
    out = tmp_path / "mask.tif"
    result = segment(product, out)
    assert result.model == "ukis-csmask-4b-l1c"
    folder_out = tmp_path / "folder.tif"
    segment(band_folder, folder_out, SegmentOptions(product_level="L1C"))
    np.testing.assert_array_equal(read(out), read(folder_out))


@pytest.mark.slow
@pytest.mark.parametrize(
    ("scale", "words"),
    [(1e-3, "above reflectance 1.6"), (1e-6, "darker than any real scene")],
)
def test_values_that_are_not_reflectance_are_refused(multiband, tmp_path, scale, words):
    # The real chip's DNs read with a scale 10x too large, or 100x too small.
    options = SegmentOptions(product_level="L2A", scale=scale)
    with pytest.raises(InputError, match=words) as caught:
        segment(multiband, tmp_path / "m.tif", options)
    assert "--no-reflectance-check" in str(caught.value) and "\n" not in str(caught.value)
    assert list(tmp_path.iterdir()) == []
    # Asked to, it runs, and says why the mask may be wrong.
    options = SegmentOptions(product_level="L2A", scale=scale, check_reflectance=False)
    result = segment(multiband, tmp_path / "m.tif", options)
    assert any(words in w for w in result.warnings)


def test_every_real_scene_passes_the_reflectance_check(real_data, tmp_path):
    from reference_scenes import labeled_scenes

    from cloudseg.backend.raster.reader import check_reflectance, open_scene

    scenes = [s.image for s in labeled_scenes(real_data, tmp_path)]
    scenes += sorted(p for p in (real_data / "oncloudn_l2a").iterdir() if p.is_dir())
    assert len(scenes) >= 10
    for scene in scenes:
        with open_scene(scene) as reader:
            assert check_reflectance(reader, reader.bands).message is None, scene


@pytest.mark.parametrize("overviews", [False, True])
def test_reflectance_check_samples_the_whole_scene(band_folder, tmp_path, overviews):
    from rasterio.enums import Resampling

    from cloudseg.backend.raster.reader import open_scene

    chip = stack_bands(band_folder, tmp_path / "chip.tif", BANDS, tiled=True)
    if overviews:  # read shrunk from the overviews; else from a grid of windows
        with rasterio.open(chip, "r+") as ds:
            ds.build_overviews([2, 4], Resampling.average)
    with open_scene(chip, product_level="L2A") as reader:
        sample = reader.sample_reflectance(BANDS)
        whole = reader.read(BANDS, 0, 0, reader.height, reader.width)
    assert sample.shape == (4, 256, 256)
    for band in range(4):  # the sample's median is the scene's, within a tenth
        assert np.nanmedian(sample[band]) == pytest.approx(np.nanmedian(whole[band]), rel=0.1)


@pytest.mark.slow
def test_tta_keeps_constants_and_stays_close_on_real_data(reference, multiband, tmp_path):
    model = constant_onnx(tmp_path / "constant.onnx", [0.3, -1.0, 2.0])
    segment(multiband, tmp_path / "c.tif", SegmentOptions(model=str(model), tta=True))
    assert (read(tmp_path / "c.tif") == 2).all()
    out = tmp_path / "tta.tif"
    segment(multiband, out, SegmentOptions(product_level="L2A", tta=True))
    with rasterio.open(out) as ds:
        assert ds.tags()["CLOUDSEG_TTA"] == "True"
    assert (read(out) == read(reference[0])).mean() > 0.9


def test_normalized_entropy_on_known_cases():
    from cloudseg.backend.inference.resample import normalized_entropy

    probs = np.array([[1, 1 / 3, 0.5], [0, 1 / 3, 0.5], [0, 1 / 3, 0.0]], np.float32)[:, None, :]
    np.testing.assert_allclose(
        normalized_entropy(probs)[0], [0, 1, np.log(2) / np.log(3)], atol=1e-5
    )


@pytest.mark.slow
def test_the_uncertainty_output_is_the_entropy_of_the_probabilities(multiband, tmp_path):
    logits = np.array([0.1, 1.0, -0.5])
    model = constant_onnx(tmp_path / "constant.onnx", logits.tolist())
    out, doubt = tmp_path / "mask.tif", tmp_path / "doubt.tif"
    result = segment(multiband, out, SegmentOptions(model=str(model), uncertainty=doubt))
    assert result.uncertainty == doubt
    p = np.exp(logits) / np.exp(logits).sum()
    expected = round(100 * float(-(p * np.log(p)).sum() / np.log(3)))
    with rasterio.open(doubt) as ds:
        assert ds.tags()["CLOUDSEG_UNCERTAINTY"].startswith("normalized entropy")
        assert ds.dtypes[0] == "uint8" and ds.nodata == NODATA
        values = ds.read(1)
    assert (values == expected).all()
    # On real data: the doubt is highest where the classes meet.
    real = tmp_path / "real_doubt.tif"
    segment(multiband, tmp_path / "real.tif", SegmentOptions(product_level="L2A", uncertainty=real))
    classes, values = read(tmp_path / "real.tif"), read(real).astype(float)
    edge = np.zeros(classes.shape, bool)
    edge[:, 1:] |= classes[:, 1:] != classes[:, :-1]
    edge[1:] |= classes[1:] != classes[:-1]
    assert values[edge].mean() > 2 * values[~edge].mean()
