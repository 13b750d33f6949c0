"""A request's inputs, checked against each input's one pydantic type (no server started).

The JSON Schema the OGC process description publishes and the validation a request
gets come from the same type (``processes.Input.kind``): a value beyond a published
bound is refused, in one line naming the input and the bound.
"""

from __future__ import annotations

import json

import pytest

from cloudseg.backend.errors import InputError
from cloudseg.backend.serve import processes

SCENE = {"input": "chip.tif"}


def _refusal(process: str, inputs: dict) -> str:
    with pytest.raises(InputError) as info:
        processes.parse_inputs(process, inputs)
    message = str(info.value)
    assert "\n" not in message and "Traceback" not in message
    return message


@pytest.mark.parametrize(
    ("process", "inputs", "words"),
    [
        ("segment", SCENE | {"bands": "B02," * 100}, "'bands' is 400 characters; at most 256"),
        ("segment", {"input": "chip.tif" + "/x" * 5000}, "at most 4096"),
        ("segment", SCENE | {"tile_size": 1e308}, "'tile_size' must be from 64 to 65536"),
        ("segment", SCENE | {"batch_size": 10**12}, "must be from 1 to 65536"),
        ("segment", SCENE | {"tile_size": 64.5}, "'tile_size' must be a whole number"),
        ("segment", SCENE | {"cloud_threshold": 2}, "must be from 0.0 to 1.0, not 2"),
        ("segment", SCENE | {"bands": "B02,B03,B02,B08"}, "'bands': band(s) listed twice"),
        ("segment", SCENE | {"buffer_cloud_m": json.loads("1e400")}, "must be a finite number"),
        ("segment", {"input": "chip\u0000.tif"}, "'input' holds a control character"),
        ("segment", {"input": ["chip.tif"]}, "'input' must be text, not list"),
        ("segment", SCENE | {"resolution": "fine"}, "must be one of native, preview, not 'fine'"),
        ("segment", SCENE | {"tta": "maybe"}, "'tta' must be true or false"),
        ("segment", SCENE | {"extent": [0, 0, 1]}, "'extent' has 3 entries; it takes 4"),
        ("segment", SCENE | {"colour": "red", "tile_size": 1}, "unknown input 'colour'"),
        ("segment", {"tile_size": 1}, "input 'input' is required"),
        ("segment", SCENE | {"model": "/tmp/evil.pt"}, "no model '/tmp/evil.pt'"),
        ("explain", SCENE | {"classes": ["cloud"] * 17}, "'classes' has 17 entries; at most 16"),
        ("explain", SCENE | {"classes": ["c" * 65]}, "'classes' is 65 characters; at most 64"),
        ("explain", SCENE | {"shadow_geometry": True}, "unknown input 'shadow_geometry'"),
        ("segment", [], "inputs must be an object"),
    ],
)
def test_a_bad_input_is_refused_in_one_line_naming_it(process, inputs, words):
    assert words in _refusal(process, inputs)


def test_inputs_become_the_options_the_engine_takes():
    values = processes.parse_inputs(
        "segment",
        SCENE | {"product_level": "l2a", "tta": "true", "extent": [0, 0, 1, 1],
                 "tile_size": "256", "model": "auto", "bands": "", "scale": None},
    )  # fmt: skip
    assert values == {"input": "chip.tif", "model": None, "product_level": "L2A", "tta": True,
                      "tile_size": 256, "extent": (0.0, 0.0, 1.0, 1.0)}  # fmt: skip
    assert processes.parse_inputs("explain", SCENE | {"classes": "cloud"})["classes"] == ["cloud"]


@pytest.mark.parametrize("process", sorted(processes.INPUTS))
def test_what_the_schema_publishes_is_what_a_request_is_held_to(process):
    for spec in processes.INPUTS[process]:
        schema = spec.schema
        if "maximum" in schema:
            beyond = schema["maximum"] + 1
            assert "must be from" in _refusal(process, SCENE | {spec.name: beyond}), spec.name
        if "minimum" in schema:
            below = schema["minimum"] - 1
            assert "must be from" in _refusal(process, SCENE | {spec.name: below}), spec.name
        if "maxLength" in schema:
            long = "x" * (schema["maxLength"] + 1)
            assert "at most" in _refusal(process, SCENE | {spec.name: long}), spec.name
        if "enum" in schema:
            assert "must be one of" in _refusal(process, SCENE | {spec.name: "nonsense"})
        if "default" in schema and spec.name != "classes":  # a default is itself accepted
            processes.parse_inputs(process, SCENE | {spec.name: schema["default"]})
