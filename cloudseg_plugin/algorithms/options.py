"""The run options as Processing parameters, generated from their one declaration.

Each option of :class:`cloudseg.backend.inference.options.RunOptions` is declared once,
with its help, label, choices, bounds and the surfaces that offer it
(:data:`~cloudseg.backend.inference.options.RUN_FLAGS`). :func:`add_run_parameters` makes
the Processing parameters from those declarations (the parameter's name is the flag in
capitals: ``--tile-size`` is ``TILE_SIZE`` in ``qgis_process``), and :func:`run_values`
reads them back as the options' values. A new run option needs nothing here.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from qgis.core import (
    QgsProcessingAlgorithm,
    QgsProcessingContext,
    QgsProcessingParameterAuthConfig,
    QgsProcessingParameterBoolean,
    QgsProcessingParameterDefinition,
    QgsProcessingParameterEnum,
    QgsProcessingParameterFile,
    QgsProcessingParameterNumber,
    QgsProcessingParameterString,
)

from ...backend.errors import CloudsegError
from ...backend.inference.options import RUN_FLAGS, RunFlag
from .base import SERVER, SERVER_AUTH, choice

#: The value of an enum parameter that leaves the option to the data (product level).
AUTO = "auto"
#: The options each algorithm declares itself: its own widget for the model (a list of
#: the built-in models and a file).
OWN_WIDGETS = ("model",)


MODEL = "MODEL"
MODEL_FILE = "MODEL_FILE"
#: What the dialog adds to the model's declared help: what its "auto" entry does.
MODEL_AUTO = (
    "auto: the built-in model made for the layer's product level that uses the most of its "
    "bands (the log says which and why)"
)


#: What the help panels say of *Run on* (the same words for every algorithm that offers it).
SERVER_HELP = (
    "<b>Run on</b>: this computer (Server empty), or a cloudseg server: its URL "
    "(http://host:8000) and the QGIS authentication configuration holding its token. "
    "The scene is sent to the server (uploaded unless it reads the same folder) and the "
    "results come back here as the same files and styled layers as a local run; the "
    "server needs none of the model packages on this computer."
)


def add_server_parameters(algorithm: QgsProcessingAlgorithm) -> None:
    """*Run on*: SERVER (a cloudseg server's URL; empty: this computer) and SERVER_AUTH.

    ``qgis_process`` takes them as ``SERVER=http://host:8000 SERVER_AUTH=<authcfg id>``;
    the token stays in QGIS's authentication manager (:mod:`..servers`).
    """
    server = QgsProcessingParameterString(SERVER, "Run on server (URL; empty: here)", optional=True)
    server.setHelp(
        "The URL of a cloudseg server (http://host:8000) to run on; empty: run on this "
        "computer. The results come back as the same files and layers"
    )
    algorithm.addParameter(server)
    auth = QgsProcessingParameterAuthConfig(SERVER_AUTH, "Server token", optional=True)
    auth.setHelp(
        "The QGIS authentication configuration holding the server's token (Basic: the "
        "token as its password); empty for a server that needs none"
    )
    algorithm.addParameter(auth)


def builtin_model_names() -> list[str]:
    """Names of the built-in models whose weights are installed, then registered versions."""
    try:
        from ...backend.models.registry import available_models

        return [m.card.name for m in available_models()]
    except CloudsegError:
        return []


def add_model_parameters(algorithm: QgsProcessingAlgorithm) -> None:
    """The model option's own widgets: a list (auto and the built-in models) and a file."""
    declared = next(f for f in RUN_FLAGS if f.field == "model")
    model = QgsProcessingParameterEnum(
        MODEL, declared.label, options=[AUTO, *builtin_model_names()], defaultValue=AUTO
    )
    model.setUsesStaticStrings(True)
    model.setHelp(f"{declared.help}; {MODEL_AUTO}")
    algorithm.addParameter(model)
    model_file = QgsProcessingParameterFile(
        MODEL_FILE, "Model file", optional=True, fileFilter="Models (*.onnx *.pt *.pth *.ckpt)"
    )
    model_file.setHelp("An ONNX model or torch checkpoint with a cloudseg card; overrides Model")
    algorithm.addParameter(model_file)


def model_value(
    algorithm: QgsProcessingAlgorithm, parameters: dict[str, Any], context: QgsProcessingContext
) -> str | None:
    """The model the parameters ask for: the file, else the listed name; None for auto."""
    model_file = algorithm.parameterAsFile(parameters, MODEL_FILE, context)
    model = model_file or algorithm.parameterAsEnumString(parameters, MODEL, context)
    return None if model == AUTO else model


def processing_flags(
    skip: tuple[str, ...] = (), flags: tuple[RunFlag, ...] = RUN_FLAGS
) -> tuple[RunFlag, ...]:
    """The declarations an algorithm generates parameters from: offered, not skipped."""
    return tuple(
        f for f in flags if f.offered("processing") and f.field not in (*OWN_WIDGETS, *skip)
    )


def run_parameter(flag: RunFlag, default: Any = None) -> QgsProcessingParameterDefinition:
    """The Processing parameter of one run option, from its declaration.

    ``default``: the dialog's own default where it differs from the declared one.
    """
    if default is not None:
        flag = dataclasses.replace(flag, default=default)
    if flag.choices is not None:
        options = list(flag.choices) if flag.default is not None else [AUTO, *flag.choices]
        parameter = choice(flag.key, flag.label, options, flag.default or AUTO)
    elif flag.kind is bool:
        parameter = QgsProcessingParameterBoolean(flag.key, flag.label, bool(flag.default))
    elif flag.kind in (int, float):
        kind = (
            QgsProcessingParameterNumber.Integer
            if flag.kind is int
            else QgsProcessingParameterNumber.Double
        )
        parameter = QgsProcessingParameterNumber(
            flag.key, flag.label, kind, flag.default, optional=flag.default is None
        )
        if flag.minimum is not None:
            parameter.setMinimum(flag.minimum)
        if flag.maximum is not None:
            parameter.setMaximum(flag.maximum)
    else:
        parameter = QgsProcessingParameterString(flag.key, flag.label, optional=True)
    if flag.advanced:
        parameter.setFlags(parameter.flags() | QgsProcessingParameterDefinition.FlagAdvanced)
    parameter.setHelp(flag.help)  # the tooltip: the same words as --help and the server's
    return parameter


def add_run_parameters(
    algorithm: QgsProcessingAlgorithm,
    skip: tuple[str, ...] = (),
    flags: tuple[RunFlag, ...] = RUN_FLAGS,
    defaults: dict[str, Any] | None = None,
) -> None:
    """Add the run options' parameters to ``algorithm`` (all but ``skip`` and the model).

    ``flags``: :data:`RUN_FLAGS`, or :data:`SEGMENT_FLAGS` for what segment writes;
    ``defaults``: the dialog's own defaults by field, where they differ.
    """
    for flag in processing_flags(skip, flags):
        algorithm.addParameter(run_parameter(flag, (defaults or {}).get(flag.field)))


def run_values(
    algorithm: QgsProcessingAlgorithm,
    parameters: dict[str, Any],
    context: QgsProcessingContext,
    skip: tuple[str, ...] = (),
    flags: tuple[RunFlag, ...] = RUN_FLAGS,
) -> dict[str, Any]:
    """The run options' values the parameters ask for, by field (unset: the default).

    Raises:
        CloudsegError: For a band list that is not one (one line).
    """
    from ...backend.raster.bands import parse_band_list

    values: dict[str, Any] = {}
    for flag in processing_flags(skip, flags):
        if flag.choices is not None:
            value = algorithm.parameterAsEnumString(parameters, flag.key, context)
            values[flag.field] = None if value == AUTO and flag.default is None else value
        elif flag.kind is bool:
            values[flag.field] = algorithm.parameterAsBool(parameters, flag.key, context)
        elif flag.kind in (int, float):
            if parameters.get(flag.key) in (None, ""):
                values[flag.field] = flag.default
            elif flag.kind is int:
                values[flag.field] = algorithm.parameterAsInt(parameters, flag.key, context)
            else:
                values[flag.field] = algorithm.parameterAsDouble(parameters, flag.key, context)
        else:
            text = algorithm.parameterAsString(parameters, flag.key, context).strip()
            values[flag.field] = text or None
    if values.get("bands"):
        values["bands"] = parse_band_list(values["bands"])
    return values


def run_help(algorithm: QgsProcessingAlgorithm) -> str:
    """The run options of ``algorithm`` for its help panel: each label and declared help."""
    from ...backend.models.registry import preview_cost

    lines = []
    for flag in RUN_FLAGS:
        parameter = algorithm.parameterDefinition(flag.key)
        if parameter is None or flag.field == "model":
            continue
        text = flag.help
        if flag.field == "resolution" and (cost := preview_cost()):
            text += f"; {cost}"
        advanced = " (advanced)" if flag.advanced else ""
        lines.append(f"<b>{flag.label}</b>{advanced}: {text}.")
    return "\n\n".join(lines)
