"""Where a dataset store lives: a local folder or an S3 prefix (MinIO, AWS, any endpoint).

Both offer the same small interface (bytes by key, listing, deleting, and a
``MutableMapping`` that zarr uses as its store), so ingestion and training code never
care which one they write to. The outputs of a batch (:mod:`cloudseg.backend.batch`) go
through it too: a file published whole from a staging folder (:meth:`Storage.put`), what
identifies a file's bytes (:meth:`Storage.checksum`: SHA-256 of a local file, an S3
object's ETag), and one writer at a time where the store can hold a lock
(:meth:`Storage.hold`: a local folder; S3 offers no lock every client honours).

S3 goes through boto3 with an endpoint URL and credentials from the environment or a
``.env`` file; credentials never appear in messages. Its connect and read timeouts and
retries are the network policy of :mod:`cloudseg.backend.network`.

zarr's own fsspec/s3fs route is not used: s3fs brings aiobotocore, which pins botocore
versions that conflict with boto3's, and the errors it raises for bad credentials or a
missing bucket are not ones we can turn into a clear one-line message.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import tempfile
from collections.abc import Iterator, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import atomic
from ..errors import InputError
from ..metadata_files import read_json
from ..network import redact

#: A staging folder's name: the host and process id of its writer, then tempfile's part.
STAGING_PREFIX = ".cloudseg-batch-"
_STAGING = re.compile(r"^\.cloudseg-batch-(?P<host>.+)-(?P<pid>\d+)-[^-]+$")
_TEMPORARY_FILE = re.compile(r"^\.(?P<name>.+)\.\d+-[0-9a-f]{8}\.(?:part|cog)(?:\.gpkg)?$")


class StorageError(InputError):
    """The store cannot be reached or used (bad credentials, missing bucket, ...)."""


class Storage:
    """A place for keys (``a/b/c``) holding bytes."""

    url: str

    def read_bytes(self, key: str) -> bytes:
        """Return the bytes at ``key``; raise KeyError if absent."""
        raise NotImplementedError

    def write_bytes(self, key: str, data: bytes) -> None:
        """Store ``data`` at ``key`` (replacing it)."""
        raise NotImplementedError

    def exists(self, key: str) -> bool:
        """Whether ``key`` holds data."""
        raise NotImplementedError

    def size(self, key: str) -> int:
        """The size of ``key`` in bytes; raise KeyError if absent."""
        raise NotImplementedError

    def list(self, prefix: str) -> list[str]:
        """All keys under ``prefix`` (relative to the store), sorted."""
        raise NotImplementedError

    def delete_prefix(self, prefix: str) -> None:
        """Delete every key under ``prefix``."""
        raise NotImplementedError

    def mapping(self, prefix: str) -> MutableMapping[str, bytes]:
        """A ``MutableMapping`` over the keys under ``prefix`` (a zarr store)."""
        raise NotImplementedError

    def names(self) -> set[str]:
        """The names directly in the store (a local folder's sub-folders included)."""
        return {key for key in self.list("") if "/" not in key}

    def read_json(self, key: str) -> dict[str, Any] | None:
        """A JSON object at ``key``; None where absent or not a JSON object."""
        try:
            data = json.loads(self.read_bytes(key))
        except (KeyError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def checksum(self, key: str) -> str | None:
        """What identifies the bytes at ``key`` (``sha256:...``, ``etag:...``); None if absent."""
        raise NotImplementedError

    def location(self, key: str) -> str:
        """Where ``key`` is, for people and records: a path, or an ``s3://`` URL."""
        return f"{self.url}/{key}"

    def put(self, key: str, source: Path | bytes) -> str:
        """Publish a file at ``key`` whole: these bytes, or moved from the file ``source``.

        Returns:
            Its :meth:`location`.
        """
        self.write_bytes(key, source if isinstance(source, bytes) else Path(source).read_bytes())
        return self.location(key)

    def staging(self) -> tempfile.TemporaryDirectory[str]:
        """A temporary folder for files to :meth:`put` (on the store's file system if local).

        Its name carries this host and process, so that the next holder of the store
        (:meth:`hold`) removes it if this process dies.
        """
        prefix = f"{STAGING_PREFIX}{socket.gethostname()}-{os.getpid()}-"
        return tempfile.TemporaryDirectory(prefix=prefix, dir=self._staging_folder())

    def _staging_folder(self) -> Path | None:
        return None  # the system's temporary folder

    @contextlib.contextmanager
    def hold(self, key: str) -> Iterator[None]:
        """One writer of ``key`` at a time, where the store can lock (see subclasses)."""
        del key
        yield


class LocalStorage(Storage):
    """A folder on disk; writes go to a temporary name and are renamed."""

    def __init__(self, root: Path, create: bool = True) -> None:
        """Use the folder ``root``; create it if ``create``.

        Raises:
            StorageError: If the folder does not exist and ``create`` is False.
        """
        self.root = Path(os.path.abspath(root.expanduser()))  # noqa: PTH100 (links as given)
        if create:
            self.root.mkdir(parents=True, exist_ok=True)
        elif not self.root.is_dir():
            raise StorageError(
                f"store {self.root} does not exist; ingest scenes into it first (cloudseg ingest)"
            )
        self.url = str(self.root)

    def _path(self, key: str) -> Path:
        return self.root / key

    def read_bytes(self, key: str) -> bytes:
        """See :class:`Storage`."""
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError:
            raise KeyError(key) from None

    def write_bytes(self, key: str, data: bytes) -> None:
        """See :class:`Storage`."""
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic.write_bytes(path, data)

    def exists(self, key: str) -> bool:
        """See :class:`Storage`."""
        return self._path(key).is_file()

    def size(self, key: str) -> int:
        """See :class:`Storage`."""
        try:
            return self._path(key).stat().st_size
        except FileNotFoundError:
            raise KeyError(key) from None

    def list(self, prefix: str) -> list[str]:
        """See :class:`Storage`."""
        base = self._path(prefix)
        if not base.exists():
            return []
        return sorted(str(p.relative_to(self.root)) for p in base.rglob("*") if p.is_file())

    def delete_prefix(self, prefix: str) -> None:
        """See :class:`Storage`."""
        path = self._path(prefix)
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()

    def mapping(self, prefix: str) -> MutableMapping[str, bytes]:
        """See :class:`Storage` (zarr's DirectoryStore)."""
        import zarr

        return zarr.DirectoryStore(str(self._path(prefix)))

    def names(self) -> set[str]:
        """See :class:`Storage`."""
        return {p.name for p in self.root.iterdir()}

    def read_json(self, key: str) -> dict[str, Any] | None:
        """See :class:`Storage` (within the metadata limit: a foreign file is not read whole)."""
        try:
            data = read_json(self._path(key))
        except (FileNotFoundError, IsADirectoryError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def checksum(self, key: str) -> str | None:
        """See :class:`Storage` (the file's SHA-256)."""
        path = self._path(key)
        return f"sha256:{atomic.file_sha256(path)}" if path.is_file() else None

    def location(self, key: str) -> str:
        """See :class:`Storage`."""
        return str(self._path(key))

    def put(self, key: str, source: Path | bytes) -> str:
        """See :class:`Storage` (a file is renamed: ``source`` must be on this file system)."""
        target = self._path(key)
        if isinstance(source, bytes):
            atomic.write_bytes(target, source)
        else:
            Path(source).replace(target)
        return str(target)

    def _staging_folder(self) -> Path | None:
        return self.root

    @contextlib.contextmanager
    def hold(self, key: str) -> Iterator[None]:
        """See :class:`Storage`: a second writer of ``key`` is refused while this one lives.

        The lock is ``key``'s (:func:`cloudseg.backend.atomic.claim`); once it is held,
        what dead writers left in the folder is removed (:meth:`remove_leftovers`).

        Raises:
            OutputConflictError: If another live run holds ``key``.
        """
        with atomic.claim([self._path(key)]):
            self.remove_leftovers()
            yield

    def remove_leftovers(self) -> None:
        """Staging folders and temporary files of dead writers on this host (a kill, a crash).

        Only processes of this host are judged: a staging folder of another host's writer
        (a cluster writing to a shared file system) is left alone. A staging folder in the
        older form (no process id in its name) goes unless a lock in it is held.
        """
        host = socket.gethostname()
        stale_names = set()
        for entry in self.root.iterdir():
            staging = _STAGING.match(entry.name)
            if staging and entry.is_dir():
                if staging["host"] == host and not atomic.running(int(staging["pid"])):
                    shutil.rmtree(entry, ignore_errors=True)
                continue
            if entry.name.startswith(STAGING_PREFIX) and entry.is_dir():  # an older run's
                if not any(atomic.held(lock) for lock in entry.glob(".*.cloudseg-lock")):
                    shutil.rmtree(entry, ignore_errors=True)
                continue
            temporary = _TEMPORARY_FILE.match(entry.name)
            if temporary:
                stale_names.add(temporary["name"])
        for name in sorted(stale_names):
            atomic.remove(*atomic.stale_temporaries(self.root / name))


@dataclass(frozen=True)
class S3Settings:
    """How to reach an S3 endpoint. ``repr`` never shows the secret."""

    endpoint_url: str | None
    access_key: str | None
    secret_key: str | None
    region: str | None = None

    def __repr__(self) -> str:
        return (
            f"S3Settings(endpoint_url={redact(self.endpoint_url or '')!r}, access_key=***, "
            "secret_key=***)"
        )

    @classmethod
    def from_environment(
        cls, endpoint_url: str | None = None, env_file: str | Path | None = ".env"
    ) -> S3Settings:
        """Settings from arguments, the environment and a ``.env`` file.

        MinIO-style variables (``MINIO_ENDPOINT``, ``MINIO_ACCESS_KEY``,
        ``MINIO_SECRET_KEY``) are used when set; otherwise boto3 finds the usual AWS
        ones (``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_ENDPOINT_URL``...).
        Values already in the environment win over the ``.env`` file.
        """
        values = _environment(env_file)
        endpoint = endpoint_url or values.get("MINIO_ENDPOINT") or values.get("AWS_ENDPOINT_URL")
        if endpoint and "://" not in endpoint:
            secure = values.get("MINIO_SECURE", "false").lower() in ("1", "true", "yes")
            endpoint = f"{'https' if secure else 'http'}://{endpoint}"
        return cls(
            endpoint_url=endpoint,
            access_key=values.get("MINIO_ACCESS_KEY") or values.get("AWS_ACCESS_KEY_ID"),
            secret_key=values.get("MINIO_SECRET_KEY") or values.get("AWS_SECRET_ACCESS_KEY"),
            region=values.get("AWS_REGION") or values.get("AWS_DEFAULT_REGION") or "us-east-1",
        )


class S3Storage(Storage):
    """An S3 prefix through boto3."""

    def __init__(self, bucket: str, prefix: str, settings: S3Settings) -> None:
        """Connect and check at once that the bucket exists and the credentials work.

        Raises:
            StorageError: With a one-line reason (never the credentials).
        """
        import boto3

        from ..network import boto_config

        self.bucket, self.prefix = bucket, prefix.strip("/")
        self.url = f"s3://{bucket}/{self.prefix}".rstrip("/")
        self.client = boto3.client(
            "s3",
            endpoint_url=settings.endpoint_url,
            aws_access_key_id=settings.access_key,
            aws_secret_access_key=settings.secret_key,
            region_name=settings.region,
            config=boto_config(),  # the one network-timeout policy (backend.network)
        )
        where = redact(settings.endpoint_url) if settings.endpoint_url else "AWS"
        try:
            self.client.head_bucket(Bucket=bucket)
        except Exception as exc:  # botocore raises several unrelated types
            raise StorageError(explain_s3_error(exc, bucket, where)) from None

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def read_bytes(self, key: str) -> bytes:
        """See :class:`Storage`."""
        try:
            return self.client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"].read()
        except self.client.exceptions.NoSuchKey:
            raise KeyError(key) from None

    def write_bytes(self, key: str, data: bytes) -> None:
        """See :class:`Storage` (an S3 PUT is atomic: readers see all or nothing)."""
        self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data)

    def exists(self, key: str) -> bool:
        """See :class:`Storage`."""
        try:
            self.size(key)
            return True
        except KeyError:
            return False

    def size(self, key: str) -> int:
        """See :class:`Storage`."""
        from botocore.exceptions import ClientError

        try:
            head = self.client.head_object(Bucket=self.bucket, Key=self._key(key))
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                raise KeyError(key) from None
            raise
        return int(head["ContentLength"])

    def list(self, prefix: str) -> list[str]:
        """See :class:`Storage`."""
        return sorted(self.list_details(prefix))

    def list_details(self, prefix: str) -> dict[str, tuple[int, str]]:
        """Every key under ``prefix`` with its size and ETag (which changes with the bytes)."""
        full = self._key(prefix)
        cut = len(self.prefix) + 1 if self.prefix else 0
        found = {}
        for page in self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=full
        ):
            for obj in page.get("Contents", []):
                found[obj["Key"][cut:]] = (int(obj.get("Size", 0)), str(obj.get("ETag", "")))
        return dict(sorted(found.items()))

    def checksum(self, key: str) -> str | None:
        """See :class:`Storage` (the object's ETag)."""
        tag = self.etag(key)
        return f"etag:{tag}" if tag else None

    def etag(self, key: str) -> str | None:
        """The ETag of ``key`` (it changes with the bytes), None if there is no such key."""
        from botocore.exceptions import ClientError

        try:
            answer = self.client.head_object(Bucket=self.bucket, Key=self._key(key))
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return None
            raise
        return str(answer.get("ETag", "")) or None

    def delete_prefix(self, prefix: str) -> None:
        """See :class:`Storage`."""
        keys = self.list(prefix)
        for start in range(0, len(keys), 1000):
            self.client.delete_objects(
                Bucket=self.bucket,
                Delete={"Objects": [{"Key": self._key(k)} for k in keys[start : start + 1000]]},
            )

    def mapping(self, prefix: str) -> MutableMapping[str, bytes]:
        """See :class:`Storage`."""
        return S3Mapping(self, prefix.strip("/"))


class S3Mapping(MutableMapping):
    """The keys under one prefix of an :class:`S3Storage`, as zarr's store."""

    def __init__(self, storage: S3Storage, prefix: str) -> None:
        """Map ``prefix/<key>`` of ``storage`` to ``<key>``."""
        self.storage, self.prefix = storage, prefix

    def __getitem__(self, key: str) -> bytes:
        return self.storage.read_bytes(f"{self.prefix}/{key}")

    def __setitem__(self, key: str, value: Any) -> None:
        self.storage.write_bytes(f"{self.prefix}/{key}", bytes(value))

    def __delitem__(self, key: str) -> None:
        self.storage.client.delete_object(
            Bucket=self.storage.bucket, Key=self.storage._key(f"{self.prefix}/{key}")
        )

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and self.storage.exists(f"{self.prefix}/{key}")

    def __iter__(self) -> Iterator[str]:
        cut = len(self.prefix) + 1
        return iter([k[cut:] for k in self.storage.list(self.prefix + "/")])

    def __len__(self) -> int:
        return len(self.storage.list(self.prefix + "/"))

    def getitems(self, keys: list[str], *, contexts: Any = None) -> dict[str, bytes]:
        """Fetch several chunks at once, one GET each in parallel (zarr calls this).

        A window that spans four chunks then costs about one round trip, not four.
        """
        from concurrent.futures import ThreadPoolExecutor

        def fetch(key: str) -> tuple[str, bytes | None]:
            try:
                return key, self[key]
            except KeyError:
                return key, None

        with ThreadPoolExecutor(max_workers=min(16, max(len(keys), 1))) as pool:
            return {k: v for k, v in pool.map(fetch, keys) if v is not None}

    def rmdir(self, path: str = "") -> None:
        """Delete everything under ``path`` (zarr calls this when overwriting)."""
        self.storage.delete_prefix(f"{self.prefix}/{path}".rstrip("/") + "/")


def _environment(env_file: str | Path | None) -> dict[str, str]:
    """The process environment over the values of a ``.env`` file (if there is one)."""
    values = dict(os.environ)
    if env_file is not None and Path(env_file).is_file():
        from dotenv import dotenv_values

        values = {k: v for k, v in dotenv_values(env_file).items() if v} | values
    return values


def is_s3_error(exc: BaseException) -> bool:
    """Whether ``exc`` comes from boto3 (without importing it when it was never used)."""
    import sys

    botocore = sys.modules.get("botocore.exceptions")
    return botocore is not None and isinstance(exc, (botocore.BotoCoreError, botocore.ClientError))


def explain_s3_error(exc: Exception, bucket: str = "", where: str = "S3") -> str:
    """One line for a boto3 error: what happened, and what to check (never the secrets)."""
    from botocore.exceptions import (
        ClientError,
        ConnectTimeoutError,
        EndpointConnectionError,
        NoCredentialsError,
        ReadTimeoutError,
    )

    from ..network import timeouts

    if isinstance(exc, ReadTimeoutError):
        return (
            f"S3 at {where} accepted the connection but did not answer within "
            f"{timeouts('s3').read:g} s; check the endpoint is an S3 "
            "server and is healthy (CLOUDSEG_READ_TIMEOUT sets the wait)"
        )
    if isinstance(exc, ConnectTimeoutError):
        return (
            f"cannot connect to the S3 endpoint {where} within "
            f"{timeouts('s3').connect:g} s; check MINIO_ENDPOINT / "
            "--endpoint-url and the network"
        )

    if isinstance(exc, NoCredentialsError):
        return (
            f"no S3 credentials for {where}: set MINIO_ACCESS_KEY and MINIO_SECRET_KEY "
            "(or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY), or put them in .env"
        )
    if isinstance(exc, EndpointConnectionError):
        return f"cannot connect to the S3 endpoint {where}; check MINIO_ENDPOINT / --endpoint-url"
    if isinstance(exc, ClientError):
        code = str(exc.response.get("Error", {}).get("Code", ""))
        if code in ("404", "NoSuchBucket", "NotFound"):
            return f"bucket {bucket} does not exist at {where}; create it first"
        if code in ("403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
            return (
                f"S3 at {where} refused the credentials for bucket {bucket}; check "
                "MINIO_ACCESS_KEY / MINIO_SECRET_KEY (or the AWS variables)"
            )
        return f"S3 at {where} answered {code or 'an error'}" + (
            f" for bucket {bucket}" if bucket else ""
        )
    return f"cannot reach S3 at {where} ({type(exc).__name__})"


def open_storage(
    url: str | Path,
    endpoint_url: str | None = None,
    env_file: str | Path | None = ".env",
    create: bool = True,
) -> Storage:
    """Open a store location: a local folder, or ``s3://bucket/prefix``.

    ``s3://`` alone (or ``s3:///prefix``) takes the bucket from ``S3_BUCKET_NAME``.
    A local folder is created for writing (``create``), never for reading.

    Raises:
        StorageError: When S3 cannot be reached, refuses the credentials, or lacks the bucket.
    """
    text = str(url)
    if not text.startswith("s3://"):
        return LocalStorage(Path(text), create=create)
    settings = S3Settings.from_environment(endpoint_url, env_file)
    bucket, _, prefix = text[len("s3://") :].partition("/")
    if not bucket:
        bucket = _environment(env_file).get("S3_BUCKET_NAME", "")
        if not bucket:
            raise StorageError(f"{text} names no bucket and S3_BUCKET_NAME is not set")
    return S3Storage(bucket, prefix, settings)


#: Input schemes :func:`fetch_scene` downloads.
REMOTE_SCHEMES = ("s3://", "http://", "https://")


def fetch_scene(source: str, folder: Path, endpoint_url: str | None = None) -> str:
    """A local path for a scene: an S3 object or http(s) file is downloaded into ``folder``.

    The scene reader reads local files only (a scene's band files, SAFE metadata and
    STAC Item are found beside it); a batch worker and a server job fetch a remote scene
    first, under the network timeouts (:mod:`cloudseg.backend.network`), into
    ``folder/input/`` (apart from the outputs). A local path is returned as it is.

    Raises:
        InputError: One line, when an http(s) server cannot be reached or answers an error.
        StorageError: When S3 cannot be reached or refuses (one line).
    """
    if not source.startswith(REMOTE_SCHEMES):
        return source
    parent, name = source.split("?", 1)[0].rsplit("/", 1)
    (folder / "input").mkdir(exist_ok=True)
    name = "".join(c if c.isalnum() or c in "-_." else "_" for c in name).lstrip(".") or "input"
    local = folder / "input" / name
    if source.startswith("s3://"):
        from ..network import check_download_size

        storage = open_storage(parent, endpoint_url, env_file=None)
        check_download_size(storage.size(name), redact(source))
        local.write_bytes(storage.read_bytes(name))
    else:
        from ..network import download

        download(source, local)
    return str(local)
