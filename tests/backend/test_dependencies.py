"""The dependency check tells users exactly what is missing and how to install it."""

from cloudseg.backend.dependencies import (
    REQUIREMENTS,
    Requirement,
    install_hint,
    is_available,
    missing_requirements,
)

ABSENT = Requirement("cloudseg_no_such_module", "cloudseg-no-such-dist", "testing")


def test_installed_environment_has_every_requirement():
    assert missing_requirements() == []
    assert install_hint(missing_requirements()) == ""


def test_absent_package_is_reported_with_its_pip_command():
    missing = missing_requirements((*REQUIREMENTS, ABSENT))
    assert missing == [ABSENT]
    hint = install_hint(missing)
    assert "\n" not in hint
    assert "cloudseg_no_such_module" in hint
    assert '-m pip install "cloudseg-no-such-dist"' in hint
    assert "restart QGIS" in hint


def test_availability_check_does_not_import():
    import sys

    sys.modules.pop("cloudseg_no_such_module", None)
    assert is_available("json")
    assert not is_available("cloudseg_no_such_module")
    assert not is_available("")
