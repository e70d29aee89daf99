"""Stages: resolution of per-stage configs, the validation rules, and the transition clock."""

from __future__ import annotations

import pytest

from vaekit.config.load import ConfigError, load_config
from vaekit.config.schema import StageConfig
from vaekit.pipeline.stages import StageClock, resolve_stages


def _cfg(stages: list[dict], **extra):
    return load_config({"stages": stages, **extra})


def test_config_without_stages_is_one_stage_named_train() -> None:
    (stage,) = resolve_stages(load_config(None, ["train.max_steps=7"]))
    assert stage.name == "train" and stage.spec.steps == 7


def test_stage_defaults_merge_under_each_stage() -> None:
    cfg = _cfg(
        [{"name": "a", "steps": 2, "optim": {"lr": 0.1}}, {"name": "b", "steps": 3}],
        stage_defaults={"optim": {"name": "sgd", "lr": 0.5}, "train": {"batch_size": 8}},
    )
    a, b = resolve_stages(cfg)
    assert (a.cfg.optim.name, a.cfg.optim.lr, a.cfg.train.batch_size) == ("sgd", 0.1, 8)
    assert (b.cfg.optim.name, b.cfg.optim.lr) == ("sgd", 0.5)


def test_stage_overrides_any_section_without_touching_the_base() -> None:
    cfg = _cfg([{"name": "low", "steps": 1, "data": {"image_size": 32}}, {"name": "high", "steps": 1}])
    low, high = resolve_stages(cfg)
    assert low.cfg.data.image_size == 32 and high.cfg.data.image_size is None


@pytest.mark.parametrize(
    ("stages", "message"),
    [
        ([{"name": "a", "steps": 1}, {"name": "a", "steps": 1}], "stages.1.name: duplicate stage name 'a'"),
        ([{"name": "a", "steps": 1, "freeze": ["encoder"], "unfreeze": ["encoder"]}], "both frozen and unfrozen"),
        ([{"name": "a", "steps": 1, "freeze": ["trunk"]}], "stages.0.freeze: unknown group 'trunk'"),
        ([{"name": "a", "steps": 1, "optim": {"name": "lamb"}}], "stages.0.optim.name: 'lamb' is not allowed"),
        (
            [{"name": "a", "steps": 1, "optim": {"scheduler": {"name": "poly"}}}],
            "stages.0.optim.scheduler.name: 'poly' is not allowed",
        ),
        (
            [{"name": "a", "metric": "val/perceptual", "threshold": 0.1, "max_steps": 5}],
            "stages.0.metric: 'val/perceptual' is never produced by this stage",
        ),
        ([{"name": "a", "steps": 1, "freeze": ["encoder", "decoder"]}], "stages.0: nothing to train"),
        ([{"name": "a", "metric": "val/loss", "threshold": 1.0}], "needs a safety limit"),
        ([{"name": "a"}], "stages.0: no length"),
        ([{"name": "a", "steps": 1, "epochs": 1}], "either epochs or steps"),
        ([{"name": "a", "steps": 1, "speed": 3}], "stages.0.speed: unknown key"),
        (
            [{"name": "a", "steps": 1}, {"name": "b", "steps": 1, "train": {"precision": "bf16"}}],
            "stages.1.train.precision: cannot change between stages",
        ),
        (
            [{"name": "a", "steps": 1}, {"name": "b", "steps": 1, "train": {"ema": {"decay": 0.9}}}],
            "stages.1.train.ema: applies to the whole run",
        ),
    ],
)
def test_invalid_pipelines_are_rejected_in_one_line(stages: list[dict], message: str) -> None:
    with pytest.raises(ConfigError) as err:
        _cfg(stages)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_freezing_carries_over_until_unfrozen() -> None:
    cfg = _cfg(
        [
            {"name": "a", "steps": 1, "freeze": ["encoder"]},
            {"name": "b", "steps": 1},
            {"name": "c", "steps": 1, "unfreeze": ["encoder"]},
        ]
    )
    frozen: set[str] = set()
    seen = []
    for stage in resolve_stages(cfg):
        frozen = stage.frozen_groups(frozen)
        seen.append(sorted(frozen))
    assert seen == [["encoder"], ["encoder"], []]


def test_discriminator_only_stage_is_allowed_when_adversarial() -> None:
    _cfg([{"name": "d", "steps": 1, "freeze": ["encoder", "decoder"], "loss": {"adversarial": {"weight": 1.0}}}])


def test_clock_ends_on_threshold_of_smoothed_metric() -> None:
    clock = StageClock(StageConfig(name="a", metric="train/recon", threshold=5.0, max_steps=100), 10, smoothing=2)
    for value in (9.0, 7.0, 4.0):
        clock.observe("train/recon", value)
    assert clock.metric_done() is None  # mean(7, 4) = 5.5
    clock.observe("train/recon", 4.0)
    assert "crossed 5" in clock.metric_done()


def test_clock_ends_on_plateau() -> None:
    spec = StageConfig(name="a", metric="val/loss", plateau_window=3, plateau_threshold=0.01, max_epochs=50)
    clock = StageClock(spec, 10, smoothing=1)
    for value in (10.0, 8.0, 6.0, 5.0):
        clock.observe("val/loss", value)
        assert clock.metric_done() is None
    for value in (5.0, 5.0, 5.0):
        clock.observe("val/loss", value)
    assert "improved" in clock.metric_done()


def test_clock_limit_is_the_length_or_the_safety_limit() -> None:
    assert StageClock(StageConfig(name="a", epochs=3), 10).limit_steps() == 30
    assert StageClock(StageConfig(name="a", metric="x", threshold=1, max_steps=7), 10).limit_steps() == 7


def test_clock_state_round_trips() -> None:
    spec = StageConfig(name="a", metric="val/loss", threshold=0.0, max_steps=9)
    clock = StageClock(spec, 10)
    clock.observe("val/loss", 3.0)
    other = StageClock(spec, 10)
    other.load_state_dict(clock.state_dict())
    assert other.state_dict() == clock.state_dict()
