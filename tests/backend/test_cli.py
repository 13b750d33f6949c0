"""The ``cloudseg`` command: version, environment report, and errors."""

import json
import subprocess
from configparser import ConfigParser
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]


def run_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(["cloudseg", *args], capture_output=True, text=True, env=env, timeout=120)


def test_version_comes_from_plugin_metadata(venv_env):
    metadata = ConfigParser()
    metadata.read(ROOT / "metadata.txt")
    result = run_cli("--version", env=venv_env)
    assert result.returncode == 0
    assert result.stdout.strip() == f"cloudseg {metadata['general']['version']}"


def test_info_json_reports_the_device_torch_sees(venv_env):
    result = run_cli("info", "--json", env=venv_env)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["torch_cuda"] == torch.cuda.is_available()
    assert report["device"] == ("cuda" if torch.cuda.is_available() else "cpu")
    assert report["packages"]["torch"] == torch.__version__.split("+")[0]
    assert "CPUExecutionProvider" in report["onnxruntime_providers"]
    assert report["missing"] == []
    if not torch.cuda.is_available():
        assert report["device_reason"].startswith("CPU only: ")
        assert report["gpus"] == []
    # What --precision auto does on this CPU, and the same as the engine decides.
    from cloudseg.backend.inference.runners import openvino_bf16_problem

    problem = openvino_bf16_problem()
    if problem is None:
        assert report["cpu_inference"].startswith("OpenVINO, bf16")
    else:
        assert report["cpu_inference"] == f"onnxruntime, float32 ({problem})"


def test_info_text_says_which_device(venv_env):
    result = run_cli("info", env=venv_env)
    assert result.returncode == 0
    assert "device: " in result.stdout
    assert "CPU inference: " in result.stdout


@pytest.mark.parametrize("args", [(), ("no-such-command",)])
def test_bad_usage_fails_with_a_usage_line(venv_env, args):
    result = run_cli(*args, env=venv_env)
    assert result.returncode == 2
    assert "usage: cloudseg" in result.stderr
