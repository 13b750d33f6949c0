"""The backend's messages in QGIS's words: controls instead of command-line flags.

The backend speaks of ``--bands`` and ``--product-level``; an analyst in QGIS has the
Processing dialog's parameters or the dock's fields. :func:`for_qgis` names the
control of the surface the message is shown in.
"""

from __future__ import annotations

import re

from ..backend.inference.options import RUN_FLAGS, SEGMENT_FLAGS

#: The Processing dialog's names for the command line's flags: each declared option's
#: parameter by its label (a flag that turns one off: the parameter unticked), and the
#: segment algorithm's own.
DIALOG = {
    f.flag: f"the {'advanced ' if f.advanced else ''}{f.label} parameter"
    + (" (unticked)" if f.flag.startswith("--no-") else "")
    for f in (*RUN_FLAGS, *SEGMENT_FLAGS)
    if f.offered("processing")
} | {
    "--extent": "the Extent parameter",
    "--overwrite": "another output file",
}
#: The dock's names for the same flags (what the dock lacks, the dialog has).
DOCK = DIALOG | {
    "--bands": "the dock's Bands field",
    "--product-level": "the dock's Product level",
    "--model": "the dock's Model",
    "--extent": "the Processing dialog's Extent parameter",
    "--max-memory": "the Processing dialog's Memory budget parameter",
    "--no-reflectance-check": "the Processing dialog's reflectance check (off)",
    "--resolution": "the dock's Preview box",
}
_FLAG = re.compile(r"(?:\b(pass|use|set)\s+)?(--[a-z][a-z0-9-]*)(?:\s+((?:[A-Z0-9][\w.,]*)))?")


def for_qgis(message: str, controls: dict[str, str] = DIALOG) -> str:
    """``message`` with each command-line flag replaced by the control that sets it.

    ``"pass --bands B02,B03"`` becomes ``"set the Bands parameter (B02,B03)"``; flags
    without a control stay as they are.
    """

    def replace(match: re.Match[str]) -> str:
        verb, flag, value = match.groups()
        name = controls.get(flag)
        if name is None:
            return match.group(0)
        text = ("set " if verb else "") + name
        return text + (f" ({value})" if value else "")

    return _FLAG.sub(replace, message)
