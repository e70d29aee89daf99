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


def test_tanh_output_and_leaky_slope_reach_the_built_model() -> None:
    import torch

    from vaekit.models import build_model

    cfg = load_config({"model": {"arch": "conv", "hidden_dims": [4, 8], "latent_dim": 2, "activation": "leaky_relu",
                                 "leaky_slope": 0.01, "output_activation": "tanh"}, "loss": {"recon": "mse"}})
    model = build_model(cfg.model, (1, 16, 16), cfg.loss.recon)
    slopes = {m.negative_slope for m in model.modules() if isinstance(m, torch.nn.LeakyReLU)}
    assert slopes == {0.01}
    with torch.no_grad():
        model.decoder.head.bias.fill_(100.0)  # a huge pre-activation: tanh keeps the mean in [-1, 1]
        recon = model(torch.zeros(2, 1, 16, 16)).recon
    assert recon.abs().max() <= 1.0
    from vaekit.models import build_model_from_config

    assert build_model_from_config(model.config).output_activation == "tanh"


def test_output_activation_with_bce_is_refused() -> None:
    with pytest.raises(ConfigError, match="^model.output_activation: sigmoid is for mse/l1/gaussian"):
        load_config({"model": {"arch": "mlp", "hidden_dims": [8], "output_activation": "sigmoid"}})


def test_curves_separate_epoch_means_from_log_points_and_mark_stages(tmp_path, monkeypatch) -> None:
    import matplotlib.axes

    from vaekit.tracking.plots import plot_curves

    records = [
        {"stage": "a", "step": 5, "split": "train", "loss": 3.0},
        {"stage": "a", "step": 10, "split": "train", "kind": "epoch", "loss": 2.5},
        {"stage": "a", "step": 10, "split": "val", "loss": 2.4},
        {"stage": "b", "step": 15, "split": "train", "loss": 2.0},
    ]
    labels, lines = [], []
    plot = matplotlib.axes.Axes.plot
    vline = matplotlib.axes.Axes.axvline
    monkeypatch.setattr(matplotlib.axes.Axes, "plot", lambda ax, *a, **k: labels.append(k.get("label")) or plot(ax, *a, **k))
    monkeypatch.setattr(matplotlib.axes.Axes, "axvline", lambda ax, x, **k: lines.append(x) or vline(ax, x, **k))
    plot_curves(records, tmp_path / "curves.png")
    assert labels == ["train (per log)", "train (epoch mean)", "val"] and lines == [15]
    assert (tmp_path / "curves.png").is_file()


@pytest.mark.parametrize(("size", "latent", "hidden", "norm"), [
    ("size-z32-h128", 32, [128], "none"), ("size-z64-h256", 64, [256], "none"), ("size-z128-h512-bn", 128, [512], "batch"),
])
@pytest.mark.parametrize(("beta_preset", "beta"), [("beta-vae", 4.0), ("beta-vae-high", 10.0)])
def test_size_presets_compose_with_data_and_beta_presets(size, latent, hidden, norm, beta_preset, beta) -> None:
    cfg = load_config(None, preset=["tags-small", size, beta_preset])
    m = cfg.model
    assert (m.arch, m.latent_dim, m.hidden_dims, m.norm, cfg.loss.beta, cfg.loss.recon) == (
        "mlp", latent, hidden, norm, beta, "bce")


def test_mean_reduction_matches_a_mean_reduced_script() -> None:
    import torch
    import torch.nn.functional as F

    from vaekit.config.schema import LossConfig
    from vaekit.models.base import VAEOutput
    from vaekit.objectives import VAEObjective

    g = torch.Generator().manual_seed(0)
    x, recon = torch.rand(4, 3, 8, 8, generator=g), torch.rand(4, 3, 8, 8, generator=g)
    mu, logvar = torch.randn(4, 5, generator=g), torch.randn(4, 5, generator=g) * 0.1
    out = VAEOutput(recon=recon, mean=mu, logvar=logvar, z=mu, recon_logvar=None)
    kld_weight = 0.00025
    total, _ = VAEObjective(LossConfig(recon="mse", reduction="mean", beta=kld_weight))(x, out, step=0)
    # PyTorch-VAE's loss_function: F.mse_loss (mean) + kld_weight · batch mean of the summed KL
    kld = torch.mean(-0.5 * torch.sum(1 + logvar - mu**2 - logvar.exp(), dim=1), dim=0)
    torch.testing.assert_close(total, F.mse_loss(recon, x) + kld_weight * kld)


def test_input_dropout_rescales_like_nn_dropout() -> None:
    import torch

    from vaekit.objectives import corrupt

    x = torch.ones(10_000)
    keep = torch.rand(10_000, generator=torch.Generator().manual_seed(0)) >= 0.3
    out = corrupt(x, mask_rate=0.3, keep=keep, rescale=True)
    torch.testing.assert_close(out.unique(), torch.tensor([0.0, 1 / 0.7]))
    assert load_config({"loss": {"denoise": {"mask_rate": 0.3, "rescale": True}}}).loss.denoise.rescale


def test_a_config_files_data_paths_are_relative_to_the_file(tmp_path, monkeypatch) -> None:
    folder = tmp_path / "project" / "configs"
    (folder / "data").mkdir(parents=True)
    (folder / "data" / "t.csv").write_text("a,b\n1,2\n")
    (folder / "cfg.yaml").write_text("data: {source: table, path: data/t.csv}\n"
                                     "stages: [{name: a, steps: 1, data: {path: data/t.csv}}]\n")
    monkeypatch.chdir(tmp_path)  # somewhere else
    cfg = load_config(folder / "cfg.yaml")
    assert cfg.data.path == str(folder / "data" / "t.csv")
    assert cfg.stages[0].data["path"] == str(folder / "data" / "t.csv")
    assert load_config(folder / "cfg.yaml", ["data.path=other.csv"]).data.path == "other.csv"  # overrides: cwd


def test_limit_batches_cuts_each_epoch(tmp_path) -> None:
    import vaekit

    tree = {"run": {"dir": str(tmp_path), "name": "lim"}, "data": {"source": "shapes", "num_samples": 400,
            "image_size": 32}, "model": {"hidden_dims": [8, 16], "latent_dim": 4, "norm": "group"},
            "train": {"batch_size": 32, "epochs": 2, "limit_batches": 3, "val_batches": 1},
            "log": {"progress": False, "samples": False, "plots": False}}
    result = vaekit.train(tree)
    assert result.summary["steps"] == 6  # 2 epochs × 3 batches, not 2 × 11
    assert [r["step"] for r in result.history if r.get("kind") == "epoch"] == [3, 6]
