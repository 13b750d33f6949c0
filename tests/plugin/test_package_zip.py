"""`make package` builds a zip that installs into an empty QGIS profile and loads."""

import configparser
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from package_tree import tree_data, tree_modules, tree_packages

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def plugin_zip(tmp_path_factory):
    out = tmp_path_factory.mktemp("dist")
    subprocess.run(
        ["make", "-s", "-C", str(ROOT), "package", f"PACKAGE_DIR={out}"],
        check=True,
        capture_output=True,
        text=True,
    )
    metadata = configparser.ConfigParser()
    metadata.read(ROOT / "metadata.txt")
    return out / f"cloudseg-{metadata['general']['version']}.zip"


def test_zip_holds_the_plugin_and_nothing_for_developers(plugin_zip):
    names = zipfile.ZipFile(plugin_zip).namelist()
    assert {n.split("/")[0] for n in names} == {"cloudseg"}
    for required in (
        "cloudseg/__init__.py",
        "cloudseg/metadata.txt",
        "cloudseg/cloudseg_plugin/plugin.py",
        "cloudseg/backend/cli.py",
        "cloudseg/resources/icons/cloudseg.svg",
    ):
        assert required in names
    for name in names:
        parts = name.split("/")
        assert not {"tests", ".ci", ".venv", "__pycache__", ".git"} & set(parts), name
        assert not name.endswith(".pyc"), name


def test_zip_holds_every_package_module_and_data_file_of_the_tree(plugin_zip):
    names = set(zipfile.ZipFile(plugin_zip).namelist())
    packages = tree_packages()
    assert {"cloudseg", "cloudseg.cloudseg_plugin", "cloudseg.backend"} <= set(packages)
    missing = [p for p in packages if p.replace(".", "/") + "/__init__.py" not in names]
    assert missing == [], f"packages of the tree not in the zip: {missing}"
    missing = [m for m in (*tree_modules(), *tree_data()) if f"cloudseg/{m}" not in names]
    assert missing == [], f"files of the tree not in the zip: {missing}"
    assert "cloudseg/setup.py" not in names


@pytest.mark.slow
def test_zip_installs_into_an_empty_profile_and_loads(plugin_zip, tmp_path, venv_env):
    plugins_dir = tmp_path / "profile" / "python" / "plugins"
    helper = Path(__file__).with_name("zip_install_helper.py")
    env = dict(venv_env, QGIS_CUSTOM_CONFIG_PATH=str(tmp_path / "config"))
    result = subprocess.run(
        [sys.executable, str(helper), str(plugin_zip), str(plugins_dir)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["name"] == "cloudseg"
    assert summary["available"] and summary["loaded"] and summary["started"]
    assert summary["module_file"] == str(plugins_dir / "cloudseg" / "__init__.py")
    assert "cloudseg:environment" in summary["algorithms"]
    assert summary["critical_messages"] == []
    assert summary["provider_after_unload"] is False
