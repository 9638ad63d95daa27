"""Atomic writes, writes and deletes that stay inside their folder, and one process per folder.

Atomic: temp file in the same folder, fsync, rename, fsync the folder. A reader never sees a
half-written file, and a killed process leaves either the old file or the new one, never a mixture.

Inside: `inside(folder, path)` resolves symlinks and raises `OutsideFolderError` for anything that
lands outside `folder`; `delete_inside` never deletes through a symlink; `check_tree_inside`
refuses a folder holding a symlink that leads out of it (docs/security.md).

One process: `folder_lock(folder)` holds an OS lock (`fcntl.flock`) on `folder/.condense.lock`;
a second holder gets `FolderBusyError` naming the first one's PID.
"""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from condense.core.errors import InputFileError, RunError
from condense.core.jsonio import dumps_strict, plain_default


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_MODE = 0o666 & ~_umask()  # what open() would give a new file; mkstemp alone gives 0600


def fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path next to `path`; on success fsync it and rename it onto `path`.

    Use for writers that want a file name (safetensors, onnx, torch.save). On error the
    temporary file is removed and `path` is untouched.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp_path, _MODE)
        os.replace(tmp_path, target)
        fsync_dir(target.parent)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        raise


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike[str], obj: Any) -> Path:
    """Strict JSON (NaN / inf written as null with a warning: `condense.core.jsonio`), written atomically."""
    return atomic_write_text(path, dumps_strict(obj, default=_json_default, what=str(path), indent=2) + "\n")


def write_json_strict(path: str | os.PathLike[str], obj: Any, *, default: Callable[[Any], Any] | None = plain_default,
                      what: str | None = None) -> Path:
    """Write `obj` as strict, indented JSON to `path` atomically (NaN / inf as null, warned)."""
    text = dumps_strict(obj, default=default, what=what or str(path), indent=2)
    return atomic_write_text(path, text + "\n")


def _json_default(o: Any) -> Any:
    if hasattr(o, "to_dict"):
        return o.to_dict()
    if isinstance(o, Path):
        return str(o)
    try:
        import numpy as np

        if isinstance(o, np.generic):
            return o.item()
        if isinstance(o, np.ndarray):
            return o.tolist()
    except ImportError:  # pragma: no cover
        pass
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def read_json(path: str | os.PathLike[str], what: str = "JSON file") -> Any:
    """Read a JSON file; a missing or unparsable file is an InputFileError naming it and `what` it is."""
    p = Path(path)
    if not p.is_file():
        raise InputFileError(f"{p}: {what} not found")
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputFileError(f"{p}: {what} is not valid JSON ({e})") from None


def append_jsonl(path: str | os.PathLike[str], record: dict[str, Any]) -> None:
    """Append one JSON line (a log; flushed and fsynced so a crash loses at most this line)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    line = dumps_strict(record, default=_json_default, what=str(p))
    with open(p, "a", encoding="utf-8") as fh:
        fh.write(line + "\n")
        fh.flush()
        os.fsync(fh.fileno())


# --- paths stay inside their folder --------------------------------------------------------------

class OutsideFolderError(InputFileError):
    """A write or delete would land outside the folder it belongs to (through `..`, an absolute
    path or a symlink); nothing was written or deleted there (exit code 3)."""


def inside(folder: str | os.PathLike[str], path: str | os.PathLike[str]) -> Path:
    """`path` (an ordinary path, e.g. `folder / name`) with every symlink resolved; raise
    `OutsideFolderError` unless it is `folder` itself or lies under it (also resolved).

    The path need not exist yet: `Path.resolve()` follows the symlinks of the parts that do, so a
    symlinked sub-folder pointing elsewhere is caught before anything is written through it.
    """
    shown = Path(path)
    try:
        root, real = Path(folder).resolve(), shown.resolve()
    except (OSError, ValueError, RuntimeError) as e:  # a symlink loop, a NUL byte in the name
        raise OutsideFolderError(f"{shown!s:.300}: cannot resolve it ({e}); refusing to write or delete there "
                                 "(nothing was changed)") from None
    if real != root and root not in real.parents:
        raise OutsideFolderError(f"{shown}: resolves to {real}, outside {root}; refusing to write or delete there "
                                 "(nothing was changed)")
    return real


def check_tree_inside(folder: str | os.PathLike[str], sub: str | os.PathLike[str] | None = None) -> None:
    """Refuse (`OutsideFolderError`) when `sub` (default: `folder`) or anything under it is a
    symlink whose target lies outside `folder`: a folder about to be written into must not lead out."""
    start = inside(folder, sub if sub is not None else folder)
    if not start.is_dir():
        return
    for base, dirs, files in os.walk(start):  # os.walk does not descend into symlinked folders
        for name in [*dirs, *files]:
            p = Path(base) / name
            if p.is_symlink():
                inside(folder, p)


def deletable(folder: str | os.PathLike[str], name: str | os.PathLike[str]) -> Path:
    """The path of the file `name` of `folder`, checked for deleting: refused with
    `OutsideFolderError` when it resolves outside `folder`, is itself a symlink (a delete never
    goes through a link) or is a folder. It need not exist."""
    p = Path(folder) / name
    inside(folder, p.parent)
    if p.is_symlink():
        raise OutsideFolderError(f"{p}: is a symlink (to {os.readlink(p)}); refusing to delete through it "
                                 "(nothing was changed)")
    inside(folder, p)
    if p.exists() and not p.is_file():
        raise OutsideFolderError(f"{p}: is not a file; refusing to delete it (nothing was changed)")
    return p


def delete_inside(folder: str | os.PathLike[str], name: str | os.PathLike[str]) -> bool:
    """Delete the file `name` of `folder` after the checks of `deletable`; False when it is not there."""
    p = deletable(folder, name)
    try:
        p.unlink()
    except FileNotFoundError:
        return False
    return True


# --- one process per folder ------------------------------------------------------------------------

LOCK_NAME = ".condense.lock"

try:  # POSIX
    import fcntl as _fcntl
except ImportError:  # pragma: no cover - Windows
    _fcntl = None  # type: ignore[assignment]


class FolderBusyError(RunError):
    """Another process holds the folder's lock (exit code 4); nothing was changed."""

    def __init__(self, folder: Path, pid: int | None) -> None:
        who = f"process {pid}" if pid else "another process"
        super().__init__(f"{folder}: {who} is running in this folder (it holds {folder / LOCK_NAME}); one run at a "
                         "time per folder: wait for it to finish, or stop it (nothing was changed)")
        self.folder, self.pid = folder, pid


def _read_pid(fd: int) -> int | None:
    try:
        if hasattr(os, "pread"):
            raw = os.pread(fd, 64, 0)
        else:  # pragma: no cover - Windows
            os.lseek(fd, 0, os.SEEK_SET)
            raw = os.read(fd, 64)
    except OSError:
        return None
    text = raw.decode("ascii", "replace").strip()
    return int(text) if text.isdigit() else None


def _pid_alive(pid: int) -> bool:
    if os.name == "nt":  # pragma: no cover - os.kill(pid, 0) would terminate the process there
        import ctypes

        handle = ctypes.windll.kernel32.OpenProcess(0x100000, False, pid)  # SYNCHRONIZE
        if not handle:
            return False
        try:
            return ctypes.windll.kernel32.WaitForSingleObject(handle, 0) == 0x102  # WAIT_TIMEOUT: still running
        finally:
            ctypes.windll.kernel32.CloseHandle(handle)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)


def _open_lock(path: Path, flags: int) -> int:
    """os.open that never follows a symlink planted as the lock file."""
    try:
        return os.open(path, flags | _NOFOLLOW, 0o644)
    except (FileExistsError, FileNotFoundError):
        raise
    except OSError:
        if path.is_symlink():
            raise OutsideFolderError(f"{path}: is a symlink; refusing to use it as the folder's lock file") from None
        raise


#: seconds to wait for a lock whose recorded holder has exited: processes it forked (e.g. data
#: loader workers) share its lock until they notice and exit too
ORPHAN_WAIT_S = 30.0


def _flock(path: Path) -> int:
    """Open and lock `path` (fcntl.flock, non-blocking); the fd. The kernel drops the lock when the
    process dies, so a file left by a killed run does not block."""
    import time

    assert _fcntl is not None
    deadline = None
    while True:
        fd = _open_lock(path, os.O_RDWR | os.O_CREAT)
        try:
            _fcntl.flock(fd, _fcntl.LOCK_EX | _fcntl.LOCK_NB)
        except (BlockingIOError, PermissionError):
            pid = _read_pid(fd)
            os.close(fd)
            if pid is not None and pid != os.getpid() and not _pid_alive(pid):
                deadline = deadline or time.monotonic() + ORPHAN_WAIT_S
                if time.monotonic() < deadline:  # the holder is gone, its forked children still hold it
                    time.sleep(0.2)
                    continue
            raise FolderBusyError(path.parent, pid) from None
        except BaseException:
            os.close(fd)
            raise
        try:  # a holder that was releasing may have unlinked the file we locked: then lock the new one
            same = os.path.samestat(os.fstat(fd), os.stat(path, follow_symlinks=False))
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)


def _pidfile(path: Path) -> int:
    """Without fcntl: create `path` exclusively; a file naming a process that is gone is stale."""
    for _ in range(2):
        try:
            return _open_lock(path, os.O_RDWR | os.O_CREAT | os.O_EXCL)
        except FileExistsError:
            try:
                fd = _open_lock(path, os.O_RDONLY)
            except FileNotFoundError:
                continue
            pid = _read_pid(fd)
            os.close(fd)
            if pid is not None and not _pid_alive(pid):
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
                continue
            raise FolderBusyError(path.parent, pid) from None
    raise FolderBusyError(path.parent, None)


@contextlib.contextmanager
def folder_lock(folder: str | os.PathLike[str]) -> Iterator[Path]:
    """Hold `folder`'s lock file (`LOCK_NAME`, which records this process's PID) for the block;
    a second holder gets `FolderBusyError` naming the first one's PID. Released (and the file
    removed) on exit, on an exception and, through the kernel, when the process is killed.

    POSIX: `fcntl.flock` on the file. Elsewhere: an O_EXCL pid file, taken over when the process it
    names is gone.
    """
    root = Path(folder)
    root.mkdir(parents=True, exist_ok=True)
    path = root / LOCK_NAME
    fd = _flock(path) if _fcntl is not None else _pidfile(path)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode("ascii"))
        yield path
    finally:
        with contextlib.suppress(OSError):
            path.unlink()  # while still locked: a waiting process then locks a fresh file (see _flock)
        os.close(fd)
