"""Forward the backend's ``logging`` records to QGIS's message log (tab "cloudseg")."""

from __future__ import annotations

import logging

from qgis.core import Qgis, QgsMessageLog

LOG_TAG = "cloudseg"


class QgsMessageLogHandler(logging.Handler):
    """A logging handler that writes records to :class:`QgsMessageLog`.

    ``QgsMessageLog.logMessage`` is thread-safe, so records from QgsTask threads are fine.
    """

    def emit(self, record: logging.LogRecord) -> None:
        """Write one record to the "cloudseg" tab of the log panel."""
        try:
            message = self.format(record)
        except Exception:  # logging must never raise, as in the standard library
            self.handleError(record)
            return
        if record.levelno >= logging.ERROR:
            level = Qgis.Critical
        elif record.levelno >= logging.WARNING:
            level = Qgis.Warning
        else:
            level = Qgis.Info
        QgsMessageLog.logMessage(message, LOG_TAG, level)


def install(logger_name: str = "cloudseg", level: int = logging.INFO) -> QgsMessageLogHandler:
    """Attach a :class:`QgsMessageLogHandler` to the package logger.

    Args:
        logger_name: The logger to forward (the whole package by default).
        level: The least severe level forwarded.

    Returns:
        The handler, to pass to :func:`uninstall` on unload.
    """
    handler = QgsMessageLogHandler(level)
    handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
    logger = logging.getLogger(logger_name)
    logger.addHandler(handler)
    if logger.level == logging.NOTSET or logger.level > level:
        logger.setLevel(level)
    return handler


def uninstall(handler: logging.Handler, logger_name: str = "cloudseg") -> None:
    """Detach a handler installed by :func:`install`."""
    logging.getLogger(logger_name).removeHandler(handler)
