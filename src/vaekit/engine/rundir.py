"""The run directory: created once data and model are known to work, owned by one process at a time.

A directory is vaekit's own when it holds the marker ``.vaekit-run`` (written when vaekit created or first used
it, with a format version), or — a run made before the marker existed — a checkpoint vaekit wrote
(``checkpoints/step_*/state.json``). Only such a directory is ever reused, resumed or cleared, and clearing it
(``run.overwrite``, or a run that failed before its first checkpoint) removes only the files vaekit writes there:
anything else the user put in it stays.

The owner holds an exclusive ``flock`` on ``{run_dir}/.lock`` (the file records its pid and host). The kernel
drops the lock when the process exits, however it exits, so a lock left by a killed run is stale and is taken
over; a live owner makes a second process stop with one line that names the process really holding the lock.
The lock is opened without following a symbolic link, and must be a plain file of its own (not a directory, a
device, a FIFO or a second name of another file); a refused start leaves no ``.lock`` it created behind.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import shutil
import socket
import stat
import time
from pathlib import Path

from vaekit.errors import ConfigError, RunDirError

LOCK = ".lock"
MARKER = ".vaekit-run"
MARKER_FORMAT = 1
OWN_FILES = frozenset({
    MARKER, "config.yaml", "config.yaml.tmp", "data_meta.json", "metrics.jsonl", "model.safetensors",
    "model.safetensors.tmp", "model_config.json", "model.txt", "summary.json", "curves.png", "trackers.json",
    "trackers.json.tmp", "mlflow.db",
})
"""Files vaekit writes at the top of a run directory (the only files ``run.overwrite`` removes)."""
OWN_DIRS = frozenset({"checkpoints", "samples", "tensorboard", "diffusers", "lora", "eval", "export", "wandb",
                      "mlartifacts"})
"""Directories vaekit writes in a run directory (removed whole by ``run.overwrite``)."""


# ------------------------------------------------------------------------------------------ ownership
def marker_format(run_dir: Path) -> int | None:
    """The format of the ``.vaekit-run`` marker, or None when there is no readable marker (a symlink or a
    non-regular file is no marker)."""
    path = run_dir / MARKER
    try:
        if not stat.S_ISREG(path.lstat().st_mode):
            return None
        data = json.loads(path.read_text())
        return int(data["format"]) if isinstance(data, dict) and isinstance(data.get("format"), int) else None
    except (OSError, ValueError, UnicodeDecodeError):
        return None


def legacy_run(run_dir: Path) -> bool:
    """A run written before the marker: it holds a checkpoint whose ``state.json`` vaekit wrote."""
    for state in (run_dir / "checkpoints").glob("step_*/state.json"):
        with contextlib.suppress(OSError, ValueError, UnicodeDecodeError):
            data = json.loads(state.read_text())
            if isinstance(data, dict) and "step" in data and "stage_index" in data:
                return True
    return False


def is_run_dir(run_dir: Path) -> bool:
    """Whether ``run_dir`` is a directory vaekit made its own (its marker, or a checkpoint it wrote)."""
    return run_dir.is_dir() and (marker_format(run_dir) is not None or legacy_run(run_dir))


def write_marker(run_dir: Path) -> None:
    path = run_dir / MARKER
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o644)
    try:
        os.write(fd, (json.dumps({"format": MARKER_FORMAT, "tool": "vaekit"}) + "\n").encode())
    finally:
        os.close(fd)


def _check_marker(run_dir: Path) -> None:
    fmt = marker_format(run_dir)
    if fmt is not None and fmt > MARKER_FORMAT:
        raise ConfigError(
            f"run.name: {str(run_dir)!r} was made by a newer vaekit (run-directory format {fmt}, this one reads "
            f"{MARKER_FORMAT}); upgrade vaekit or choose another run.name"
        )


# ------------------------------------------------------------------------------------------ the lock
class RunLock:
    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / LOCK
        self.fd: int | None = None
        self.created = False

    def acquire(self) -> None:
        """Lock ``.lock`` (created if absent). A symbolic link, a non-regular file or a second name of another
        file is refused; a lock held by a live process is refused naming that process."""
        _refuse_odd_lock(self.path)
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_NONBLOCK, 0o644)
                created = True
            except FileExistsError:
                try:
                    fd = os.open(self.path, os.O_RDWR | os.O_NOFOLLOW | os.O_NONBLOCK)
                except FileNotFoundError:
                    continue  # removed in between by a refused start: create it
                except OSError as err:
                    _refuse_odd_lock(self.path)
                    raise RunDirError(f"run.dir: cannot open the lock {str(self.path)!r} ({err.strerror or err})") from None
                created = False
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode) or info.st_nlink != 1:
                os.close(fd)
                _refuse_odd_lock(self.path)
                raise RunDirError(f"run.dir: the lock {str(self.path)!r} is not a plain file of its own; remove it")
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as err:
                os.close(fd)
                if err.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise
                raise RunDirError(
                    f"run directory {str(self.path.parent)!r} is in use by {lock_holder(self.path, info)}; wait for "
                    "it to finish or stop it, or choose another run.name"
                ) from None
            try:  # the file may have been removed (a refused start) between open and flock: lock the new one
                same = os.stat(self.path, follow_symlinks=False).st_ino == info.st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}".encode())
        self.fd, self.created = fd, created

    def release(self, refused: bool = False) -> None:
        """Unlock; ``refused``: the start was refused, so a lock file this process created is removed."""
        if self.fd is not None:
            try:
                if refused and self.created:
                    with contextlib.suppress(OSError):
                        os.unlink(self.path)
                else:  # the run's own lock file (checked when taken): emptied, so it names no stale owner
                    os.ftruncate(self.fd, 0)
                fcntl.flock(self.fd, fcntl.LOCK_UN)
            finally:
                os.close(self.fd)
                self.fd = None


def _refuse_odd_lock(path: Path) -> None:
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        return
    what = ("a symbolic link" if stat.S_ISLNK(mode) else "a directory" if stat.S_ISDIR(mode)
            else None if stat.S_ISREG(mode) else "not a regular file")
    if what:
        raise RunDirError(f"run.dir: the lock {str(path)!r} is {what} (vaekit does not follow or replace it); remove it")


def lock_holder(path: Path, info: os.stat_result) -> str:
    """The process that really holds the flock on ``path`` (from /proc/locks), with what the lock file says
    when it is that process; else what the file says."""
    text = ""
    with contextlib.suppress(OSError):
        text = path.read_text(errors="replace").strip()[:200]
    holder = None
    with contextlib.suppress(OSError, ValueError, IndexError):
        dev = f"{os.major(info.st_dev):02x}:{os.minor(info.st_dev):02x}:{info.st_ino}"
        for line in Path("/proc/locks").read_text().splitlines():
            parts = line.split()
            if "FLOCK" in parts and dev in parts:
                holder = int(parts[parts.index(dev) - 1])
                break
    if holder is None or holder <= 0:
        return text or "another process"
    if text.startswith(f"pid {holder} "):
        return text
    return f"pid {holder}" + (f" on {socket.gethostname()}" if _alive(holder) else "")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# ------------------------------------------------------------------------------------------ prepare
def prepare_run_dir(run_dir: Path, resume: bool, overwrite: bool) -> RunLock:
    """Create (or reuse) ``run_dir`` and lock it; refuse to replace a trained run unless ``overwrite``.

    What the directory holds is looked at only once the lock is held: a run of the same name that started at the
    same moment, and has checkpointed since, is never mistaken for a failed one and deleted.

    Raises:
        RunDirError: the directory cannot be created or written, its lock is odd, or another process owns it.
        ConfigError: it holds a trained run (resume it, or overwrite) or is not a vaekit run directory.
    """
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise RunDirError(f"run.dir: cannot create or write {str(run_dir)!r} ({err.strerror or err})") from None
    if not _ours_or_empty(run_dir):  # before the lock: a foreign directory gets no .lock from us
        raise _foreign(run_dir)
    lock = RunLock(run_dir)
    try:
        lock.acquire()
    except RunDirError:
        raise
    except OSError as err:
        raise RunDirError(f"run.dir: cannot create or write {str(run_dir)!r} ({err.strerror or err})") from None
    try:
        _claim(run_dir, resume, overwrite)
    except BaseException:
        lock.release(refused=True)
        raise
    return lock


def _ours_or_empty(run_dir: Path) -> bool:
    return is_run_dir(run_dir) or not [p for p in run_dir.iterdir() if p.name != LOCK]


def _foreign(run_dir: Path) -> ConfigError:
    return ConfigError(
        f"run.name: {str(run_dir)!r} exists and is not a vaekit run directory (it has no {MARKER} marker); "
        "choose another run.name or run.dir — vaekit never writes into or clears a directory it did not create"
    )


def _claim(run_dir: Path, resume: bool, overwrite: bool) -> None:
    """With the lock held: make sure the directory is ours, mark it, and clear it when starting afresh."""
    _check_marker(run_dir)
    others = [p for p in run_dir.iterdir() if p.name not in (LOCK, MARKER)]
    ours = marker_format(run_dir) is not None or legacy_run(run_dir)
    if others and not ours:
        raise _foreign(run_dir)
    if others and not resume:
        trained = any((run_dir / "checkpoints").glob("step_*")) or (run_dir / "model.safetensors").exists()
        if trained and not overwrite:
            raise ConfigError(
                f"run.name: run directory {str(run_dir)!r} already holds a run; resume it with "
                f"`vaekit train --resume {run_dir}`, choose another run.name, or set run.overwrite=true"
            )
        try:  # a run that never checkpointed (it failed early), or overwrite=true: vaekit's own files only
            for path in others:
                if path.name in OWN_DIRS and path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path)
                elif path.name in OWN_FILES or (path.name in OWN_DIRS and path.is_symlink()):
                    path.unlink()
        except OSError as err:
            raise RunDirError(f"run.dir: cannot clear {str(run_dir)!r} ({err.strerror or err})") from None
    try:
        if marker_format(run_dir) is None:
            write_marker(run_dir)
    except OSError as err:
        raise RunDirError(f"run.dir: cannot create or write {str(run_dir)!r} ({err.strerror or err})") from None


def new_run_dir(root: Path, name: str | None, source: str, arch: str) -> Path:
    if name:
        return root / name
    base = f"{source}-{arch}-{time.strftime('%Y%m%d-%H%M%S')}"
    candidate, i = root / base, 1
    while candidate.exists():
        candidate, i = root / f"{base}-{i}", i + 1
    return candidate
