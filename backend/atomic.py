"""The output contract: outputs appear whole or not at all, and never replace an input.

Every command that writes follows the same rules, all kept here:

- :func:`check_outputs` before any work: an output is never an input (resolved paths,
  hard links, the band files of an input folder or product) nor another output of the
  same run; it is not a folder, has a suffix its format allows, and its folder exists
  and is writable; an existing output is replaced only when asked.
- :func:`claim` for the run's duration: a lock beside each output refuses a second run
  on the same outputs. It is the kernel's (:mod:`filelock`: ``flock`` on Unix), so it
  goes with its process however that ends, and of two runs that find a dead run's lock
  file one only takes it. Hidden temporary files of dead runs (killed by SIGKILL or a
  power cut) are removed.
- Data is written under a hidden temporary name beside the target, which carries the
  writer's process id (:func:`temporary_sibling`); the rename onto the target (atomic
  on one file system) happens only once every output of the run is complete. A failure
  or cancel at any moment removes the temporary files and leaves earlier results
  exactly as they were.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import signal
import socket
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from .errors import OutputConflictError, OutputExistsError

#: Files GDAL may write beside a raster.
_SIDE_SUFFIXES = (".aux.xml", ".ovr")
#: Suffixes of the temporary files written by :func:`temporary_sibling`.
_TEMPORARY = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)-[0-9a-f]{8}\.(?:part|cog)(?:\.gpkg)?$")


def check_target(path: Path, overwrite: bool) -> None:
    """Refuse to replace an existing output unless asked.

    Raises:
        OutputExistsError: If ``path`` exists and ``overwrite`` is False, or its folder
            does not exist.
    """
    if path.exists() and not overwrite:
        raise OutputExistsError(f"{path} exists; pass --overwrite to replace it")
    if not path.parent.is_dir():
        raise OutputExistsError(f"the folder of {path} does not exist; create it first")


def safe_name(text: str) -> str:
    """``text`` as a file name part: letters, digits, ``-`` and ``_`` (60 at most)."""
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in text)[:60] or "layer"


def stamped_paths(folder: Path, name: str, files: Mapping[str, str]) -> dict[str, Path]:
    """Output paths unique by the time: ``<folder>/<name>_<stamp>_<kind><suffix>``.

    The one naming rule of outputs the plugin and the label loop name themselves (the
    stamp is local time to the microsecond, so names sort by time).

    Args:
        folder: Where the outputs go.
        name: What they were made from (a layer's or scene's name; made file-safe).
        files: Kind -> file suffix, e.g. ``{"mask": ".tif", "polygons": ".gpkg"}``.
    """
    import datetime as dt

    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S-%f")
    stem = f"{safe_name(name)}_{stamp}"
    return {kind: folder / f"{stem}_{kind}{suffix}" for kind, suffix in files.items()}


def temporary_sibling(path: Path, tag: str = "part") -> Path:
    """A hidden name beside ``path`` that no one mistakes for a result.

    The name carries this process's id, so that a later run can tell the leftovers of a
    dead run (removed by :func:`claim`) from the files of a live one.
    """
    return path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.{tag}")


def same_file(a: Path, b: Path) -> bool:
    """Whether two paths name one file: equal when resolved, or hard links of one inode."""
    if a.resolve() == b.resolve():
        return True
    try:
        return a.samefile(b)
    except OSError:
        return False


def _check_writable(folder: Path) -> None:
    """Create and remove a probe file: permissions, read-only mounts and quotas all show."""
    probe = folder / f".cloudseg-probe.{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        probe.touch(exist_ok=False)
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise OutputConflictError(
            f"cannot write to {folder} ({reason.lower()}); choose a folder you can write to"
        ) from None
    with contextlib.suppress(OSError):
        probe.unlink()


def check_outputs(
    outputs: Mapping[str, Path | str | None],
    inputs: Iterable[Path | str],
    overwrite: bool,
    suffixes: Mapping[str, Sequence[str]] | None = None,
    input_folders: Iterable[Path] = (),
    input_name: Callable[[str], bool] | None = None,
) -> dict[str, Path]:
    """Check a run's outputs before any work is done; every rule of the contract.

    Args:
        outputs: Each output's role (as the user named it: ``"OUTPUT"``,
            ``"--probabilities"``) and its path; None for outputs not asked for.
        inputs: Every file or folder the run reads (a folder's band files included).
        overwrite: Whether existing outputs may be replaced.
        suffixes: Per role, the file suffixes its format allows (lower case).
        input_folders: Input folders in which no file named like an input (a band
            file, says ``input_name``) may be written: it would join the input.
        input_name: ``file stem -> bool``: whether a file of that name is read as input.

    Returns:
        The outputs asked for, by role, as expanded paths.

    Raises:
        OutputConflictError: An output is an input, two outputs are one file, an output
            is a folder or has the wrong suffix, or its folder cannot be written.
        OutputExistsError: An output exists and ``overwrite`` is False, or its folder
            does not exist.
    """
    chosen = {role: Path(p).expanduser() for role, p in outputs.items() if p is not None}
    read = [Path(p).expanduser() for p in inputs]
    seen: list[tuple[str, Path]] = []
    for role, path in chosen.items():
        if path.is_dir():
            raise OutputConflictError(
                f"{role} {path} is a folder; give a file name, e.g. {path / 'mask.tif'}"
            )
        allowed = (suffixes or {}).get(role)
        if allowed and path.suffix.lower() not in allowed:
            raise OutputConflictError(
                f"{role} {path.name} must end in {' or '.join(allowed)} (the file is written "
                f"in that format, whatever its name says)"
            )
        for source in read:
            if same_file(path, source):
                raise OutputConflictError(
                    f"{role} {path} is an input of this run; write the result to another file"
                )
        for folder in input_folders:
            in_folder = path.parent.resolve() == Path(folder).expanduser().resolve()
            if in_folder and input_name is not None and input_name(path.stem):
                raise OutputConflictError(
                    f"{role} {path.name} would become a band of the input folder {folder}; "
                    "write it elsewhere or give it another name"
                )
        for other_role, other in seen:
            if same_file(path, other):
                raise OutputConflictError(
                    f"{role} and {other_role} are the same file ({path}); give each its own name"
                )
        seen.append((role, path))
        check_target(path, overwrite)
    for folder in sorted({p.parent.resolve() for p in chosen.values()}):
        _check_writable(folder)
    return chosen


# -- one run at a time per output, and the leftovers of dead runs ---------------------------
#: How long a run waits for a lock before it is refused (seconds).
_LOCK_WAIT_S = 0.5


def _lock_path(target: Path) -> Path:
    return target.with_name(f".{target.name}.cloudseg-lock")


def held(lock: Path) -> bool:
    """Whether a live process holds the lock file ``lock`` now (it is left as it is)."""
    probe = _kernel_lock(lock, 0)
    try:
        probe.acquire()
    except TimeoutError:
        return True
    except OSError:  # gone meanwhile, or unreadable: no one holds it through this file
        return False
    probe.release()
    return False


def _kernel_lock(
    lock: Path, timeout: float, on_acquired: Callable[[int], None] | None = None
) -> Any:
    """A kernel lock on the file ``lock``: :mod:`filelock`'s, else :class:`_StdlibLock`.

    Its ``acquire()`` raises TimeoutError after ``timeout`` seconds; ``on_acquired`` gets
    the locked descriptor. The file stays on release (:func:`_release` removes it).
    """
    try:
        import filelock
    except ImportError:  # QGIS's own Python before the plugin's first install step
        return _StdlibLock(lock, timeout, on_acquired)
    return filelock.FileLock(
        lock, timeout=timeout, preserve_lock_file=on_acquired is None, on_acquired=on_acquired
    )


class _StdlibLock:
    """The same kernel lock from the standard library, where :mod:`filelock` is missing.

    Only QGIS's own Python before the plugin's segment step is installed needs it: the
    installer holds its folder with :func:`claim` while it installs that step (filelock
    included). On Unix it is filelock's ``flock``, so the two exclude each other; on
    Windows ``msvcrt.locking`` of the file's first byte.
    """

    def __init__(
        self, lock: Path, timeout: float, on_acquired: Callable[[int], None] | None
    ) -> None:
        self.lock_file, self.timeout, self.on_acquired = lock, timeout, on_acquired
        self.fd: int | None = None

    @staticmethod
    def _lock(fd: int, take: bool) -> bool:
        try:
            if os.name == "nt":
                import msvcrt

                os.lseek(fd, 0, os.SEEK_SET)
                msvcrt.locking(fd, msvcrt.LK_NBLCK if take else msvcrt.LK_UNLCK, 1)  # type: ignore[attr-defined]
            else:
                import fcntl

                fcntl.flock(fd, (fcntl.LOCK_EX | fcntl.LOCK_NB) if take else fcntl.LOCK_UN)
        except OSError:
            return False
        return True

    def acquire(self) -> None:
        """Take the lock, trying for ``timeout`` seconds; raise TimeoutError if held."""
        deadline = time.monotonic() + self.timeout
        while True:
            fd = os.open(self.lock_file, os.O_RDWR | os.O_CREAT, 0o644)
            if self._lock(fd, True):
                try:  # still the file at that name (its last holder may have removed it)
                    current = os.path.samestat(os.fstat(fd), self.lock_file.stat())
                except FileNotFoundError:
                    current = False
                if current:
                    if self.on_acquired is not None:
                        self.on_acquired(fd)
                    self.fd = fd
                    return
                self._lock(fd, False)
                os.close(fd)
                continue
            os.close(fd)
            if time.monotonic() >= deadline:
                raise TimeoutError(f"{self.lock_file} is held")
            time.sleep(0.05)

    def release(self) -> None:
        """Let go of the lock."""
        if self.fd is not None:
            self._lock(self.fd, False)
            os.close(self.fd)
            self.fd = None


def running(pid: int) -> bool:
    """Whether process ``pid`` of this host still runs (a killed one not yet reaped does not).

    What judges the temporary files and folders named by their writer's process id
    (:func:`temporary_sibling`); the locks themselves need no such check.
    """
    if os.name == "nt":  # os.kill(pid, 0) would terminate the process on Windows
        import ctypes

        kernel = ctypes.windll.kernel32  # type: ignore[attr-defined]
        handle = kernel.OpenProcess(0x1000, False, pid)  # PROCESS_QUERY_LIMITED_INFORMATION
        if not handle:
            return False
        kernel.CloseHandle(handle)
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    try:
        import psutil

        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except ImportError:
        return True
    except psutil.Error:  # gone meanwhile
        return False


def _lock_holder(lock: Path) -> str:
    """Who holds a lock, as its holder wrote it (``process 4242 on host``), or empty."""
    try:
        pid, host = lock.read_text(encoding="utf-8").split()[:2]
        return f"process {int(pid)} on {host}"
    except (OSError, ValueError):  # not yet written, gone meanwhile, or locked (Windows)
        return ""


def _take_lock(target: Path) -> Any:
    """Lock ``target`` for this process with the kernel (:mod:`filelock`), or refuse.

    The kernel releases the lock when its process ends, however it ends (SIGKILL, a
    crash), so a lock file left by a dead run is taken like a free one; of two runs that
    find it, one only gets it. The holder writes its process id and host in the file,
    for the message a second run shows.

    Raises:
        OutputConflictError: If another live run holds ``target``.
    """
    lock = _lock_path(target)
    me = f"{os.getpid()} {socket.gethostname()}\n".encode()

    def sign(fd: int) -> None:
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, me)

    # A short wait: a holder that is just finishing removes the file before it lets go.
    kernel_lock = _kernel_lock(lock, _LOCK_WAIT_S, sign)
    try:
        kernel_lock.acquire()
    except TimeoutError:  # filelock.Timeout is one
        holder = _lock_holder(lock)
        who = f"another cloudseg run ({holder})" if holder else "another cloudseg run"
        raise OutputConflictError(f"{who} is writing {target}; wait for it to finish") from None
    return kernel_lock


def _release(kernel_lock: Any) -> None:
    """Remove a lock's file, then let go of it (a run waiting on the old file retries)."""
    with contextlib.suppress(OSError):  # Windows: the open file stays until released
        Path(kernel_lock.lock_file).unlink()
    kernel_lock.release()


def stale_temporaries(target: Path) -> list[Path]:
    """Hidden temporary files beside ``target`` left by runs whose process is gone."""
    stale = []
    with contextlib.suppress(OSError):
        for candidate in target.parent.iterdir():
            match = _TEMPORARY.match(candidate.name)
            if match and match["name"] == target.name and not running(int(match["pid"])):
                stale.append(candidate)
    return stale


def dead_temporaries(folder: Path) -> list[Path]:
    """Hidden temporaries in ``folder``, of any target, left by processes that are gone."""
    stale = []
    with contextlib.suppress(OSError):
        for candidate in Path(folder).iterdir():
            match = _TEMPORARY.match(candidate.name)
            if match and not running(int(match["pid"])):
                stale.append(candidate)
    return stale


@contextlib.contextmanager
def temporary_folder(name: str, where: Path | None = None) -> Iterator[Path]:
    """A working folder named as a temporary of this process, removed when the block ends.

    It is ``<where>/.<name>.<pid>-<random>.part`` (``where``: the system's temporary
    folder), so that, as for files, the folders of the same name left by dead processes
    (SIGKILL, a power cut) are told apart from live ones and removed first.
    """
    import shutil
    import tempfile

    base = Path(where or tempfile.gettempdir()) / name
    for stale in stale_temporaries(base):
        if stale.is_dir():
            shutil.rmtree(stale, ignore_errors=True)
        else:
            remove(stale)
    folder = temporary_sibling(base)
    folder.mkdir()
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@contextlib.contextmanager
def claim(targets: Iterable[Path]) -> Iterator[None]:
    """Hold the run's outputs: refuse a concurrent run, clean what dead runs left.

    Each output's lock is ``.<name>.cloudseg-lock`` beside it, held by this process
    (:func:`_take_lock`) and removed as the block ends. Outputs in a folder that does
    not exist yet (a store or run folder that the command creates with its parents) are
    not locked: a lock file would create the folder.

    Raises:
        OutputConflictError: If another live run holds one of the outputs.
    """
    locks: list[Any] = []
    try:
        for target in sorted({Path(t).expanduser().resolve() for t in targets}):
            if not target.parent.is_dir():  # created by the run itself: nothing to hold yet
                continue
            locks.append(_take_lock(target))
            remove(*stale_temporaries(target))
        yield
    finally:
        for held in reversed(locks):
            _release(held)


#: What a write refused by the file system says, by errno: faults of the disk, not of
#: cloudseg or its input.
WRITE_FAULTS = {
    errno.ENOSPC: "no space left on device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EFBIG: "file too large for the file size limit (ulimit -f)",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
}
#: Free bytes under which a folder counts as full, when a write in it has just failed.
_FULL_BYTES = 1 << 20
#: ``(folder, reason)`` of the writes that failed because the disk was full, in order.
_faults: list[tuple[Path, str]] = []


def _note_write_fault(path: Path) -> None:
    """Record why writing ``path`` failed, when the file system is the cause.

    Called on a temporary file as it is removed after a failure, before the space it
    holds is given back: GDAL and SQLite report a full disk in their own words
    ("TIFFAppendToStrip: Seek error", "cannot create a GeoPackage"), without the errno,
    so the folder's free space and the file's size are what tell.
    """
    try:
        size = path.stat().st_size
        free = shutil.disk_usage(path.parent).free
    except OSError:
        return
    if free < _FULL_BYTES:
        _faults.append((path.parent, WRITE_FAULTS[errno.ENOSPC]))
        return
    limit = _file_size_limit()
    if limit is not None and size >= limit - 65536:
        _faults.append((path.parent, WRITE_FAULTS[errno.EFBIG]))


def _file_size_limit() -> int | None:
    """The process's file size limit (``ulimit -f``) in bytes, None if unlimited."""
    try:
        import resource
    except ImportError:  # Windows
        return None
    soft = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    return None if soft == resource.RLIM_INFINITY else soft


def write_fault(exc: BaseException, since: int = 0) -> tuple[Path | None, str] | None:
    """Whether ``exc`` comes from the file system refusing a write, and where.

    Args:
        exc: The exception a command ended with.
        since: How many faults were recorded before the command began
            (:func:`write_fault_count`); older ones are not the command's.

    Returns:
        ``(folder, reason)``: the folder whose file system refused the write (None if
        unknown) and why ("no space left on device", "disk quota exceeded", ...); None
        when the failure has another cause.
    """
    seen: list[BaseException] = []
    link: BaseException | None = exc
    while link is not None and link not in seen:
        seen.append(link)
        if isinstance(link, OSError) and link.errno in WRITE_FAULTS:
            name = link.filename2 or link.filename
            path = Path(os.fsdecode(name)) if isinstance(name, (str, bytes)) else None
            # Permission refused on a file that exists (and is not a rename's target) is
            # a read, e.g. of an input: not the fault of a write.
            denied = link.errno in (errno.EACCES, errno.EPERM)
            if not (denied and link.filename2 is None and path is not None and path.exists()):
                return (path.parent if path is not None else None), WRITE_FAULTS[link.errno]
        link = link.__cause__ or (None if link.__suppress_context__ else link.__context__)
    if len(_faults) > since:
        return _faults[-1]
    words = " ".join(str(e).lower() for e in seen)
    if "no space left on device" in words or "disk is full" in words:
        return None, WRITE_FAULTS[errno.ENOSPC]
    return None


def write_fault_count() -> int:
    """How many writes have failed for a full disk in this process (see :func:`write_fault`)."""
    return len(_faults)


def remove(*paths: Path) -> None:
    """Remove files (and GDAL's side files beside them) that may or may not exist.

    Removed while an exception is on its way (the cleanup of a failed run), a file is
    first checked for the cause of the failure: a full disk, or the file size limit
    (see :func:`write_fault`).
    """
    failing = sys.exc_info()[1] is not None
    for path in paths:
        if failing:
            _note_write_fault(path)
        for candidate in (path, *(path.with_name(path.name + s) for s in _SIDE_SUFFIXES)):
            with contextlib.suppress(FileNotFoundError):
                candidate.unlink()


@contextlib.contextmanager
def cleanup_on_failure(*paths: Path) -> Iterator[None]:
    """Remove ``paths`` (and GDAL side files) if the block raises, then re-raise."""
    try:
        yield
    except BaseException:
        remove(*paths)
        raise


@contextlib.contextmanager
def atomic_path(target: Path, tag: str = "part") -> Iterator[Path]:
    """Yield a temporary path beside ``target``; rename it onto ``target`` on success.

    On any failure (or cancel) the temporary file is removed and ``target`` is left as
    it was. A block that writes nothing to the path publishes nothing.
    """
    tmp = temporary_sibling(target, tag)
    with cleanup_on_failure(tmp):
        yield tmp
        if tmp.exists():
            tmp.replace(target)


#: How many sets of outputs this process has published (see :func:`published_count`).
_published = [0]


def published_count() -> int:
    """How many times :func:`publish` has completed in this process.

    The command line compares it before and after an interrupt, to say truly whether the
    outputs were already in place.
    """
    return _published[0]


def publish(renames: Sequence[tuple[Path, Path]]) -> None:
    """Rename each ``(temporary, target)`` pair, in order, as one step.

    SIGINT and SIGTERM are held back while the renames run (microseconds), so an
    interrupt cannot leave some outputs new and others old. One that arrives meanwhile
    comes too late to stop the run: the outputs are whole, so it is dropped and the run
    ends as a success (it would otherwise report a cancel that did not happen).
    """
    held = {signal.SIGINT, signal.SIGTERM}
    main = (
        threading.current_thread() is threading.main_thread()
        and hasattr(signal, "pthread_sigmask")  # not on Windows
    )
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, held) if main else None
    try:
        for tmp, target in renames:
            tmp.replace(target)
        _published[0] += 1
    finally:
        if previous is not None:
            done = all(not tmp.exists() for tmp, _ in renames)
            while done and signal.sigpending() & held:
                signal.sigwait(signal.sigpending() & held)  # consume it
            signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def file_sha256(path: Path) -> str:
    """The SHA-256 of a file's bytes, read in chunks (hex)."""
    import hashlib

    with Path(path).open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def write_bytes(target: Path, data: bytes) -> None:
    """Write ``data`` to ``target`` atomically."""
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)
