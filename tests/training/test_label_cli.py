"""The label commands: one module, offered where the training packages are absent."""

import argparse
import subprocess
import sys

#: What the label commands must not need to be offered (``propose`` runs on onnxruntime).
TRAINING_ONLY = ("torch", "lightning", "kornia", "cleanlab", "segmentation_models_pytorch")

LABEL_COMMANDS = {"propose", "labels-to-store", "fine-tune", "labels"}


def test_the_label_commands_come_from_one_module():
    from cloudseg.backend.cli import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    modules = {
        name: parser.get_default("handler").__module__
        for name, parser in sub.choices.items()
        if parser.get_default("handler") is not None
    }
    labels = next(
        a for a in sub.choices["labels"]._actions if isinstance(a, argparse._SubParsersAction)
    )
    for name, parser in labels.choices.items():
        modules[f"labels {name}"] = parser.get_default("handler").__module__
    assert set(labels.choices) == {"boxes", "add", "done", "skip", "todo", "check"}
    owners = {n: m for n, m in modules.items() if n.split()[0] in LABEL_COMMANDS}
    assert set(owners.values()) == {"cloudseg.training.label_cli"}, owners
    assert "cloudseg.training.label_cli" not in {
        m for n, m in modules.items() if n.split()[0] not in LABEL_COMMANDS
    }


def test_the_label_commands_are_offered_without_torch():
    code = (
        "import argparse, sys\n"
        f"for name in {TRAINING_ONLY!r}:\n"
        "    sys.modules[name] = None  # import fails as where it is not installed\n"
        "from cloudseg.backend.cli import build_parser\n"
        "sub = next(a for a in build_parser()._actions"
        " if isinstance(a, argparse._SubParsersAction))\n"
        "print(' '.join(sub.choices))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert set(done.stdout.split()) >= LABEL_COMMANDS, done.stdout
    assert done.stderr == ""
