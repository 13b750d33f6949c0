"""Read an ingested store: its scenes, their STAC Items, and any window of image and mask.

This is what training uses, locally or from S3::

    from cloudseg.backend.store.dataset import open_dataset

    ds = open_dataset("s3://bucket/clouds", endpoint_url="http://127.0.0.1:9000")
    for scene in ds.scenes():
        image, mask = ds.read(scene, window=(0, 0, 256, 256))
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError
from .keys import COLLECTION_KEY, image_key, item_key, item_keys, mask_key
from .sources import Scheme
from .storage import Storage, open_storage


class StoredDataset:
    """An ingested dataset: only scenes whose STAC Item is written are visible."""

    def __init__(self, storage: Storage) -> None:
        """Open the store's collection.

        Raises:
            InputError: If the store holds no cloudseg collection.
        """
        self.storage = storage
        try:
            self.collection: dict[str, Any] = json.loads(storage.read_bytes(COLLECTION_KEY))
        except KeyError:
            raise InputError(
                f"{storage.url} holds no ingested dataset ({COLLECTION_KEY})"
            ) from None
        self.scheme = Scheme.from_json(self.collection["cloudseg:scheme"], storage.url)

    @property
    def bands(self) -> list[str]:
        """Band names, in stored order."""
        return self.scheme.bands

    @property
    def classes(self) -> list[dict[str, Any]]:
        """Classes (value, name[, color]); 255 in masks means ignore."""
        return self.scheme.classes

    def scenes(self) -> list[str]:
        """Ids of the visible scenes, sorted."""
        return [Path(k).stem for k in item_keys(self.storage)]

    def item(self, scene_id: str) -> Any:
        """The scene's STAC Item (a ``pystac.Item``)."""
        import pystac

        try:
            return pystac.Item.from_dict(json.loads(self.storage.read_bytes(item_key(scene_id))))
        except KeyError:
            raise InputError(f"no scene {scene_id!r} in {self.storage.url}") from None

    @lru_cache(maxsize=256)  # noqa: B019 (one dataset object lives as long as its arrays)
    def _arrays(self, scene_id: str) -> tuple[Any, Any]:
        import zarr

        if not self.storage.exists(item_key(scene_id)):
            raise InputError(f"no scene {scene_id!r} in {self.storage.url}")
        image = zarr.open_array(store=self.storage.mapping(image_key(scene_id)), mode="r")
        mask = zarr.open_array(store=self.storage.mapping(mask_key(scene_id)), mode="r")
        return image, mask

    def shape(self, scene_id: str) -> tuple[int, int]:
        """(rows, cols) of a scene."""
        return tuple(self._arrays(scene_id)[1].shape)  # type: ignore[return-value]

    def read(
        self, scene_id: str, window: tuple[int, int, int, int] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Read a window of a scene.

        Args:
            scene_id: A scene of :meth:`scenes`.
            window: ``(row, col, height, width)``; the whole scene when None.

        Returns:
            ``image`` (bands, h, w) in the source dtype and ``mask`` (h, w) uint8.

        Raises:
            InputError: For an unknown scene or a window outside it.
        """
        image, mask = self._arrays(scene_id)
        if window is None:
            return image[...], mask[...]
        row, col, height, width = window
        rows, cols = mask.shape
        if (
            row < 0
            or col < 0
            or height <= 0
            or width <= 0
            or row + height > rows
            or col + width > cols
        ):
            raise InputError(f"window {window} is outside scene {scene_id} ({rows} x {cols})")
        return image[:, row : row + height, col : col + width], mask[
            row : row + height, col : col + width
        ]

    def read_mask(self, scene_id: str) -> np.ndarray:
        """A scene's whole mask (h, w) uint8, without touching its imagery.

        What training reads up front to index its windows (one byte per pixel); the
        imagery is read only window by window, as windows are drawn.
        """
        return self._arrays(scene_id)[1][...]


def open_dataset(
    url: str | Path, endpoint_url: str | None = None, env_file: str | Path | None = ".env"
) -> StoredDataset:
    """Open an ingested store (local folder or ``s3://bucket/prefix``); nothing is created."""
    return StoredDataset(open_storage(url, endpoint_url, env_file, create=False))
