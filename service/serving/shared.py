"""Shared snapshot: the served model handed from the trainer's process to its HTTP workers.

The trainer's process writes the served snapshot (`portable` form, pickled) to one file in a
private directory whenever the served snapshot changes, replacing it atomically (temp file,
then rename); each worker checks the file's identity every `POLL_S` and loads a new one. A
worker therefore serves exactly what the trainer serves (its serve policy, pins and
versions), at most a few milliseconds later, and a slow or restarted worker never holds the
trainer back. The directory is on a memory-backed file system where there is one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import pickle
import shutil
import stat
import tempfile
import time
from pathlib import Path

from service.serving.snapshot import (
    ModelSnapshot,
    SnapshotHolder,
    portable,
    snapshot_from_portable,
)

log = logging.getLogger(__name__)

POLL_S = 0.002
FILE = "snapshot.pickle"


PREFIX = "streamfit-"
OWNER = "owner.pid"
STALE_WITHOUT_OWNER_S = 3600.0


def private_directory(base: Path | None = None) -> Path:
    """A new directory only this user can read, in memory where the system offers it.

    It names its owner (`owner.pid`): a trainer stopped cleanly removes its directory, one
    killed (SIGKILL, OOM) cannot, so each new one first removes those whose owner is gone.
    """
    if base is None:
        shm = Path("/dev/shm")
        base = shm if shm.is_dir() and os.access(shm, os.W_OK) else Path(tempfile.gettempdir())
    remove_stale_directories(base)
    directory = Path(tempfile.mkdtemp(prefix=PREFIX, dir=base))
    (directory / OWNER).write_text(f"{os.getpid()}\n")
    return directory


def remove_stale_directories(base: Path) -> list[Path]:
    """Remove this user's private directories under `base` whose owning process is gone
    (or, without an owner file, untouched for an hour); the ones removed."""
    removed: list[Path] = []
    try:
        candidates = [p for p in base.iterdir() if p.name.startswith(PREFIX)]
    except OSError:
        return removed
    for directory in candidates:
        try:
            status = directory.lstat()
            if not stat.S_ISDIR(status.st_mode) or status.st_uid != os.getuid():
                continue
            if not _owner_gone(directory, status.st_mtime):
                continue
        except OSError:
            continue
        shutil.rmtree(directory, ignore_errors=True)
        removed.append(directory)
        log.info("removed a stale shared directory", extra={"path": str(directory)})
    return removed


def _owner_gone(directory: Path, mtime: float) -> bool:
    try:
        pid = int((directory / OWNER).read_text())
    except FileNotFoundError:
        return time.time() - mtime > STALE_WITHOUT_OWNER_S
    except ValueError:
        return False  # being written: its owner is starting now
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False  # alive, another user's
    return False


class SnapshotWriter:
    """Writes `holder`'s snapshot to `directory` each time it changes (a task it owns)."""

    def __init__(self, holder: SnapshotHolder, directory: Path) -> None:
        self.holder = holder
        self.path = directory / FILE
        self.written = 0
        self._last: ModelSnapshot | None = None
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="streamfit-snapshot-writer")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while True:
            current = self.holder.current
            if current is not None and current is not self._last:
                try:
                    await asyncio.to_thread(self.write, current)
                except OSError:
                    log.exception("could not hand the served model to the HTTP workers")
                self._last = current
            await asyncio.sleep(POLL_S)

    def write(self, snapshot: ModelSnapshot) -> None:
        """Replace the file with `snapshot` (readers see the old file or the new one)."""
        data = pickle.dumps(portable(snapshot), protocol=pickle.HIGHEST_PROTOCOL)
        fd, temp = tempfile.mkstemp(dir=self.path.parent, prefix=".snapshot-")
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(data)
            os.replace(temp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temp)
            raise
        self.written += 1


class SnapshotReader:
    """Loads the file `SnapshotWriter` keeps into `holder` whenever it is replaced."""

    def __init__(self, directory: Path, holder: SnapshotHolder) -> None:
        self.path = directory / FILE
        self.holder = holder
        self._identity: tuple[int, int] | None = None
        self._numpy_only = False  # known after the first load

    def refresh(self) -> bool:
        """Load the file if it changed since the last call; True if a new snapshot is held."""
        identity = self._changed()
        if identity is None:
            return False
        self._load(identity)
        return True

    def _changed(self) -> tuple[int, int] | None:
        try:
            status = os.stat(self.path)
        except FileNotFoundError:
            return None
        identity = (status.st_ino, status.st_mtime_ns)
        return None if identity == self._identity else identity

    def _load(self, identity: tuple[int, int]) -> None:
        with open(self.path, "rb") as source:
            data = pickle.load(source)  # written by our own trainer process, never by a client
        self.holder.serve(snapshot_from_portable(data))
        self._identity = identity
        self._numpy_only = data["activations"] is not None

    async def follow(self) -> None:
        """Check every `POLL_S` until cancelled. A Dense-only model loads in well under a
        millisecond, on the loop; any other one on a thread (the first brings TensorFlow,
        seconds to import, which must not stall requests)."""
        while True:
            try:
                identity = self._changed()
                if identity is not None and self._numpy_only:
                    self._load(identity)
                elif identity is not None:
                    await asyncio.to_thread(self._load, identity)
            except Exception:
                log.exception("could not load the served model from the trainer")
            await asyncio.sleep(POLL_S)
