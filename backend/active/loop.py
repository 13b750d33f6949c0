"""The steps of an active-learning round that segment: propose, and re-run.

The round (``cloudseg.training.label_round.LabelRound``, which the commands, the
Processing algorithms and the label dock call) runs these steps; the simulated-analyst
benchmark calls them directly:

- :func:`propose_on_scene`: segment the scene with an uncertainty raster into the
  project's runs folder (or reuse the newest run of the same model), rank boxes by doubt
  and write them, with an empty ``labels`` layer, into the project;
- :func:`rerun`: segment the scene again with another model (a new round's version),
  beside the earlier runs.

Storing the done boxes (:func:`.labels.labels_to_store`) and fine-tuning
(``LabelRound.fine_tune``) are the round's other steps.
"""

from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..atomic import safe_name, stamped_paths
from ..callbacks import CancelCallback, ProgressCallback
from ..errors import CancelledError, InputError
from ..inference.options import RunOptions
from ..raster.reader import scene_key
from .history import current_model
from .project import LabelProject
from .propose import Proposal, propose

#: The files a run for labeling writes, by kind.
RUN_FILES = {"mask": ".tif", "uncertainty": ".tif"}


@dataclass
class SceneRun:
    """A segmentation of a scene kept in the project's runs folder.

    Attributes:
        mask: The class raster.
        uncertainty: The uncertainty raster.
        result: What the engine reported (None for a run reused from earlier).
    """

    mask: Path
    uncertainty: Path
    result: Any = None


@dataclass
class Proposed:
    """What :func:`propose_on_scene` did: the run it ranked, and the proposals."""

    run: SceneRun
    proposals: list[Proposal]


def latest_run(project: LabelProject, scene: str | Path, model: str | None) -> SceneRun | None:
    """The newest run of ``scene`` in the project's runs folder made by ``model``.

    Args:
        project: The label project.
        scene: The scene (path or key).
        model: The model's name; None: any model.
    """
    import rasterio

    key = scene_key(scene)
    for mask in sorted(project.runs_folder.glob(f"{safe_name(key)}_*_mask.tif"), reverse=True):
        doubt = mask.with_name(mask.name.replace("_mask.tif", "_uncertainty.tif"))
        if not doubt.is_file():
            continue
        with (
            contextlib.suppress(OSError, rasterio.errors.RasterioIOError),
            rasterio.open(mask) as ds,
        ):
            tags = ds.tags()
            if tags.get("CLOUDSEG_SCENE", key) == key and model in (None, tags["CLOUDSEG_MODEL"]):
                return SceneRun(mask, doubt)
    return None


def segment_scene(
    project: LabelProject,
    scene: str | Path,
    options: RunOptions,
    progress: ProgressCallback | None = None,
    cancelled: CancelCallback | None = None,
) -> SceneRun:
    """Segment a scene with an uncertainty raster into the project's runs folder.

    Outputs are published together on success only (as ``cloudseg segment``'s).
    """
    from ..inference.segment import SegmentOptions, segment

    run = {f.name: getattr(options, f.name) for f in dataclasses.fields(RunOptions)}

    folder = project.runs_folder
    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    paths = stamped_paths(folder, scene_key(scene), RUN_FILES)
    try:
        result = segment(
            scene,
            paths["mask"],
            SegmentOptions(**run, uncertainty=paths["uncertainty"]),
            progress=progress,
            cancelled=cancelled,
        )
    except BaseException:
        if created:  # a failed run leaves no folder behind
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise
    return SceneRun(paths["mask"], paths["uncertainty"], result)


def propose_on_scene(
    project: str | Path | LabelProject,
    scene: str | Path,
    model: str | None = None,
    box: int = 128,
    count: int = 20,
    progress: ProgressCallback | None = None,
    cancelled: CancelCallback | None = None,
    options: RunOptions | None = None,
) -> Proposed:
    """Propose the most doubtful boxes of a scene, segmenting it first when needed.

    The newest run of ``model`` on the scene in the project's runs folder is reused;
    without one (or with ``model`` None: the best built-in model is chosen for the
    scene), the scene is segmented with an uncertainty raster first.

    Args:
        project: The label project (created if missing).
        scene: The scene (any input ``cloudseg segment`` reads).
        model: The model; None: the one ``options`` names, else the project's current
            model (the last adopted version: the next round proposes with what the last
            one taught), else the best built-in one for the scene.
        box: Box edge in pixels.
        count: How many boxes.
        progress: Called with (percent, message).
        cancelled: Polled while segmenting; True stops (the project is left as it was).
        options: How the model runs (``cloudseg propose``'s run flags); its ``model``
            is replaced by ``model`` when that is given.

    Returns:
        The run ranked and the proposals, highest doubt first.
    """
    project = project if isinstance(project, LabelProject) else LabelProject(project)
    if model is None and (options is None or options.model is None):
        model = current_model(project.rounds(), None) if project.path.is_file() else None
    options = _with_model(options, model)
    model = options.model
    report = progress or (lambda percent, message: None)
    _refuse_outputs(scene)
    run = latest_run(project, scene, model) if model else None
    if run is None:
        run = segment_scene(
            project, scene, options, lambda p, m: report(0.9 * p, m), cancelled or (lambda: False)
        )
    if cancelled is not None and cancelled():
        raise CancelledError("cancelled; the label project is as it was")
    report(92, "ranking boxes")
    proposals = propose(run.uncertainty, project, box, count, scene=scene, mask=run.mask)
    report(100, f"{len(proposals)} boxes proposed")
    return Proposed(run, proposals)


def _refuse_outputs(scene: str | Path) -> None:
    """Refuse a cloudseg output given as the scene (a mask, probabilities...).

    Raises:
        InputError: If ``scene`` is a raster cloudseg wrote.
    """
    import rasterio

    path = Path(scene).expanduser()
    if not path.is_file():
        return
    with contextlib.suppress(rasterio.errors.RasterioIOError), rasterio.open(path) as ds:
        if "CLOUDSEG_VERSION" in ds.tags():
            raise InputError(
                f"{path.name} is a cloudseg output, not a scene; give the scene or its "
                "uncertainty raster (cloudseg segment --uncertainty)"
            )


def rerun(
    project: str | Path | LabelProject,
    scene: str | Path,
    model: str | None,
    progress: ProgressCallback | None = None,
    cancelled: CancelCallback | None = None,
    options: RunOptions | None = None,
) -> SceneRun:
    """Segment the scene with ``model`` (a new version) beside the project's earlier runs."""
    project = project if isinstance(project, LabelProject) else LabelProject(project)
    return segment_scene(project, scene, _with_model(options, model), progress, cancelled)


def _with_model(options: RunOptions | None, model: str | None) -> RunOptions:
    """``options`` (default ones) running ``model`` when it is given."""
    options = options or RunOptions()
    return dataclasses.replace(options, model=model) if model else options


__all__ = ["Proposed", "SceneRun", "latest_run", "propose_on_scene", "rerun", "segment_scene"]
