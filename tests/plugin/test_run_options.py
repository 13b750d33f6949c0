"""One declaration per run option: the CLI, the server, the web page and QGIS all show it.

Each run option is declared once (``backend/inference/options.py``); these tests hold
every surface to the declaration, and add a new option (``example``) the way a developer
would, to see it reach all four surfaces with the same words and no other change.
"""

from __future__ import annotations

import argparse
import dataclasses

import pytest
from qgis.core import QgsProcessingAlgorithm, QgsProcessingContext

from cloudseg.backend.inference.options import (
    RUN_FLAGS,
    SEGMENT_FLAGS,
    RunOptions,
    add_run_flags,
    declared_options,
    option,
    run_options,
)
from cloudseg.backend.serve import processes, web
from cloudseg.cloudseg_plugin.algorithms.options import add_run_parameters, run_values

EXAMPLE_HELP = "a no-op option that only this test declares"


def _example_options() -> type[RunOptions]:
    """RunOptions with one more option, declared as every real one is."""
    return dataclasses.make_dataclass(
        "ExampleOptions",
        [("example", bool, option(False, EXAMPLE_HELP, "Example option"))],
        bases=(RunOptions,),
    )


class _Algorithm(QgsProcessingAlgorithm):
    """A Processing algorithm whose parameters are the given run options' (a real one)."""

    def __init__(self, flags: tuple = RUN_FLAGS) -> None:
        super().__init__()
        self.flags = flags

    def name(self) -> str:
        return "example"

    def displayName(self) -> str:
        return "Example"

    def createInstance(self) -> QgsProcessingAlgorithm:
        return _Algorithm(self.flags)

    def initAlgorithm(self, configuration=None) -> None:
        add_run_parameters(self, flags=self.flags)

    def processAlgorithm(self, parameters, context, feedback):
        return {}


def _cli_actions(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {a.dest: a for a in parser._actions}


def test_every_run_option_says_the_same_on_all_four_surfaces(plugin):
    from qgis.core import QgsApplication

    from cloudseg.backend.cli import build_parser

    segment_cli = next(
        a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)
    ).choices["segment"]
    cli = _cli_actions(segment_cli)
    server = {i.name: i for i in processes.INPUTS["segment"]}
    page = {i.name: i for i in web.page_inputs()}
    dialog = QgsApplication.processingRegistry().algorithmById("cloudseg:segment")
    assert dialog is not None
    shown = {"cli": 0, "server": 0, "web": 0, "processing": 0}
    for flag in (*RUN_FLAGS, *SEGMENT_FLAGS):  # how a run goes, and what segment keeps
        if flag.offered("cli"):
            assert flag.help in cli[flag.field].help, flag.field
            assert cli[flag.field].option_strings == [flag.flag]
            shown["cli"] += 1
        if flag.offered("server"):
            entry = server[flag.field]
            assert (entry.description, entry.title) == (flag.help, flag.label)
            for bound in ("minimum", "maximum"):
                assert entry.schema.get(bound) == getattr(flag, bound), (flag.field, bound)
            if flag.choices:
                assert entry.schema["enum"] == list(flag.choices)
            shown["server"] += 1
        else:
            assert flag.field not in server
        if flag.offered("web") and flag.field not in ("model", "product_level"):
            control = web.control(page[flag.field])  # the page's own model and level lists
            assert (control.info, control.label) == (flag.help, flag.label), flag.field
            shown["web"] += 1
        elif not flag.offered("web"):
            assert flag.field not in page
        if flag.offered("processing"):
            parameter = dialog.parameterDefinition(flag.key)
            assert flag.help in parameter.help(), flag.field
            if flag.field != "model":
                assert parameter.description() == flag.label
                if flag.minimum is not None:
                    assert parameter.minimum() == flag.minimum
            shown["processing"] += 1
    assert all(count >= 10 for count in shown.values()), shown
    # The model's "auto" and the product level's are said in the dialog too.
    assert "auto" in dialog.parameterDefinition("PRODUCT_LEVEL").options()


def test_a_new_option_is_one_declaration_and_reaches_every_surface(qgis_app):
    kind = _example_options()
    flags = declared_options(kind)
    assert [f.field for f in flags] == [*(f.field for f in RUN_FLAGS), "example"]

    parser = argparse.ArgumentParser()
    add_run_flags(parser, flags=flags)
    assert _cli_actions(parser)["example"].help == EXAMPLE_HELP
    options = run_options(parser.parse_args(["--example", "--tta"]), kind)
    assert options.example is True and options.tta is True
    assert run_options(parser.parse_args([]), kind).example is False

    inputs = processes.run_inputs(flags)
    example = next(i for i in inputs if i.name == "example")
    assert example.description == EXAMPLE_HELP
    assert example.schema == {"type": "boolean", "default": False}

    on_page = {i.name: i for i in web.page_inputs(inputs, flags)}
    control = web.control(on_page["example"])
    assert (control.label, control.info, control.value) == ("Example option", EXAMPLE_HELP, False)

    algorithm = _Algorithm(flags)
    algorithm.initAlgorithm()
    parameter = algorithm.parameterDefinition("EXAMPLE")
    assert (parameter.description(), parameter.help()) == ("Example option", EXAMPLE_HELP)
    context = QgsProcessingContext()
    asked = run_values(algorithm, {"EXAMPLE": True, "TILE_SIZE": 128}, context, flags=flags)
    assert asked["example"] is True and asked["tile_size"] == 128
    unset = run_values(algorithm, {}, context, flags=flags)
    assert unset["example"] is False and unset["tile_size"] is None
    assert kind(**unset).example is False


@pytest.mark.parametrize(
    ("parameters", "expected"),
    [
        ({"PRODUCT_LEVEL": "auto", "OVERLAP": ""}, {"product_level": None, "overlap": None}),
        (
            {"PRODUCT_LEVEL": "L2A", "OVERLAP": 0, "MAX_MEMORY": 1024, "BANDS": " B04, B03 "},
            {
                "product_level": "L2A",
                "overlap": 0,
                "max_memory_mib": 1024.0,
                "bands": ["B04", "B03"],
            },
        ),
    ],
)
def test_processing_values_are_the_options_the_cli_would_give(qgis_app, parameters, expected):
    algorithm = _Algorithm()
    algorithm.initAlgorithm()
    values = run_values(algorithm, parameters, QgsProcessingContext())
    for field, value in expected.items():
        assert values[field] == value, field
    RunOptions(**values)  # the engine takes them as they are
