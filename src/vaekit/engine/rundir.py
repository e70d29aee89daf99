"""The run directory: created once data and model are known to work, owned by one process at a time.

The owner holds an exclusive ``flock`` on ``{run_dir}/.lock`` (the file records its pid and host). The kernel
drops the lock when the process exits, however it exits, so a lock left by a killed run is stale and is taken
over; a live owner makes a second process stop with one line.
"""

from __future__ import annotations

import errno
import fcntl
import os
import shutil
import socket
import time
from pathlib import Path

from vaekit.errors import ConfigError, RunDirError

LOCK = ".lock"


class RunLock:
    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / LOCK
        self.fd: int | None = None

    def acquire(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            os.close(fd)
            if err.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            owner = self.path.read_text(errors="replace").strip() or "another process"
            raise RunDirError(
                f"run directory {str(self.path.parent)!r} is in use by {owner}; wait for it to finish or stop it, "
                "or choose another run.name"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}".encode())
        self.fd = fd

    def release(self) -> None:
        if self.fd is not None:
            try:
                os.ftruncate(self.fd, 0)
                fcntl.flock(self.fd, fcntl.LOCK_UN)
            finally:
                os.close(self.fd)
                self.fd = None


def prepare_run_dir(run_dir: Path, resume: bool, overwrite: bool) -> RunLock:
    """Create (or reuse) ``run_dir`` and lock it; refuse to replace a trained run unless ``overwrite``.

    What the directory holds is looked at only once the lock is held: a run of the same name that started at the
    same moment, and has checkpointed since, is never mistaken for a failed one and deleted.

    Raises:
        RunDirError: the directory cannot be created or written, or another process owns it.
        ConfigError: it holds a trained run (resume it, or overwrite) or is not a vaekit run directory.
    """
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        lock = RunLock(run_dir)
        lock.acquire()
    except RunDirError:
        raise
    except OSError as err:
        raise RunDirError(f"run.dir: cannot create or write {str(run_dir)!r} ({err.strerror or err})") from None
    if resume:
        return lock
    others = [p for p in run_dir.iterdir() if p.name != LOCK]
    if not others:  # new (or only ever locked): ours
        return lock
    trained = any((run_dir / "checkpoints").glob("step_*")) or (run_dir / "model.safetensors").exists()
    if trained and not overwrite:
        lock.release()
        raise ConfigError(
            f"run.name: run directory {str(run_dir)!r} already holds a run; resume it with "
            f"`vaekit train --resume {run_dir}`, choose another run.name, or set run.overwrite=true"
        )
    if not (run_dir / "config.yaml").is_file():
        lock.release()
        raise ConfigError(f"run.name: {str(run_dir)!r} exists and is not a vaekit run directory")
    try:  # a run that never checkpointed (it failed early), or overwrite=true; the lock stays
        for path in others:
            shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
    except OSError as err:
        lock.release()
        raise RunDirError(f"run.dir: cannot clear {str(run_dir)!r} ({err.strerror or err})") from None
    return lock


def new_run_dir(root: Path, name: str | None, source: str, arch: str) -> Path:
    if name:
        return root / name
    base = f"{source}-{arch}-{time.strftime('%Y%m%d-%H%M%S')}"
    candidate, i = root / base, 1
    while candidate.exists():
        candidate, i = root / f"{base}-{i}", i + 1
    return candidate
