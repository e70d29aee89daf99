"""Settings users bring from their old trainers, translated faithfully (issue 17): each test fails on the old code."""

from __future__ import annotations

import pytest

from vaekit.config.load import load_config
from vaekit.config.schema import StageConfig
from vaekit.errors import ConfigError
from vaekit.pipeline.stages import StageClock


def test_threshold_without_metric_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"^stages.0.metric: required with threshold 0.5"):
        load_config({"stages": [{"name": "a", "steps": 5, "threshold": 0.5}]})


def test_validate_names_every_limit_of_a_stage() -> None:
    from vaekit.pipeline.summary import summarize

    cfg = load_config({"stages": [{"name": "a", "epochs": 4, "max_steps": 100}]})
    assert "length   4 epochs (at most 100 steps, whichever comes first)" in summarize(cfg, build=False)


def test_plateau_window_counts_optimizer_steps() -> None:
    spec = StageConfig(name="a", metric="train/loss", plateau_window=1000, plateau_threshold=0.01, max_steps=10**6)
    clock = StageClock(spec, 10, smoothing=1)
    for step in range(50, 1001, 50):  # logged every 50 steps, flat: 20 observations span 950 steps
        clock.observe("train/loss", 1.0, step)
    assert clock.metric_done() is None
    clock.observe("train/loss", 1.0, 1050)  # now 1000 steps apart
    assert "over the last 1000 steps" in clock.metric_done()
