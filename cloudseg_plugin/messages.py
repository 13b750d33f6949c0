"""The backend's messages in QGIS's words: controls instead of command-line flags.

The backend speaks of ``--bands`` and ``--product-level``; an analyst in QGIS has the
Processing dialog's parameters or the dock's fields. :func:`for_qgis` names the
control of the surface the message is shown in.
"""

from __future__ import annotations

import re

#: The Processing dialog's names for the command line's flags.
DIALOG = {
    "--bands": "the Bands parameter",
    "--product-level": "the Product level parameter",
    "--model": "the Model parameter",
    "--scale": "scale (QGIS has no field for it: write the scale into the file's metadata, "
    "or run cloudseg segment --scale)",
    "--offset": "offset",
    "--extent": "the Extent parameter",
    "--max-memory": "the advanced Memory budget parameter",
    "--no-reflectance-check": "the advanced parameter 'Refuse values that are not plausible "
    "reflectance' (off)",
    "--overwrite": "another output file",
    "--resolution": "the advanced Run at parameter",
    "--tile-size": "the advanced Tile size parameter",
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
