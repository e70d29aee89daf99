"""The error family a user can act on. Torch-free, so the CLI and ``config/`` can import it cheaply.

Each error is raised where the problem is known, carries one line that names the key, file or path to change, and
is printed once at the edge (the CLI) with its ``label`` and ``exit_code``. Anything else is a bug in vaekit.
"""

from __future__ import annotations


class VaekitError(Exception):
    """Base of every user-facing error: one line, a label and an exit code."""

    label = "error"
    exit_code = 2


class ConfigError(VaekitError, ValueError):
    """A configuration problem, described in one line that names the key."""

    label = "config error"


class DataError(VaekitError, ValueError):
    """A data file is missing, corrupt or unreadable; the message names the file and the problem."""

    label = "data error"


class MissingWeightsError(VaekitError, RuntimeError):
    """Pretrained weights are needed and not on disk (and cannot be downloaded here)."""

    label = "weights error"


class ModelProtocolError(VaekitError, TypeError):
    """A user model broke the encode/decode protocol; the message says which method returned what."""

    label = "model error"


class CheckpointError(VaekitError, RuntimeError):
    """A checkpoint or exported file is missing, incomplete, corrupt or unsafe; the message names the file."""

    label = "checkpoint error"


class RunDirError(VaekitError, RuntimeError):
    """The run directory cannot be used (locked by another process, unwritable, full disk)."""

    label = "run error"


class NonFiniteLossError(VaekitError, RuntimeError):
    """A loss term or weight became NaN/Inf; the last good checkpoint is left intact."""

    label = "stopped"
    exit_code = 3


def user_message(err: BaseException) -> tuple[str, int] | None:
    """``(line, exit_code)`` for a user-facing error, else None (a bug: let the traceback through)."""
    if isinstance(err, VaekitError):
        text = " ".join(str(err).split("\n")).strip() or type(err).__name__
        return f"{err.label}: {text}", err.exit_code
    return None


def raised_in_user_code(err: BaseException) -> bool:
    """Whether ``err`` was raised by the user's own code (their ``encode``, ``Dataset`` or hook) rather than by
    vaekit: the innermost frame that is neither a library's nor the standard library's is not vaekit's. Such an
    exception keeps its type and traceback; vaekit never relabels it as a config error."""
    import os
    import sysconfig
    import traceback

    package = os.path.dirname(os.path.abspath(__file__)) + os.sep
    paths = sysconfig.get_paths()
    libraries = tuple({os.path.abspath(paths[k]) + os.sep for k in ("stdlib", "platstdlib", "purelib", "platlib")})
    for frame in reversed(traceback.extract_tb(err.__traceback__)):
        file = os.path.abspath(frame.filename)
        if file.startswith(package):
            return False
        if file.startswith(libraries) or frame.filename.startswith("<frozen"):
            continue
        return True
    return False
