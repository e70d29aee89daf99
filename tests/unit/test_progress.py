"""Progress output (issue 19): a non-interactive log gets one line per log interval, not carriage returns."""

from __future__ import annotations

import io
import sys

import pytest

from vaekit.tracking.tracker import Console


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _drive(console: Console, steps: int, every: int) -> None:
    console.start_stage("stage a", total=steps, initial=0)
    for step in range(1, steps + 1):
        console.update(1, {"loss": 1.0 / step, "kl": 0.5} if step % every == 0 else None)
    console.close()


def test_training_progress_in_a_log_file_is_one_line_per_log_interval(monkeypatch: pytest.MonkeyPatch) -> None:
    err = io.StringIO()  # not a terminal, as under nohup, sbatch or `2> log`
    monkeypatch.setattr(sys, "stderr", err)
    _drive(Console(True, True), steps=1000, every=100)
    text = err.getvalue()
    assert "\r" not in text
    lines = text.splitlines()
    assert len(lines) == 10 and lines[0].startswith("stage a: step 100/1000 loss=0.01 kl=0.5 (")
    assert lines[-1].startswith("stage a: step 1000/1000") and lines[-1].endswith("it/s)")


def test_training_progress_on_a_terminal_is_a_bar(monkeypatch: pytest.MonkeyPatch) -> None:
    err = _Terminal()
    monkeypatch.setattr(sys, "stderr", err)
    _drive(Console(True, True), steps=50, every=10)
    assert "\r" in err.getvalue() and "50/50" in err.getvalue()


def test_no_progress_output_when_disabled(monkeypatch: pytest.MonkeyPatch) -> None:
    err = io.StringIO()
    monkeypatch.setattr(sys, "stderr", err)
    _drive(Console(True, False), steps=50, every=10)
    _drive(Console(False, True), steps=50, every=10)
    assert err.getvalue() == ""
