"""The ``cloudseg`` command: version, environment report, errors, and the run flags."""

import argparse
import dataclasses
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


@pytest.mark.slow
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


@pytest.mark.slow
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


#: Every command that runs a model on a scene the user names.
MODEL_COMMANDS = ("segment", "segment-batch", "explain", "propose", "evaluate")


def _run_actions(command: str) -> dict[str, argparse.Action]:
    from cloudseg.backend.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return {a.dest: a for a in sub.choices[command]._actions}


def test_every_model_command_takes_the_same_run_flags():
    from cloudseg.backend.inference.options import RUN_FLAGS, RunOptions

    assert [f.field for f in RUN_FLAGS] == [f.name for f in dataclasses.fields(RunOptions)]
    # Evaluation measures the model itself (float32) and has no automatic model choice.
    own = {("evaluate", "precision"): {"default"}, ("evaluate", "model"): {"required", "help"}}
    reference = _run_actions("segment")
    for command in MODEL_COMMANDS:
        actions = _run_actions(command)
        for flag in RUN_FLAGS:
            mine, theirs = actions[flag.field], reference[flag.field]
            assert mine.option_strings == [flag.flag], (command, flag.field)
            for attribute in ("help", "choices", "type", "nargs", "const", "metavar", "default",
                              "required"):  # fmt: skip
                if attribute not in own.get((command, flag.field), ()):
                    assert getattr(mine, attribute) == getattr(theirs, attribute), (command, flag)
    evaluate = _run_actions("evaluate")
    assert evaluate["precision"].default == "fp32" and evaluate["model"].required
    assert evaluate["model"].help == RUN_FLAGS[0].help  # no automatic choice to describe


@pytest.mark.parametrize("command", MODEL_COMMANDS)
def test_every_model_commands_help_prints(command, capsys):
    from cloudseg.backend.cli import build_parser

    with pytest.raises(SystemExit) as done:
        build_parser().parse_args([command, "--help"])
    assert done.value.code == 0
    shown = capsys.readouterr().out
    assert "--shadow-geometry" in shown and "--max-memory" in shown


@pytest.mark.parametrize("command", MODEL_COMMANDS)
def test_every_model_command_parses_the_run_flags_alike(command):
    from cloudseg.backend.cli import build_parser
    from cloudseg.backend.inference.options import run_options

    positional = {
        "segment": ["in.tif", "out.tif"],
        "segment-batch": ["in.tif", "--out", "done"],
        "explain": ["in.tif", "why.tif"],
        "propose": ["in.tif", "labels.gpkg"],
        "evaluate": [],
    }[command]
    flags = ["--model", "ukis-csmask-4b-l2a", "--product-level", "l2a", "--bands", "blue,B03"]
    flags += ["--resolution", "model", "--tta", "--tile-size", "128", "--overlap", "16"]
    flags += ["--cloud-threshold", "0.4", "--precision", "fp32", "--device", "cpu"]
    args = build_parser().parse_args([command, *positional, *flags])
    options = run_options(args)
    assert dataclasses.asdict(options) == dataclasses.asdict(options) | {
        "model": "ukis-csmask-4b-l2a",
        "product_level": "L2A",
        "bands": ["B02", "B03"],
        "resolution": "preview",
        "tta": True,
        "tile_size": 128,
        "overlap": 16,
        "cloud_threshold": 0.4,
        "shadow_threshold": None,
        "precision": "fp32",
        "device": "cpu",
    }


@pytest.mark.parametrize("command", ["segment", "explain"])
def test_a_bad_run_option_is_one_line_for_every_command(command, tmp_path, venv_env):
    result = run_cli(
        command, "in.tif", str(tmp_path / "out.tif"), "--cloud-threshold", "1.5", env=venv_env
    )
    assert result.returncode == 1
    assert result.stderr.strip() == (
        "cloudseg: error: cloud threshold 1.5: give a probability above 0 and at most 1"
    )


@pytest.mark.slow
@pytest.mark.parametrize(
    ("args", "code"),
    [
        (("--help",), 0),
        (("info",), 0),
        (("segment", "no-such-scene.tif", "mask.tif"), 1),
    ],
    ids=["help", "info", "refused-segment"],
)
def test_commands_print_nothing_on_stderr_but_their_own_words(venv_env, tmp_path, args, code):
    """No warning from a dependency (a pyOpenSSL built for another cryptography, say)."""
    result = subprocess.run(
        ["cloudseg", *args], capture_output=True, text=True, env=venv_env, cwd=tmp_path, timeout=120
    )
    assert result.returncode == code, result.stderr
    if code == 0:
        assert result.stderr == ""
        assert result.stdout.strip()
    else:
        lines = result.stderr.splitlines()
        assert len(lines) == 1, result.stderr
        assert lines[0].startswith("cloudseg: error: ")
        assert "no-such-scene.tif" in lines[0]
    assert list(tmp_path.iterdir()) == []
