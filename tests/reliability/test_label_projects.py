"""Label projects under hostile edits and kills: one CRS rule, checks before storing, rounds.

A label project is built once, as an analyst builds it, with the real command on the
labeled ukis Sentinel-2 scene (``labeled_s2``): ``propose`` 4 boxes of 64 px, ``labels
add`` each from the truth raster. Each test edits a copy as a user (or QGIS, or ogr2ogr)
could, and runs the real ``cloudseg``: a correct result, or one ``cloudseg: error:``
line with every file left byte for byte as it was and nothing stored.

The agreement rule for reprojected projects: labels moved into another CRS and back
are stored exactly where the vertices' round trip puts them (to about a nanometre);
a pixel may differ only on a class boundary (a 4-neighbour of another class in the
original), and no more than 0.5 % of a box. In practice all agree.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import time
from contextlib import closing
from pathlib import Path

import numpy as np
import pytest

from .conftest import Workspace, error_line

pytestmark = pytest.mark.real_data

PROJECT = "coast.gpkg"
SCENE = "scene.tif"


@pytest.fixture(scope="module")
def label_template(labeled_s2, tmp_path_factory, venv_env) -> tuple[Path, dict]:
    """A label project of 4 done boxes on the real scene, and the labels it stores.

    Returns ``(folder, reference)``: the folder holds ``scene.tif``, ``truth.tif``
    (its labels), ``doubt.tif`` and ``coast.gpkg``; ``reference`` maps each stored box
    id to the labels ``labels-to-store`` stores for it.
    """
    from cloudseg.backend.store.dataset import open_dataset

    scene, doubt = labeled_s2
    root = tmp_path_factory.mktemp("label-project")
    shutil.copy(scene.image, root / SCENE)
    shutil.copy(scene.labels, root / "truth.tif")
    shutil.copy(doubt, root / "doubt.tif")
    work = Workspace(root, venv_env)
    proposed = work.cli(
        *("propose", "doubt.tif", PROJECT, "--box", "64", "--count", "4", "--scene", "scene")
    )
    assert proposed.returncode == 0, proposed.stderr
    boxes = json.loads(work.cli("labels", "boxes", PROJECT, "--json").stdout)
    assert len(boxes) == 4
    for box in boxes:
        added = work.cli("labels", "add", PROJECT, "--box", box["fid"], "--from", "truth.tif")
        assert added.returncode == 0, added.stderr
    stores = tmp_path_factory.mktemp("reference")
    done = Workspace(root, venv_env).cli(
        "labels-to-store", PROJECT, SCENE, stores / "store", "--context", "0", "--json"
    )
    assert done.returncode == 0, done.stderr
    stored = open_dataset(stores / "store")
    reference = {name: stored.read(name)[1] for name in json.loads(done.stdout)["ingested"]}
    assert len(reference) == 4 and any((labels != 0).any() for labels in reference.values())
    return root, reference


@pytest.fixture
def project(label_template, tmp_path, venv_env) -> Workspace:
    """A fresh copy of the label project, with its own model folder and temporary folder."""
    root = tmp_path / "ws"
    shutil.copytree(label_template[0], root)
    (tmp_path / "models").mkdir()
    (tmp_path / "tmp").mkdir()
    env = venv_env | {"CLOUDSEG_MODELS_DIR": str(tmp_path / "models")}
    return Workspace(root, env | {"TMPDIR": str(tmp_path / "tmp")})


# -- helpers: what a user, QGIS or ogr2ogr may do to the project ----------------------------------
def _reproject(gpkg: Path, crs: str, layers: tuple[str, ...] = ("labels",)) -> None:
    """Replace layers by themselves reprojected to ``crs`` (ogr2ogr -t_srs, as a user would)."""
    from osgeo import gdal

    original = gpkg.with_name("original.gpkg")
    shutil.copy(gpkg, original)
    for layer in layers:
        options = f"-update -overwrite -t_srs {crs} -nln {layer} {layer}"
        assert gdal.VectorTranslate(str(gpkg), str(original), options=options) is not None
    original.unlink()


def _assign(gpkg: Path, crs: str, layer: str = "labels", reproject_to: str | None = None) -> None:
    """Replace a layer by itself with another CRS assigned (coordinates unchanged)."""
    from osgeo import gdal

    original = gpkg.with_name("original.gpkg")
    shutil.copy(gpkg, original)
    if reproject_to:
        moved = gpkg.with_name("moved.gpkg")
        gdal.VectorTranslate(str(moved), str(original), options=f"-t_srs {reproject_to} {layer}")
        original.unlink()
        original = moved
    options = f"-update -overwrite -a_srs {crs} -nln {layer} {layer}"
    assert gdal.VectorTranslate(str(gpkg), str(original), options=options) is not None
    original.unlink()


def _sql(gpkg: Path, *statements: str) -> None:
    """Run SQL on the GeoPackage through GDAL (its triggers need GDAL's functions)."""
    from osgeo import ogr

    dataset = ogr.Open(str(gpkg), 1)
    for statement in statements:
        dataset.ExecuteSQL(statement)
    dataset = None


def _rewrite_labels(gpkg: Path, value=None, kind: int | None = None, field_type: int | None = None):
    """Recreate the labels layer: each polygon's class through ``value``, as ``kind``."""
    from osgeo import ogr

    dataset = ogr.Open(str(gpkg), 1)
    layer = dataset.GetLayerByName("labels")
    srs = layer.GetSpatialRef()
    rows = [(f.GetGeometryRef().Clone(), f.GetField("class")) for f in layer]
    dataset.DeleteLayer("labels")
    layer = dataset.CreateLayer("labels", srs, kind or ogr.wkbMultiPolygon)
    layer.CreateField(ogr.FieldDefn("class", field_type or ogr.OFTInteger))
    for i, (shape, cls) in enumerate(rows):
        feature = ogr.Feature(layer.GetLayerDefn())
        if kind == ogr.wkbPoint:
            shape = shape.Centroid()
        elif kind == ogr.wkbMultiLineString:
            shape = ogr.ForceToMultiLineString(shape.GetBoundary())
        feature.SetGeometry(shape)
        feature.SetField("class", value(i, cls) if value else cls)
        layer.CreateFeature(feature)
    dataset = None


def _stored(store: Path) -> dict:
    from cloudseg.backend.store.dataset import open_dataset

    stored = open_dataset(store)
    return {name: stored.read(name)[1] for name in stored.scenes()}


def _boundary(labels: np.ndarray) -> np.ndarray:
    """Pixels with a 4-neighbour of another class."""
    edge = np.zeros(labels.shape, bool)
    edge[1:] |= labels[1:] != labels[:-1]
    edge[:-1] |= labels[1:] != labels[:-1]
    edge[:, 1:] |= labels[:, 1:] != labels[:, :-1]
    edge[:, :-1] |= labels[:, 1:] != labels[:, :-1]
    return edge


def _refused(work: Workspace, args: list, *words: str) -> str:
    """Run a command that must fail: one line with ``words``, nothing changed or added."""
    before = work.snapshot()
    line = error_line(work.cli(*args))
    for word in words:
        assert word in line, line
    assert work.snapshot() == before
    return line


# -- 2. a project whose layers are in another CRS than the scene ----------------------------------
@pytest.mark.slow
@pytest.mark.parametrize(
    ("crs", "layers"),
    [
        ("EPSG:4326", ("labels",)),
        ("EPSG:3857", ("labels",)),
        ("EPSG:32631", ("labels",)),  # the neighbouring UTM zone
        ("EPSG:4326", ("labels", "proposals")),
        ("EPSG:32633", ("proposals", "labels")),
    ],
)
def test_a_project_in_another_crs_stores_the_same_labels(label_template, project, crs, layers):
    _reproject(project.root / PROJECT, crs, layers)
    done = project.cli("labels-to-store", PROJECT, SCENE, "store", "--context", "0")
    assert done.returncode == 0, done.stderr
    assert "4 labeled box(es) added" in done.stdout
    stored, reference = _stored(project.root / "store"), label_template[1]
    assert stored.keys() == reference.keys()  # the same boxes, found on the scene's grid
    for name, labels in reference.items():
        differ = stored[name] != labels
        assert not (differ & ~_boundary(labels)).any(), name
        assert differ.mean() <= 0.005, name


@pytest.mark.slow
def test_labels_moved_into_another_crs_and_added_again_land_in_the_same_box(project):
    """A project in degrees takes new labels from the UTM truth: they are moved into it."""
    _reproject(project.root / PROJECT, "EPSG:4326", ("labels", "proposals"))
    boxes = json.loads(project.cli("labels", "boxes", PROJECT, "--json").stdout)
    again = project.cli("labels", "add", PROJECT, "--box", boxes[0]["fid"], "--from", "truth.tif")
    assert again.returncode == 0, again.stderr
    done = project.cli("labels-to-store", PROJECT, SCENE, "store", "--context", "0", "--json")
    assert done.returncode == 0, done.stderr
    assert len(json.loads(done.stdout)["ingested"]) == 4


@pytest.mark.slow
def test_proposing_again_into_a_project_in_degrees_gives_the_same_boxes(project):
    """New boxes avoid the labeled ones, and are written where the scene's grid says."""
    import rasterio

    from cloudseg.backend.active.project import LabelProject

    def propose_again(gpkg: Path) -> list:
        args = ["propose", "doubt.tif", gpkg.name, "--box", "64", "--count", "4"]
        done = project.cli(*args, "--scene", "scene")
        assert done.returncode == 0, done.stderr
        with rasterio.open(project.root / SCENE) as ds:
            read = LabelProject(gpkg).read(crs=ds.crs).proposals
            boxes = [(p.status, p.box(ds.transform)) for p in read]
        return sorted((status, b.row, b.col, b.size) for status, b in boxes)

    shutil.copy(project.root / PROJECT, project.root / "degrees.gpkg")
    _reproject(project.root / "degrees.gpkg", "EPSG:4326", ("labels", "proposals"))
    boxes = propose_again(project.root / PROJECT)
    assert [b[0] for b in boxes].count("todo") == 4
    assert propose_again(project.root / "degrees.gpkg") == boxes


@pytest.mark.slow
@pytest.mark.parametrize(("layer", "srs_id"), [("labels", 0), ("labels", -1), ("proposals", -1)])
def test_a_layer_without_a_crs_is_refused(project, layer, srs_id):
    """GeoPackage layers whose CRS was removed (srs_id 0: undefined geographic, -1)."""
    _sql(
        project.root / PROJECT,
        f"UPDATE gpkg_geometry_columns SET srs_id = {srs_id} WHERE table_name = '{layer}'",
    )
    for args in (
        ["labels-to-store", PROJECT, SCENE, "store"],
        ["fine-tune", PROJECT, SCENE, "--steps", "1", "-q"],
    ):
        _refused(project, args, f"the {layer} layer of {PROJECT} has no CRS")
    assert not (project.root / "store").exists()


@pytest.mark.slow
@pytest.mark.parametrize(
    "how",
    ["another-zone-assigned", "degrees-assigned-utm", "utm-assigned-degrees", "one-far-away"],
)
def test_labels_that_fall_outside_the_scene_are_refused_not_stored_clear(project, how):
    gpkg = project.root / PROJECT
    if how == "another-zone-assigned":  # the CRS changed, the coordinates not: 600 km off
        _assign(gpkg, "EPSG:32631")
    elif how == "degrees-assigned-utm":  # reprojected, then the old CRS assigned again
        _assign(gpkg, "EPSG:32632", reproject_to="EPSG:4326")
    elif how == "utm-assigned-degrees":
        _assign(gpkg, "EPSG:4326")
    else:  # one polygon 100 km east of the scene, the others where they belong
        from osgeo import ogr

        dataset = ogr.Open(str(gpkg), 1)
        layer = dataset.GetLayerByName("labels")
        feature = ogr.Feature(layer.GetLayerDefn())
        x, y = 700000, 5290000
        ring = f"MULTIPOLYGON((({x} {y},{x + 90} {y},{x + 90} {y + 90},{x} {y + 90},{x} {y})))"
        feature.SetGeometry(ogr.CreateGeometryFromWkt(ring))
        feature.SetField("class", 1)
        layer.CreateFeature(feature)
        dataset = None
    line = _refused(project, ["labels-to-store", PROJECT, SCENE, "store"], "CRS")
    assert "outside" in line or "cannot be moved" in line
    assert not (project.root / "store").exists()


# -- 9. what a damaged or foreign project holds ---------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize(
    ("value", "words"),
    [
        (300, "class 300, not a class value"),
        (-1, "class -1, not a class value"),
        (7, "class 7, which ukis-csmask-4b-l1c does not have"),
        (255, "class 255, which ukis-csmask-4b-l1c does not have"),
        ("NULL", "has no class"),
    ],
)
def test_a_class_the_model_lacks_stores_nothing(project, value, words):
    """One polygon of one box has it: none of the 4 boxes is stored; an earlier store stays."""
    first = project.cli("labels-to-store", PROJECT, SCENE, "store", "--context", "0")
    assert first.returncode == 0, first.stderr
    _sql(
        project.root / PROJECT,
        f"UPDATE labels SET class = {value} WHERE fid = (SELECT max(fid) FROM labels)",
    )
    for store in ("store", "store2"):
        _refused(project, ["labels-to-store", PROJECT, SCENE, store], words)
    assert not (project.root / "store2").exists()


@pytest.mark.slow
@pytest.mark.parametrize(
    ("value", "field_type"),
    [("cloud", "string"), ("1.5", "real"), ("", "string")],
)
def test_a_class_that_is_not_a_whole_number_is_refused(project, value, field_type):
    from osgeo import ogr

    kind = {"string": ogr.OFTString, "real": ogr.OFTReal}[field_type]
    cast = float if field_type == "real" else str
    _rewrite_labels(
        project.root / PROJECT, lambda i, cls: cast(value) if i == 3 else cast(cls), None, kind
    )
    for args in (
        ["labels-to-store", PROJECT, SCENE, "store"],
        ["fine-tune", PROJECT, SCENE, "--steps", "1", "-q"],
    ):
        _refused(project, args, "not a class value")


@pytest.mark.slow
def test_class_numbers_written_as_text_are_read_as_numbers(label_template, project):
    from osgeo import ogr

    _rewrite_labels(project.root / PROJECT, lambda i, cls: str(cls), None, ogr.OFTString)
    done = project.cli("labels-to-store", PROJECT, SCENE, "store", "--context", "0")
    assert done.returncode == 0, done.stderr
    stored = _stored(project.root / "store")
    for name, labels in label_template[1].items():
        np.testing.assert_array_equal(stored[name], labels)


@pytest.mark.slow
def test_an_empty_labels_layer_stores_the_done_boxes_clear(project):
    """Pixels under no polygon are clear: the analyst marked the boxes done (documented)."""
    _sql(project.root / PROJECT, "DELETE FROM labels")
    done = project.cli("labels-to-store", PROJECT, SCENE, "store", "--context", "0")
    assert done.returncode == 0, done.stderr
    stored = _stored(project.root / "store")
    assert len(stored) == 4 and all((labels == 0).all() for labels in stored.values())


def _damage(root: Path, how: str) -> None:
    gpkg = root / PROJECT
    if how == "random-bytes":
        gpkg.write_bytes(np.random.default_rng(0).bytes(200_000))
    elif how == "truncated":
        gpkg.write_bytes(gpkg.read_bytes()[:20_000])
    elif how == "folder":
        gpkg.unlink()
        gpkg.mkdir()
        (gpkg / "note.txt").write_text("a folder named like a project")
    elif how == "geojson-named-gpkg":
        gpkg.write_text('{"type": "FeatureCollection", "features": []}')
    elif how == "no-status-field":
        _sql(gpkg, "ALTER TABLE proposals DROP COLUMN status")
    elif how == "no-scene-field":
        _sql(gpkg, "ALTER TABLE proposals DROP COLUMN scene")
    elif how == "unknown-status":
        _sql(gpkg, "UPDATE proposals SET status = 'finished' WHERE fid = 2")
    elif how == "no-labels-layer":
        from osgeo import ogr

        dataset = ogr.Open(str(gpkg), 1)
        dataset.DeleteLayer("labels")
        dataset = None
    elif how == "point-labels":
        from osgeo import ogr

        _rewrite_labels(gpkg, None, ogr.wkbPoint)
    elif how == "line-labels":
        from osgeo import ogr

        _rewrite_labels(gpkg, None, ogr.wkbMultiLineString)


#: Each damage, the words of its line, and whether ``labels boxes`` still lists the boxes.
DAMAGE = {
    "random-bytes": ("not a GeoPackage", False),
    "truncated": ("label project", False),
    "folder": ("is a folder", False),
    "geojson-named-gpkg": ("not a GeoPackage", False),
    "no-status-field": ("has no status field", False),
    "no-scene-field": ("has no scene field", False),
    "unknown-status": ("status 'finished'", False),
    "no-labels-layer": ("no labels layer", True),
    "point-labels": ("is a point, not a polygon", True),
    "line-labels": ("not a polygon", True),
}


@pytest.mark.slow
@pytest.mark.parametrize("how", list(DAMAGE))
def test_a_damaged_or_foreign_project_gets_one_line_from_every_command(project, how):
    _damage(project.root, how)
    words, listed = DAMAGE[how]
    commands = [
        ["labels-to-store", PROJECT, SCENE, "store"],
        ["fine-tune", PROJECT, SCENE, "--steps", "1", "-q"],
    ]
    if not listed:
        commands += [["labels", "boxes", PROJECT]]
        commands += [["propose", "doubt.tif", PROJECT, "--box", "64", "--count", "2"]]
    if not listed and how != "unknown-status":  # marking another box needs no other row
        commands += [["labels", "done", PROJECT, "--box", "1"]]
    for args in commands:
        _refused(project, args, words)
    if listed:
        assert project.cli("labels", "boxes", PROJECT).returncode == 0
    assert not (project.root / "store").exists()
    assert list((project.root.parent / "models").iterdir()) == []


# -- a user's own label files (labels add --from): the same rules ---------------------------------
def _user_polygons(path: Path, shapes: list[tuple[str, object]], srs: str | None) -> Path:
    from osgeo import ogr, osr

    reference = None
    if srs:
        reference = osr.SpatialReference()
        reference.SetFromUserInput(srs)
    dataset = ogr.GetDriverByName("GPKG").CreateDataSource(str(path))
    layer = dataset.CreateLayer("mine", reference, ogr.wkbUnknown)
    layer.CreateField(ogr.FieldDefn("class", ogr.OFTString))
    for wkt, cls in shapes:
        feature = ogr.Feature(layer.GetLayerDefn())
        feature.SetGeometry(ogr.CreateGeometryFromWkt(wkt))
        feature.SetField("class", str(cls))
        layer.CreateFeature(feature)
    dataset = None
    return path


@pytest.mark.slow
@pytest.mark.parametrize(
    "how", ["no-crs", "points", "far-away", "class-name", "random-bytes", "random-bytes-raster"]
)
def test_a_label_file_that_cannot_label_the_box_is_refused(project, how):
    import rasterio

    boxes = json.loads(project.cli("labels", "boxes", PROJECT, "--json").stdout)
    _sql(project.root / PROJECT, "UPDATE proposals SET status = 'todo'")
    with rasterio.open(project.root / SCENE) as ds:
        x, y = ds.transform * (250, 250)  # inside the scene
    square = f"POLYGON(({x} {y},{x + 9e3} {y},{x + 9e3} {y - 9e3},{x} {y - 9e3},{x} {y}))"
    far = f"POLYGON(({x + 2e5} {y},{x + 2e5 + 90} {y},{x + 2e5 + 90} {y - 90},{x + 2e5} {y}))"
    source = project.root / "mine.gpkg"
    cases = {
        "no-crs": ([(square, 1)], None, "has no CRS"),
        "points": ([(f"POINT({x} {y})", 1)], "EPSG:32632", "not a polygon"),
        "far-away": ([(far, 1)], "EPSG:32632", "lies in the box"),
        "class-name": ([(square, "cloud")], "EPSG:32632", "not a class value"),
        "random-bytes": ([], None, "is not a raster or a vector file"),
        "random-bytes-raster": ([], None, "cannot read mine.tif as a class raster"),
    }
    shapes, srs, words = cases[how]
    if how.startswith("random-bytes"):
        source = source.with_suffix(".tif" if how.endswith("raster") else ".gpkg")
        source.write_bytes(np.random.default_rng(1).bytes(50_000))
    else:
        _user_polygons(source, shapes, srs)
    fid = str(boxes[0]["fid"])
    _refused(project, ["labels", "add", PROJECT, "--box", fid, "--from", source.name], words)


# -- 7. fine-tune killed: the next run reconciles, and cleans what the killed one left ------------
def _rounds(gpkg: Path) -> list[tuple[int, str]]:
    with closing(sqlite3.connect(gpkg)) as db:
        try:
            return db.execute("SELECT round, model FROM rounds ORDER BY round").fetchall()
        except sqlite3.OperationalError:  # no rounds table before the first round
            return []


def _kill_when(work: Workspace, appeared, timeout: float = 240) -> None:
    """Start ``fine-tune``; SIGKILL it the moment ``appeared()`` is true (polled)."""
    args = ["cloudseg", "fine-tune", PROJECT, SCENE, "--steps", "2", "-q"]
    process = subprocess.Popen(
        args, cwd=work.root, env=work.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    end = time.monotonic() + timeout
    try:
        while process.poll() is None and not appeared():
            assert time.monotonic() < end, "fine-tune never reached the moment"
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.wait()


def _leftovers(work: Workspace) -> list[str]:
    """What lies in the temporary folder, the model folder and beside the project, hidden."""
    tmp, models = Path(work.env["TMPDIR"]), Path(work.env["CLOUDSEG_MODELS_DIR"])
    found = [p.name for p in tmp.iterdir() if not p.name.startswith("torchinductor")]
    found += [p.name for p in models.iterdir() if p.name.startswith(".")]
    return found + [p.name for p in work.root.iterdir() if p.name.startswith(".")]


@pytest.mark.slow
def test_a_fine_tune_killed_after_publishing_its_version_is_recorded_by_the_next(project):
    models = Path(project.env["CLOUDSEG_MODELS_DIR"])
    card = models / "coast-r1.pt.card.json"
    _kill_when(project, card.exists)
    assert (models / "coast-r1.pt").is_file()  # published whole, card last
    if _rounds(project.root / PROJECT):  # the kill came a few ms late (a loaded machine):
        _sql(project.root / PROJECT, "DELETE FROM rounds")  # the state a timely kill leaves
    tuned = project.cli("fine-tune", PROJECT, SCENE, "--steps", "2", "--json", "-q", timeout=300)
    assert tuned.returncode == 0, tuned.stderr
    result = json.loads(tuned.stdout)
    # The killed run's version is round 1; this one is round 2, named so, nothing orphaned.
    assert _rounds(project.root / PROJECT) == [(1, "coast-r1"), (2, "coast-r2")]
    assert (result["model"], result["round"]["round"]) == ("coast-r2", 2)
    names = sorted(p.name for p in models.iterdir())
    assert names == sorted(f"coast-r{n}.pt{s}" for n in (1, 2) for s in ("", ".card.json"))
    assert _leftovers(project) == []
    # The recorded round is the killed run's own: its split, verdict and recipe.
    with closing(sqlite3.connect(project.root / PROJECT)) as db:
        first = db.execute(
            "SELECT model_path, held_out, recipe FROM rounds WHERE round=1"
        ).fetchone()
    assert Path(first[0]) == models / "coast-r1.pt" and json.loads(first[1]) and first[2]


@pytest.mark.slow
@pytest.mark.parametrize("moment", ["registering", "storing"])
def test_a_fine_tune_killed_before_publishing_leaves_nothing_after_the_next(project, moment):
    """Killed while its version is copied in, or while the boxes go to the store."""
    from cloudseg.backend.store.dataset import open_dataset

    models, tmp = Path(project.env["CLOUDSEG_MODELS_DIR"]), Path(project.env["TMPDIR"])
    if moment == "registering":
        _kill_when(project, lambda: any(p.name.endswith(".part") for p in models.iterdir()))
    else:
        _kill_when(project, lambda: any(p.name.startswith(".cloudseg-") for p in tmp.iterdir()))
    assert not (models / "coast-r1.pt.card.json").exists()
    assert _leftovers(project)  # the killed run's temporaries, working folder and lock
    tuned = project.cli("fine-tune", PROJECT, SCENE, "--steps", "2", "-q", timeout=300)
    assert tuned.returncode == 0, tuned.stderr
    assert _rounds(project.root / PROJECT) == [(1, "coast-r1")]
    assert sorted(p.name for p in models.iterdir()) == ["coast-r1.pt", "coast-r1.pt.card.json"]
    assert _leftovers(project) == []
    assert len(open_dataset(project.root / "coast-store").scenes()) == 4


# -- issue 39, item 3: a write the project refuses is one line, and nothing changes ----------
def _label_count(gpkg: Path) -> int:
    from osgeo import ogr

    dataset = ogr.Open(str(gpkg))
    count = dataset.GetLayerByName("labels").GetFeatureCount()
    dataset = None
    return count


ADD = ["labels", "add", PROJECT, "--box", "{fid}", "--from", "truth.tif"]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("trigger", "args"),
    [
        ("BEFORE INSERT ON labels", ADD),
        ("BEFORE UPDATE ON proposals", ADD),
        ("BEFORE UPDATE ON proposals", ["labels", "done", PROJECT, "--box", "{fid}"]),
    ],
    ids=["labels-insert", "status-with-labels", "status-alone"],
)
def test_a_write_the_project_refuses_is_one_line_and_changes_nothing(project, trigger, args):
    gpkg = project.root / PROJECT
    boxes = json.loads(project.cli("labels", "boxes", PROJECT, "--json").stdout)
    fid = str(boxes[0]["fid"])
    assert project.cli("labels", "todo", PROJECT, "--box", fid).returncode == 0
    _sql(gpkg, f"CREATE TRIGGER refuse {trigger} BEGIN SELECT RAISE(ABORT, 'refused'); END")
    before = (
        _label_count(gpkg),
        json.loads(project.cli("labels", "boxes", PROJECT, "--json").stdout),
    )
    done = project.cli(*[a.format(fid=fid) for a in args])
    line = error_line(done)
    assert "refused" in line and "nothing was changed" in line, line
    after = (
        _label_count(gpkg),
        json.loads(project.cli("labels", "boxes", PROJECT, "--json").stdout),
    )
    assert after == before  # no polygon stored, the box still to label
    assert [b["status"] for b in after[1] if str(b["fid"]) == fid] == ["todo"]


# -- a polygon drawn across itself (a bow-tie): stored as the area it shows -----------------------
def _box_envelope(gpkg: Path, fid: int) -> tuple[float, float, float, float]:
    """``(xmin, xmax, ymin, ymax)`` of a proposal's box, in the project's CRS."""
    from osgeo import ogr

    dataset = ogr.Open(str(gpkg))
    feature = dataset.GetLayerByName("proposals").GetFeature(fid)  # held while it is read
    envelope = feature.GetGeometryRef().GetEnvelope()
    feature = dataset = None
    return envelope


@pytest.mark.slow
def test_a_self_intersecting_polygon_is_stored_as_the_area_it_shows(project):
    """Issue 39, item 10: a bow-tie gave GDAL's raw 'TopologyException' line and 'none of
    the 1 polygon(s) lies in the box; is its CRS right?'.

    QGIS shows a bow-tie as its two lobes, and the project's own labels are rasterized so
    (labels-to-store and fine-tune read a bow-tie drawn in the project that way): ``labels
    add`` stores those lobes, and says which polygon crosses itself and where.
    """
    import rasterio.features
    from affine import Affine

    boxes = json.loads(project.cli("labels", "boxes", PROJECT, "--json").stdout)
    fid = boxes[0]["fid"]
    assert project.cli("labels", "todo", PROJECT, "--box", str(fid)).returncode == 0
    xmin, xmax, ymin, ymax = _box_envelope(project.root / PROJECT, fid)
    # Corners off the pixel grid, so that no pixel centre lies on an edge.
    a, b = (xmin + 11, ymax - 7), (xmax - 13, ymin + 5)
    c, d = (xmax - 13, ymax - 7), (xmin + 11, ymin + 5)
    bow = f"POLYGON(({a[0]} {a[1]},{b[0]} {b[1]},{c[0]} {c[1]},{d[0]} {d[1]},{a[0]} {a[1]}))"
    _user_polygons(project.root / "bow.gpkg", [(bow, 1)], "EPSG:32632")
    added = project.cli(
        "labels", "add", PROJECT, "--box", str(fid), "--from", "bow.gpkg", "--keep-todo"
    )
    assert added.returncode == 0, added.stderr
    said = re.search(r"feature 1 is not a valid polygon \(Self-intersection at or near point "
                     r"(\S+) (\S+)\)", added.stderr)  # fmt: skip
    assert said, added.stderr
    crossing = ((a[0] + b[0]) / 2, (a[1] + b[1]) / 2)  # where the diagonals cross
    assert np.allclose([float(said[1]), float(said[2])], crossing, atol=1.0), said[0]
    assert "TopologyException" not in added.stderr and "CRS" not in added.stderr
    assert project.cli("labels", "done", PROJECT, "--box", str(fid)).returncode == 0
    done = project.cli("labels-to-store", PROJECT, SCENE, "store", "--context", "0", "--json")
    assert done.returncode == 0, done.stderr
    from cloudseg.backend.store.dataset import open_dataset

    stored = open_dataset(project.root / "store")
    transforms = {
        n: Affine(*stored.item(n).properties["proj:transform"][:6]) for n in stored.scenes()
    }
    name = next(n for n, t in transforms.items() if (t.c, t.f) == (xmin, ymax))  # the box
    labels, transform = stored.read(name)[1], transforms[name]
    from shapely import wkt

    lobes = rasterio.features.rasterize(
        [(wkt.loads(bow), 1)], out_shape=labels.shape, transform=transform, fill=0, dtype="uint8"
    )
    assert 0.3 < lobes.mean() < 0.7  # both lobes: about half the box
    np.testing.assert_array_equal(labels, lobes)


def test_a_polygon_that_encloses_no_area_is_one_line(project):
    boxes = json.loads(project.cli("labels", "boxes", PROJECT, "--json").stdout)
    fid = str(boxes[0]["fid"])
    _sql(project.root / PROJECT, "UPDATE proposals SET status = 'todo'")
    xmin, xmax, ymin, ymax = _box_envelope(project.root / PROJECT, int(fid))
    folded = f"POLYGON(({xmin} {ymin},{xmax} {ymax},{xmin} {ymin},{xmin} {ymin}))"
    _user_polygons(project.root / "folded.gpkg", [(folded, 1)], "EPSG:32632")
    args = ["labels", "add", PROJECT, "--box", fid, "--from", "folded.gpkg"]
    line = _refused(project, args, "encloses no area")
    assert "folded.gpkg: feature 1" in line and "CRS" not in line
