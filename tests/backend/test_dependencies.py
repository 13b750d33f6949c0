"""The one list of packages: what is missing is named in one line, with where to get it."""

from importlib import metadata

from cloudseg.backend.dependencies import (
    GROUPS,
    PLUGIN_STEPS,
    SEGMENT,
    TRAINING,
    Group,
    Requirement,
    install_hint,
    is_available,
    missing_requirements,
)

ABSENT = Requirement("cloudseg-no-such-dist", ">=1", "cloudseg_no_such_module", "testing")
WITH_ABSENT = Group("training", TRAINING.title, (*TRAINING.requirements, ABSENT))


def test_installed_environment_has_every_group():
    assert missing_requirements(*GROUPS) == []
    assert install_hint(missing_requirements(*GROUPS)) == ""


def test_absent_package_is_named_with_the_extra_that_installs_it():
    missing = missing_requirements(SEGMENT, WITH_ABSENT)
    assert missing == [ABSENT]
    hint = install_hint(missing, groups=(SEGMENT, WITH_ABSENT))
    assert "\n" not in hint
    assert "cloudseg_no_such_module" in hint
    assert "Training, fine-tuning" in hint  # the step it belongs to, in words
    assert 'pip install "cloudseg[training]"' in hint


def test_absent_package_in_qgis_points_at_the_installer_not_at_pip():
    hint = install_hint(missing_requirements(WITH_ABSENT), where="qgis", groups=(WITH_ABSENT,))
    assert "\n" not in hint
    assert "Raster > Cloud segmentation > Install packages..." in hint
    assert "STEP=training" in hint
    assert "pip" not in hint and "terminal" in hint


def test_availability_check_does_not_import():
    import sys

    sys.modules.pop("cloudseg_no_such_module", None)
    assert is_available("json")
    assert not is_available("cloudseg_no_such_module")
    assert not is_available("")


def test_the_wheel_declares_the_same_list():
    """setup.py reads backend/dependencies.py: the installed metadata says the same."""
    from packaging.requirements import Requirement as Parsed

    def key(text: str) -> tuple:
        parsed = Parsed(text)
        return parsed.name.lower(), frozenset(parsed.extras), parsed.specifier

    required = [Parsed(r) for r in metadata.requires("cloudseg")]
    core = {key(str(r)) for r in required if r.marker is None}
    assert core == {key(r.pip) for r in SEGMENT.requirements}
    for group in GROUPS[1:]:
        extra = {
            key(
                f"{r.name}{'[' + ','.join(sorted(r.extras)) + ']' if r.extras else ''}{r.specifier}"
            )
            for r in required
            if r.marker is not None and r.marker.evaluate({"extra": group.name})
        }
        assert extra == {key(r.pip) for r in group.requirements}, group.name


def test_segmentation_needs_no_torch_and_training_brings_it():
    assert "torch" not in SEGMENT.modules
    assert "torch" in TRAINING.modules
    assert [step.name for step in PLUGIN_STEPS] == ["segment", "training"]
