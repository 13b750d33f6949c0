"""The store's layout: the key of every object, in one place for writers and readers.

Keys below the store's root (a folder or ``s3://bucket/prefix``)::

    stac/collection.json        STAC Collection: bands and classes, recorded once
    stac/items/<scene>.json     one STAC Item per scene (written last: it makes the scene visible)
    zarr/<scene>.zarr           imagery, (bands, rows, cols), chunks of (bands, 256, 256)
    masks/<scene>.zarr          class values, (rows, cols), the same grid and chunks
    report/report.json, *.png   dataset report (class balance, cloud fraction, bands, dates)
"""

from __future__ import annotations

import json
from typing import Any

from .storage import Storage

COLLECTION_KEY = "stac/collection.json"
ITEMS_PREFIX = "stac/items/"
REPORT_PREFIX = "report/"
#: Mask value of unlabeled pixels, in stores and in label rasters.
IGNORE = 255


def image_key(scene_id: str) -> str:
    """Store prefix of a scene's imagery."""
    return f"zarr/{scene_id}.zarr"


def mask_key(scene_id: str) -> str:
    """Store prefix of a scene's mask."""
    return f"masks/{scene_id}.zarr"


def item_key(scene_id: str) -> str:
    """Store key of a scene's STAC Item."""
    return f"{ITEMS_PREFIX}{scene_id}.json"


def report_key(name: str) -> str:
    """Store key of a file of the dataset report."""
    return f"{REPORT_PREFIX}{name}"


def item_keys(storage: Storage) -> list[str]:
    """Keys of the STAC Items in the store, in id order (no half-written files)."""
    return [k for k in storage.list(ITEMS_PREFIX) if k.endswith(".json") and "/." not in f"/{k}"]


def stored_items(storage: Storage) -> list[dict[str, Any]]:
    """Every STAC Item in the store, in id order."""
    return [json.loads(storage.read_bytes(k)) for k in item_keys(storage)]
