"""Shared base class of the cloudseg Processing algorithms."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qgis.core import (
    QgsProcessingAlgorithm,
    QgsProcessingContext,
    QgsProcessingException,
    QgsProcessingFeedback,
    QgsProcessingParameterDefinition,
    QgsProcessingParameterEnum,
)
from qgis.PyQt.QtGui import QIcon

from ...backend.dependencies import (
    SEGMENT,
    Group,
    install_hint,
    missing_from,
    missing_requirements,
)
from ...backend.errors import CloudsegError
from ..messages import for_qgis
from ..resources import icon
from ..servers import ServerChoice

if TYPE_CHECKING:
    from ...backend.remote import RemoteRun


#: *Run on*: a cloudseg server's URL (empty: this computer), and the QGIS authentication
#: configuration holding its token (declared by :func:`.options.add_server_parameters`).
SERVER = "SERVER"
SERVER_AUTH = "SERVER_AUTH"


def server_choice(
    algorithm: QgsProcessingAlgorithm, parameters: dict[str, Any], context: QgsProcessingContext
) -> ServerChoice:
    """Where the parameters ask the run to go: a server, or this computer (url "")."""
    if algorithm.parameterDefinition(SERVER) is None:
        return ServerChoice()
    url = algorithm.parameterAsString(parameters, SERVER, context).strip()
    authcfg = ""
    if url and algorithm.parameterDefinition(SERVER_AUTH) is not None:
        authcfg = algorithm.parameterAsString(parameters, SERVER_AUTH, context).strip()
    return ServerChoice(url, authcfg)


def choice(
    name: str, label: str, options: list[str], default: str, advanced: bool = False
) -> QgsProcessingParameterEnum:
    """An enum parameter whose values are its strings (``DEVICE=cuda`` in qgis_process)."""
    parameter = QgsProcessingParameterEnum(name, label, options=options, defaultValue=default)
    parameter.setUsesStaticStrings(True)
    if advanced:
        parameter.setFlags(parameter.flags() | QgsProcessingParameterDefinition.FlagAdvanced)
    return parameter


@contextmanager
def backend_errors() -> Iterator[None]:
    """Raise the backend's one-line errors as :class:`QgsProcessingException`.

    The text is the backend's, with command-line flags named as the dialog's parameters.
    """
    try:
        yield
    except CloudsegError as exc:
        raise QgsProcessingException(for_qgis(str(exc))) from exc
    except ImportError as exc:
        missing = missing_from(exc, where="qgis")
        if missing is None:
            raise
        raise QgsProcessingException(missing) from exc


class CloudsegAlgorithm(QgsProcessingAlgorithm):
    """Base class: the steps every cloudseg algorithm takes, and its toolbox identity.

    :meth:`processAlgorithm` is a template: check the packages the algorithm needs, run
    :meth:`run_backend` (the subclass's adapter: parameters -> backend call ->
    outputs), and turn the backend's one-line errors into ``QgsProcessingException``
    with the same text. Subclasses implement only :meth:`run_backend`.

    An algorithm that offers *Run on* (the ``SERVER`` parameter,
    :func:`.options.add_server_parameters`) implements :meth:`run_on_server` too: with a
    server chosen it runs instead of :meth:`run_backend`, and the local runtime
    packages are not required (it imports QGIS, the standard library and cloudseg's
    light modules only).
    """

    #: The package groups the algorithm needs at run time (checked before running).
    requirements: tuple[Group, ...] = (SEGMENT,)
    #: Stable name (the part after ``cloudseg:``), toolbox name, group and group id.
    algorithm_name = ""
    display_name = ""
    group_name = ""
    group_id = ""

    def name(self) -> str:
        """Return the stable algorithm name."""
        return self.algorithm_name

    def displayName(self) -> str:
        """Return the name shown in the toolbox."""
        return self.display_name

    def group(self) -> str:
        """Return the group name."""
        return self.group_name

    def groupId(self) -> str:
        """Return the stable group id."""
        return self.group_id

    def icon(self) -> QIcon:
        """Return the cloudseg icon."""
        return icon()

    def helpUrl(self) -> str:
        """Return the project's documentation URL."""
        return "https://github.com/cloudseg/cloudseg#readme"

    def createInstance(self) -> QgsProcessingAlgorithm:
        """Return a new instance of the same class (Processing runs copies)."""
        return type(self)()

    def processAlgorithm(
        self,
        parameters: dict[str, Any],
        context: QgsProcessingContext,
        feedback: QgsProcessingFeedback,
    ) -> dict[str, Any]:
        """Run here (dependencies checked) or on the chosen server; the outputs.

        The backend's one-line errors become ``QgsProcessingException``.
        """
        server = server_choice(self, parameters, context)
        if server.remote:  # the server has the packages; this QGIS needs none of them
            with backend_errors():
                return self.run_on_server(server, parameters, context, feedback)
        self.require_dependencies()
        with backend_errors():
            return self.run_backend(parameters, context, feedback)

    def run_on_server(
        self,
        server: ServerChoice,
        parameters: dict[str, Any],
        context: QgsProcessingContext,
        feedback: QgsProcessingFeedback,
    ) -> dict[str, Any]:
        """Run on a cloudseg server; the same outputs as :meth:`run_backend` (subclasses)."""
        raise QgsProcessingException(f"{self.displayName()} runs on this computer only")

    def remote_run(
        self,
        server: ServerChoice,
        process: str,
        scene: Path,
        options: Mapping[str, Any],
        outputs: Mapping[str, Path | None],
        feedback: QgsProcessingFeedback,
        inputs: Mapping[str, Any] | None = None,
    ) -> RemoteRun:
        """One run of ``process`` on the server, with Processing's progress and Cancel.

        The scene is sent, the job followed (Cancel dismisses it) and the ``outputs``
        (result name -> path) downloaded together: written only when all arrived.
        ``inputs``: job inputs that are not run options (explain's classes, method),
        passed as they are. Logs ``Ran on <where>``.

        Raises:
            CloudsegError: One line: unreachable, refused token or request, a failed or
                dismissed job, a lost connection; ``CancelledError`` after Cancel.
        """
        from ...backend.network import redact
        from ...backend.remote import run_on_server
        from ..servers import client_for

        client = client_for(server)
        feedback.pushInfo(f"Input: {scene}")
        feedback.pushInfo(f"Sending it to the cloudseg server {redact(client.url)}")

        def progress(percent: float, message: str) -> None:
            self.report_progress(feedback, percent, message)

        run = run_on_server(client, process, scene, {**options, **(inputs or {})}, outputs,
                            progress, feedback.isCanceled)  # fmt: skip
        feedback.pushInfo(f"Ran on {run.where}")
        return run

    def run_backend(
        self,
        parameters: dict[str, Any],
        context: QgsProcessingContext,
        feedback: QgsProcessingFeedback,
    ) -> dict[str, Any]:
        """Read the parameters, call the backend, return the outputs (subclasses)."""
        raise NotImplementedError

    def require_dependencies(self) -> None:
        """Raise a clear :class:`QgsProcessingException` if a needed package is missing.

        Raises:
            QgsProcessingException: Naming the missing packages and the install step.
        """
        if not self.requirements:
            return
        missing = missing_requirements(*self.requirements)
        if missing:
            raise QgsProcessingException(install_hint(missing, where="qgis"))

    def extent_bounds(
        self, parameters: dict[str, Any], name: str, context: QgsProcessingContext, layer: Any
    ) -> tuple[float, float, float, float] | None:
        """An optional extent parameter as (left, bottom, right, top) in ``layer``'s CRS."""
        if not parameters.get(name):
            return None
        extent = self.parameterAsExtent(parameters, name, context, layer.crs())
        if extent.isNull() or extent.isEmpty():
            return None
        return (extent.xMinimum(), extent.yMinimum(), extent.xMaximum(), extent.yMaximum())

    @staticmethod
    def report_progress(feedback: QgsProcessingFeedback, percent: float, message: str) -> None:
        """Pass a backend progress callback (percent, message) on to Processing."""
        feedback.setProgress(percent)
        if message:
            feedback.setProgressText(message)


def add_cost_outputs(algorithm: QgsProcessingAlgorithm) -> None:
    """Declare what a run cost as outputs: SECONDS, KM2, SECONDS_PER_KM2, JOULES, method."""
    from qgis.core import QgsProcessingOutputNumber, QgsProcessingOutputString

    for key, label in (
        ("SECONDS", "Seconds (once the model is loaded)"),
        ("KM2", "Area (km²)"),
        ("SECONDS_PER_KM2", "Seconds per km²"),
        ("JOULES", "Energy (J; only where a counter was read)"),
    ):
        algorithm.addOutput(QgsProcessingOutputNumber(key, label))
    algorithm.addOutput(QgsProcessingOutputString("ENERGY_METHOD", "How energy was measured"))


def cost_outputs(accounting: dict[str, Any]) -> dict[str, Any]:
    """The cost outputs of a run's accounting (JOULES only when measured)."""
    outputs = {
        "SECONDS": accounting["seconds"],
        "KM2": accounting["km2"],
        "SECONDS_PER_KM2": accounting["seconds_per_km2"],
        "ENERGY_METHOD": accounting["energy_method"],
    }
    if accounting["joules"] is not None:
        outputs["JOULES"] = accounting["joules"]
    return outputs
