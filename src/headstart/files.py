"""Files that a later step trusts: written whole or not at all; folders that one process writes at a time.

Weights, run.json, history.csv, summaries, reports, cache entries and exports are read back by other steps,
often by another process, hours later. A crash (SIGKILL, power loss, a full disk) can land at any instant, so
nothing is written in place: a writer fills a temp file beside its target (the same folder, so the same
filesystem), flushes and fsyncs it, and `os.replace`s it over the target, which POSIX makes atomic. A reader
sees the old file or the new one, never half of either. The folder is fsynced after the rename, so the new name
survives a power cut as well as a killed process.

Temp files are named `.<stem>.tmp-<host>-<pid>-<random><suffix>`: hidden; the writer's machine (a hash of its
host name) and pid inside, so a later process on the same machine can tell that the writer is dead and remove
what it left (a pid means nothing on another machine sharing the folder, so those temps are left alone); the
target's suffix last (numpy appends `.npy` to a name without it; the ONNX and torch.export writers read it).

Two processes pointed at the same folder are kept apart with an OS-level lock (`fcntl.flock` through the
`filelock` library) on a file inside it. The kernel drops such a lock when its process exits, however it
exits, so a SIGKILLed holder never leaves a stale lock behind. The holder writes its pid into the lock file, so
the process that finds the folder busy can say which process to wait for.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock, Timeout

from headstart.errors import HeadstartError

LOCK_NAME = ".headstart.lock"
HOST = hashlib.blake2b(socket.gethostname().encode(), digest_size=4).hexdigest()
_TEMP = re.compile(r"^\.(?P<stem>.+)\.tmp-(?P<host>[0-9a-f]{8})-(?P<pid>\d+)-[0-9a-f]{8}(?P<suffix>\.[^.]*)?$")


# --------------------------------------------------------------------------- atomic writes
def temp_path(path: Path) -> Path:
    """A fresh temp name beside `path`, unique per process and per call (two threads never share one)."""
    return path.with_name(f".{path.stem}.tmp-{HOST}-{os.getpid()}-{secrets.token_hex(4)}{path.suffix}")


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """For writers that want a file name (safetensors, numpy, ONNX, torch.export): yields a temp path beside
    `path`; when the block ends normally the temp is fsynced and renamed onto `path`, when it raises the temp is
    removed and `path` is left as it was."""
    path = Path(path)
    tmp = temp_path(path)
    try:
        yield tmp
        _fsync_file(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_folder(path.parent)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(data)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, data: object, indent: int | None = 2) -> None:
    """JSON that also takes paths and numpy/torch numbers (run records are full of them)."""
    atomic_write_text(path, json.dumps(data, indent=indent, default=json_default) + "\n")


def json_default(obj: object) -> object:
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "tolist"):  # numpy and torch scalars and arrays
        return obj.tolist()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def _fsync_file(path: Path) -> None:
    """Data on disk before the rename: otherwise a power cut can leave the new name on an empty file. A
    read-only descriptor is enough on Linux, so this works for files written by other libraries too."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_folder(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:  # some platforms cannot open a folder; the rename itself is still atomic there
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# --------------------------------------------------------------------------- what killed writers left
def temp_writer(path: Path) -> tuple[str, int] | None:
    """(host, pid) of the process that wrote a temp file, or None if `path` is no temp file of `atomic_path`."""
    match = _TEMP.match(path.name)
    return (match["host"], int(match["pid"])) if match else None


def is_stale_temp(path: Path) -> bool:
    """A temp file whose writer ran on this machine and no longer runs: it was killed mid-write."""
    writer = temp_writer(path)
    return writer is not None and writer[0] == HOST and not process_alive(writer[1])


def process_alive(pid: int) -> bool:
    """Whether a process with this pid exists on this machine (signal 0 checks without sending anything)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, under another user
        return True
    return True


def remove_stale_temps(folder: str | Path) -> list[Path]:
    """Delete the temp files in `folder` whose writer no longer runs (`is_stale_temp`); the temps of live
    writers, and of writers on other machines, stay. Returns what was removed."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = [Path(entry.path) for entry in os.scandir(folder) if is_stale_temp(Path(entry.name))]
    for path in removed:
        path.unlink(missing_ok=True)
    return removed


# --------------------------------------------------------------------------- locks
class InUse(HeadstartError):
    """Another process holds the lock on `path`; `pid` is that process when it recorded itself."""

    def __init__(self, path: Path, pid: int | None, hint: str = ""):
        self.path, self.pid = path, pid
        holder = f"pid {pid}" if pid else "pid unknown"
        super().__init__(f"{path} is in use by another headstart process ({holder})" + (f"; {hint}" if hint else ""))


def lock_holder(lock_file: str | Path) -> int | None:
    """The pid the current (or last) holder wrote into `lock_file`, if any."""
    try:
        text = Path(lock_file).read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _record_holder(fd: int) -> None:
    """filelock's on_acquired hook: the lock file says who holds it (filelock leaves its content to us)."""
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)


@contextmanager
def exclusive(lock_file: str | Path, *, timeout: float = -1, what: str | Path | None = None, hint: str = "",
              on_wait: Callable[[int | None], None] | None = None) -> Iterator[None]:
    """Hold an OS-level lock on `lock_file` for the block. If another process holds it: call `on_wait(pid)` once
    and wait up to `timeout` seconds (negative: as long as it takes; 0: not at all), then raise `InUse` naming
    `what` (default: the lock file) and the holder's pid."""
    lock_file = Path(lock_file)
    lock = FileLock(lock_file, on_acquired=_record_holder)
    try:
        lock.acquire(blocking=False)
    except Timeout:
        if timeout == 0:
            raise InUse(Path(what or lock_file), lock_holder(lock_file), hint) from None
        if on_wait is not None:
            on_wait(lock_holder(lock_file))
        try:
            lock.acquire(timeout=timeout)
        except Timeout:
            raise InUse(Path(what or lock_file), lock_holder(lock_file), hint) from None
    try:
        yield
    finally:
        lock.release()


@contextmanager
def folder_lock(folder: str | Path, *, timeout: float = 0, hint: str = "",
                on_wait: Callable[[int | None], None] | None = None) -> Iterator[Path]:
    """Only one process writes into `folder` at a time (see `exclusive`; by default a busy folder raises at
    once). Creates the folder; once the lock is held, removes the temp files that killed writers left in it.
    Yields the folder."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with exclusive(folder / LOCK_NAME, timeout=timeout, what=folder, hint=hint, on_wait=on_wait):
        remove_stale_temps(folder)
        yield folder
