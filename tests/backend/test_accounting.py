"""What a run cost: energy from counters only, figures per km², in every output."""

from __future__ import annotations

import json

import pytest
import rasterio

from cloudseg.backend.accounting import Accounting, EnergyMeter, RunMeter, area_km2


def _rapl(root, packages):
    """A powercap tree as Linux lays it out: one folder per package, plus a sub-domain."""
    for i, (energy, limit) in enumerate(packages):
        domain = root / f"intel-rapl:{i}"
        domain.mkdir(parents=True)
        (domain / "name").write_text(f"package-{i}\n")
        (domain / "energy_uj").write_text(f"{energy}\n")
        (domain / "max_energy_range_uj").write_text(f"{limit}\n")
        sub = root / f"intel-rapl:{i}:0"  # the core sub-domain: already in the package
        sub.mkdir()
        (sub / "energy_uj").write_text("0\n")


def test_rapl_counters_are_summed_over_packages_across_a_wrap(tmp_path):
    _rapl(tmp_path, [(1_000_000, 10_000_000), (9_500_000, 10_000_000)])
    meter = EnergyMeter("cpu", root=tmp_path)
    assert meter.method == "rapl" and "package-0, package-1" in meter.detail
    meter.start()
    (tmp_path / "intel-rapl:0" / "energy_uj").write_text("3500000\n")  # +2.5 J
    (tmp_path / "intel-rapl:1" / "energy_uj").write_text("500000\n")  # wrapped: +1.0 J
    energy = meter.stop()
    assert energy.method == "rapl" and energy.joules == pytest.approx(3.5)


def test_without_a_counter_energy_is_not_measured_and_says_why(tmp_path):
    absent = EnergyMeter("cpu", root=tmp_path / "none")
    absent.start()
    energy = absent.stop()
    assert energy.joules is None and energy.method == "not measured"
    assert "absent" in energy.detail
    unreadable = tmp_path / "locked"
    (unreadable / "intel-rapl:0").mkdir(parents=True)  # no energy_uj file to read
    assert EnergyMeter("cpu", root=unreadable).method == "not measured"
    gpu = EnergyMeter("cuda")  # no GPU (or no driver) here: NVML cannot be read
    if gpu.method == "not measured":
        assert gpu.detail


def test_the_accounting_sums_its_stages_and_divides_by_the_area(tmp_path):
    _rapl(tmp_path, [(0, 10**12)])
    meter = RunMeter("cpu")
    meter._meter = EnergyMeter("cpu", root=tmp_path)
    meter._meter.start()
    with meter.stage("read"):
        pass
    with meter.stage("infer"):
        sum(range(10**5))
    with meter.stage("infer"):
        sum(range(10**5))
    (tmp_path / "intel-rapl:0" / "energy_uj").write_text("52428800\n")  # 52.4288 J
    accounting = meter.finish(26.2144)
    figures = accounting.to_dict()
    assert set(figures["stages_seconds"]) == {"read", "infer"}
    assert sum(figures["stages_seconds"].values()) <= figures["seconds"] + 1e-3
    assert figures["seconds_per_km2"] == pytest.approx(accounting.seconds / 26.2144, abs=1e-4)
    assert figures["joules"] == pytest.approx(52.4) and figures["joules_per_km2"] == 2.0
    assert "J/km², rapl" in accounting.summary()
    missing = Accounting(2.0, {}, 4.0, EnergyMeter("cpu", root=tmp_path / "x").stop())
    assert missing.to_dict()["joules_per_km2"] is None
    assert "energy not measured" in missing.summary()


def test_area_of_projected_and_geographic_grids():
    from rasterio.crs import CRS
    from rasterio.transform import from_origin

    assert area_km2(512, 512, from_origin(0, 0, 10, 10), CRS.from_epsg(32632)) == 26.2144
    degree = area_km2(100, 100, from_origin(10, 0.5, 0.01, 0.01), CRS.from_epsg(4326))
    assert degree == pytest.approx(111.32**2, rel=1e-3)  # one square degree at the equator


@pytest.mark.slow
@pytest.mark.real_data
def test_a_segmentation_records_its_cost_in_the_stats_and_the_provenance(multiband, tmp_path):
    from cloudseg.backend.inference.segment import SegmentOptions, segment

    stats = tmp_path / "stats.json"
    result = segment(
        multiband, tmp_path / "mask.tif", SegmentOptions(product_level="L2A", stats=stats)
    )
    figures = json.loads(stats.read_text())["accounting"]
    with rasterio.open(multiband) as src:
        km2 = src.width * src.height * abs(src.transform.a * src.transform.e) / 1e6
    assert figures["km2"] == pytest.approx(km2, rel=1e-4)
    assert figures["seconds_per_km2"] == pytest.approx(figures["seconds"] / km2, rel=1e-2)
    assert {"read", "infer", "write"} <= set(figures["stages_seconds"])
    assert figures["energy_method"] in ("rapl", "nvml", "not measured")
    if figures["energy_method"] == "not measured":
        assert figures["joules"] is None and figures["energy_detail"]
    with rasterio.open(tmp_path / "mask.tif") as ds:
        tag = json.loads(ds.tags()["CLOUDSEG_ACCOUNTING"])
    assert tag["energy_method"] == figures["energy_method"] and tag["km2"] == figures["km2"]
    assert result.accounting["summary"].startswith(f"{km2:.2f} km²")
