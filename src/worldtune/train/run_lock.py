"""One training run per run directory: an exclusive `flock` on `RUN_DIR/.lock`.

Two runs writing the same checkpoints corrupt each other (the second dies deep in the checkpoint
writer). The lock is an advisory `fcntl.flock` held on an open file for the whole run: the kernel
drops it when the process ends, however it ends (SIGKILL included), so a killed run never leaves a
stale lock behind. The file itself stays; it records who holds (or last held) the lock:

    pid 12345
    host gpu-node-3
    since 2025-01-31 14:02:11

Under torchrun only rank 0 locks; `acquire_for_run` broadcasts the outcome so that every rank stops
when rank 0 cannot lock (otherwise the other ranks would wait in the next collective).
Needs a filesystem with flock (local disks and NFSv4 have it).
"""

from __future__ import annotations

import fcntl
import os
import socket
import time
from pathlib import Path

from worldtune.train.distributed import DistEnv, broadcast_object

LOCK_FILE = ".lock"


class RunDirLocked(RuntimeError):
    """Another process holds the run directory's lock; the message names the directory and the holder."""

    def __init__(self, run_dir: Path, holder: str) -> None:
        self.run_dir = Path(run_dir)
        self.holder = holder
        super().__init__(
            f"{self.run_dir}: another run is training in this directory ({holder}); wait for it to end, "
            f"or give this run another output_dir"
        )

    def __reduce__(self) -> tuple:
        return type(self), (self.run_dir, self.holder)


class RunLock:
    """An exclusive lock on `run_dir/.lock`, held until `release` (or the process ends)."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> RunLock:
        """Take the lock without waiting; RunDirLocked if another process has it."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)  # not inherited by child processes
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _describe_holder(fd)
            os.close(fd)
            raise RunDirLocked(self.run_dir, holder) from None
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        _write_holder(fd)
        return self

    def release(self) -> None:
        """Drop the lock; safe to call twice. The file stays (deleting it would race a new run)."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)

    @property
    def held(self) -> bool:
        return self._fd is not None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def acquire_for_run(run_dir: Path, env: DistEnv) -> RunLock | None:
    """Rank 0 locks `run_dir`; if that fails, every rank raises (rank 0 its own error, the others a
    RuntimeError with its message). Returns rank 0's lock, None on the other ranks."""
    lock, failure = None, None
    if env.is_main:
        try:
            lock = RunLock(run_dir).acquire()
        except Exception as err:  # any failure: the other ranks must not wait for a rank that left
            failure = err
    # A collective: every rank learns rank 0's outcome before anything else is written.
    message = broadcast_object(None if failure is None else str(failure), env)
    if failure is not None:
        raise failure
    if message is not None:
        raise RuntimeError(f"rank 0 stopped: {message}")
    return lock


def _write_holder(fd: int) -> None:
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime())
    text = f"pid {os.getpid()}\nhost {socket.gethostname()}\nsince {since}\n"
    os.ftruncate(fd, 0)
    os.pwrite(fd, text.encode(), 0)


def _describe_holder(fd: int) -> str:
    """"pid 12345 on gpu-node-3, since 2025-01-31 14:02:11" from the lock file (what is known of it)."""
    fields: dict[str, str] = {}
    for line in os.pread(fd, 4096, 0).decode(errors="replace").splitlines():
        key, _, value = line.partition(" ")
        fields[key] = value.strip()
    if "pid" not in fields:  # the holder has not written its details yet
        return "holder unknown"
    where = f" on {fields['host']}" if fields.get("host") else ""
    since = f", since {fields['since']}" if fields.get("since") else ""
    return f"pid {fields['pid']}{where}{since}"
