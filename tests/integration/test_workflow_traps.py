"""Workflows that used to run, print nothing and train the wrong thing (issue 17): each test fails on the old code."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file

import vaekit

DISC = {"layers": 2, "channels": 8}


def _records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


# ------------------------------------------------------------------ 1. a GAN-only stage with the adaptive weight
def test_gan_only_stage_trains_the_decoder_adversarially(tiny) -> None:
    tree = tiny("ganonly", loss={"recon": "l1"}, train={"max_steps": None, "ckpt_every": 4},
                log={"every": 1, "progress": False, "samples": False, "plots": False})
    tree["stages"] = [
        {"name": "vae", "steps": 4},
        {"name": "gan", "steps": 4, "freeze": ["encoder"],
         "loss": {"recon_weight": 0.0, "adversarial": {"weight": 0.5, "discriminator": DISC}}},
    ]
    result = vaekit.train(tree)
    gan = [r for r in _records(result.run_dir) if r.get("stage") == "gan" and r["split"] == "train" and "adv_weight" in r]
    assert gan and all(r["adv_weight"] == 0.5 for r in gan)  # the fixed weight, not ‖∇rec‖/‖∇g‖ = 0
    before = load_file(result.run_dir / "checkpoints" / "step_00000004" / "model.safetensors")
    after = load_file(result.run_dir / "model.safetensors")
    dec = [k for k in after if k.startswith("decoder")]
    assert any(not torch.equal(before[k], after[k]) for k in dec)  # only the adversarial term reaches the decoder


def test_validate_warns_about_the_gan_only_fallback() -> None:
    from vaekit.config.load import load_config
    from vaekit.config.notes import config_warnings

    cfg = load_config({"loss": {"recon_weight": 0, "adversarial": {"weight": 0.5}}})
    (line,) = config_warnings(cfg)
    assert "loss.adversarial.adaptive" in line and "fixed weight" in line


# ------------------------------------------------------------------ 2. a user decoder that ends in Sigmoid
class _TagVAE(torch.nn.Module):
    """An eBird-style user model: MLP encoder, decoder ending in Sigmoid (probabilities)."""

    def __init__(self, d: int = 12, z: int = 3, declare: str | None = None) -> None:
        super().__init__()
        self.encoder = torch.nn.Sequential(torch.nn.Linear(d, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2 * z))
        self.decoder = torch.nn.Sequential(torch.nn.Linear(z, 16), torch.nn.ReLU(), torch.nn.Linear(16, d),
                                           torch.nn.Sigmoid())
        if declare is not None:
            self.decoder_output = declare

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.encoder(x).chunk(2, dim=1)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z)


def _sparse_tags(n: int = 256, d: int = 12) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return (torch.rand(n, d, generator=g) < 0.1).float()


def test_sigmoid_decoder_is_trained_on_its_probabilities() -> None:
    from vaekit.models.adapter import as_vae
    from vaekit.objectives import likelihood_mean

    for declare in ("probabilities", None):  # declared, or detected from the final nn.Sigmoid
        module = _TagVAE(declare=declare)
        vae = as_vae(module, "bce")
        x = _sparse_tags(8)
        out = vae(x, sample_posterior=False)
        mean = likelihood_mean("bce", out.recon)
        expected = module.decode(module.encode(x)[0])
        torch.testing.assert_close(mean, expected, atol=1e-5, rtol=1e-4)  # not sigmoid(probabilities) ≥ 0.5


def test_sigmoid_decoder_learns_probabilities_below_one_half(tmp_path: Path) -> None:
    torch.manual_seed(0)
    result = vaekit.train(model=_TagVAE(), x=_sparse_tags(), loss={"recon": "bce", "beta": 0.1},
                          train={"max_steps": 40, "batch_size": 32}, optim={"lr": 1e-2},
                          run={"dir": str(tmp_path), "name": "sig"},
                          log={"progress": False, "samples": False, "plots": False})
    # data are 10% ones: with sigmoid applied to its probabilities (≥ 0.5) the mse could not go below ~0.22
    assert result.split("val")[-1]["mse"] < 0.15


def test_decoder_output_logits_under_mse_is_refused_in_one_line() -> None:
    import pytest

    from vaekit.errors import ModelProtocolError
    from vaekit.models.adapter import as_vae

    with pytest.raises(ModelProtocolError, match="decoder_output='logits' needs loss.recon=bce"):
        as_vae(_TagVAE(declare="logits"), "mse")


# ------------------------------------------------------------------ 3. grad checkpointing on a user module
def _decoder_calls(vae: torch.nn.Module, module: _TagVAE) -> int:
    calls = []
    hook = module.decoder[0].register_forward_hook(lambda *_: calls.append(1))
    vae.train()
    out = vae(_sparse_tags(8))
    out.recon.sum().backward()
    hook.remove()
    return len(calls)


def test_grad_checkpointing_recomputes_a_user_decoder() -> None:
    from vaekit.models.adapter import as_vae

    module = _TagVAE(declare="logits")
    vae = as_vae(module, "bce")
    assert _decoder_calls(vae, module) == 1
    vae.set_grad_checkpointing(True)
    assert _decoder_calls(vae, module) == 2  # forward, then again in the backward
    assert set(module.state_dict()) == set(_TagVAE().state_dict())  # export keys unchanged
    vae.set_grad_checkpointing(False)
    assert _decoder_calls(vae, module) == 1


def test_grad_checkpointing_on_a_module_without_children_is_refused(tmp_path: Path) -> None:
    import pytest

    from vaekit.errors import ModelProtocolError

    class Flat(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.enc, self.dec = torch.nn.Linear(12, 6), torch.nn.Linear(3, 12)

        def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return self.enc(x).chunk(2, dim=1)

        def decode(self, z: torch.Tensor) -> torch.Tensor:
            return self.dec(z)

    with pytest.raises(ModelProtocolError, match="model.grad_checkpointing"):
        vaekit.train(model=Flat(), x=_sparse_tags(), model__grad_checkpointing=True, run={"dir": str(tmp_path)},
                     train={"max_steps": 1}, log={"progress": False})


# ------------------------------------------------------------------ 8. presets compose
def test_presets_compose_in_order() -> None:
    from vaekit.config.load import load_config

    for cfg in (load_config(None, ["preset=beta-vae"], preset="tags-small"),
                load_config(None, preset="tags-small,beta-vae"),
                load_config(None, preset=["tags-small", "beta-vae"])):
        assert (cfg.model.arch, cfg.model.latent_dim, cfg.loss.beta) == ("mlp", 8, 4.0)
        assert cfg.preset == ["tags-small", "beta-vae"]
    assert load_config(None, preset="beta-vae,beta-vae-high").loss.beta == 10.0  # the later one wins
    assert load_config(None, ["loss.beta=2"], preset="tags-small,beta-vae").loss.beta == 2.0  # overrides win


def test_cli_preset_flag_anywhere_and_validate_names_each_presets_keys(capsys) -> None:
    from vaekit.cli import main

    assert main(["validate", "--preset", "tags-small", "loss.beta=2", "--preset", "beta-vae", "--no-data"]) == 0
    out = capsys.readouterr().out
    assert "preset     tags-small: model.arch=mlp" in out
    assert "preset     beta-vae: loss.beta=4→2" in out
    assert "model      mlp latent 8" in out


# ------------------------------------------------------------------ 7. a continuous table and the likelihood
def _continuous_table(path: Path) -> Path:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 5, generator=g) * 3 + 10
    path.write_text("a,b,c,d,e\n" + "\n".join(",".join(f"{v:.4f}" for v in row) for row in x.tolist()) + "\n")
    return path


def _table_args(tmp_path: Path) -> list[str]:
    return ["data.source=table", f"data.path={_continuous_table(tmp_path / 't.csv')}", "data.normalize=standard",
            "model.arch=mlp", "model.hidden_dims=[16]", "model.latent_dim=2"]


def test_cli_resolves_the_likelihood_from_the_data_as_python_does(tmp_path: Path, capsys) -> None:
    from vaekit.cli import main

    args = _table_args(tmp_path)
    assert main(["validate", *args]) == 0
    assert "recon: gaussian" in capsys.readouterr().out
    run = ["run.dir=" + str(tmp_path / "runs"), "run.name=cli", "train.max_steps=2", "train.batch_size=32",
           "log.progress=false", "log.samples=false", "log.plots=false"]
    assert main(["train", *args, *run]) == 0
    saved = (tmp_path / "runs" / "cli" / "config.yaml").read_text()
    assert "recon: gaussian" in saved  # was bce: -3,109 nats and falling on standardised columns


def test_bce_on_targets_outside_0_1_is_refused_in_one_line(tmp_path: Path, capsys) -> None:
    from vaekit.cli import main

    assert main(["validate", *_table_args(tmp_path), "loss.recon=bce"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("vaekit: config error: loss.recon: bce needs targets in [0, 1]") and "\n" not in err


# ------------------------------------------------------------------ 5. extending a finished run
def test_extending_a_finished_run_logs_each_validation_once(tiny) -> None:
    first = vaekit.train(tiny("ext", train={"max_steps": None, "epochs": 1}))
    vaekit.train(resume=first.run_dir, overrides=["train.epochs=2"])
    val_steps = [r["step"] for r in _records(first.run_dir) if r["split"] == "val"]
    assert len(val_steps) == len(set(val_steps)) == 2


def test_python_refuses_bce_on_a_standardised_table(tmp_path: Path) -> None:
    import pytest

    from vaekit.errors import ConfigError

    tree = {"data": {"source": "table", "path": str(_continuous_table(tmp_path / "t.csv")), "normalize": "standard"},
            "model": {"arch": "mlp", "hidden_dims": [16], "latent_dim": 2}, "loss": {"recon": "bce"},
            "run": {"dir": str(tmp_path / "runs"), "name": "bce"}}
    with pytest.raises(ConfigError, match=r"^loss.recon: bce needs targets in \[0, 1\]"):
        vaekit.train(tree)
    assert not (tmp_path / "runs" / "bce").exists()  # refused before anything is written


# ------------------------------------------------------------------ 4. processes asked for vs started
def test_start_line_and_summary_record_processes_and_warn_when_fewer_started(tiny, monkeypatch, capsys) -> None:
    monkeypatch.setenv("ACCELERATE_NUM_PROCESSES", "2")  # what a launcher asked for; one process starts here
    result = vaekit.train(tiny("procs", train={"max_steps": 2}))
    out = capsys.readouterr().err
    assert "processes 1 (single process) on cpu" in out
    assert "warning: the launcher asked for 2 processes but 1 started" in out
    summary = json.loads((result.run_dir / "summary.json").read_text())
    assert (summary["processes"], summary["strategy"], summary["device"], summary["launcher_requested"]) == (
        1, "single", "cpu", 2)
    assert summary["config"]["train"]["max_steps"] == 2  # the resolved config beside the metrics


def test_accelerate_launch_num_processes_is_read_from_the_parent_command_line() -> None:
    from vaekit.engine.runtime import requested_processes

    assert requested_processes(["python", "/usr/bin/accelerate", "launch", "--num_processes", "2", "-m", "x"]) == 2
    assert requested_processes(["python", "/usr/bin/accelerate", "launch", "--num-processes=3", "x.py"]) == 3
    assert requested_processes(["python", "train.py", "--num_processes", "4"]) is None


# ------------------------------------------------------------------ 6. compare and LPIPS
def test_compare_prints_skipped_lpips_and_takes_local_weights(tiny, tmp_path: Path, monkeypatch, capsys) -> None:
    import torchvision

    from vaekit.cli import main

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty-hub"))  # no cached backbone weights
    runs = [vaekit.train(tiny(name, data={"num_samples": 64, "channels": 3}, train={"max_steps": 1})).run_dir
            for name in ("a", "b")]
    common = ["compare", *map(str, runs), "--batches", "1", "--k", "2", "--device", "cpu"]
    capsys.readouterr()
    assert main([*common, "--out", str(tmp_path / "c1")]) == 0
    assert "skipped lpips: needs torchvision" in capsys.readouterr().err
    weights = tmp_path / "squeeze.pth"
    torch.save(torchvision.models.squeezenet1_1(weights=None).state_dict(), weights)
    assert main([*common, "--out", str(tmp_path / "c2"), "--metrics", "mse,lpips", "--lpips-net", "squeeze",
                 "--lpips-weights", str(weights)]) == 0
    result = json.loads((tmp_path / "c2" / "compare.json").read_text())
    assert all("lpips" in r["metrics"] for r in result["results"].values())


# ------------------------------------------------------------------ translations from a Python training script
def test_history_by_name_device_choice_and_trainable_count(tmp_path: Path) -> None:
    import pytest

    from vaekit.errors import ConfigError

    result = vaekit.train(model=_TagVAE(declare="probabilities"), x=_sparse_tags(), cpu=True,
                          train={"epochs": 2, "batch_size": 64}, run={"dir": str(tmp_path), "name": "py"},
                          log={"progress": False, "samples": False, "plots": False})
    h = result.history
    assert len(h["train_loss"]) == len(h["train_recon_loss"]) == len(h["train_kl_loss"]) == 2
    assert len(h["val_loss"]) == len(h["val_recon_loss"]) == 2 and "val_kl" in h.keys()
    assert result.config.train.device == "cpu" and result.history[0]["split"] == "train"  # still a list
    with pytest.raises(ConfigError, match="CUDA_VISIBLE_DEVICES"):
        vaekit.train(model=_TagVAE(), x=_sparse_tags(), device="cuda:1")


# ------------------------------------------------------------------ init_from a LoRA checkpoint
def test_init_from_a_lora_checkpoint_merges_the_adapters(tiny) -> None:
    import pytest

    from vaekit.errors import ConfigError
    from vaekit.models import build_model_from_config
    from vaekit.pipeline.init_from import load_init_weights

    run = vaekit.train(tiny("lora", train={"max_steps": 4, "ckpt_every": 4}, optim={"lr": 1e-2},
                            finetune={"mode": "lora", "rank": 2, "alpha": 4}))
    step = run.run_dir / "checkpoints" / "step_00000004" / "model.safetensors"
    assert any("lora_A" in k for k in load_file(step))  # base weights + adapters
    fresh = build_model_from_config(json.loads((run.run_dir / "model_config.json").read_text()))
    load_init_weights(fresh, step)
    exported = load_file(run.run_dir / "model.safetensors")  # merged at the end of the run
    for key, value in fresh.state_dict().items():
        torch.testing.assert_close(value, exported[key])
    other = vaekit.train(tiny("wider", model={"hidden_dims": [8, 16, 16]}, train={"max_steps": 1}))
    with pytest.raises(ConfigError, match=r"init_from: .* does not fit this model: missing .*unexpected"):
        load_init_weights(build_model_from_config(json.loads((other.run_dir / "model_config.json").read_text())),
                          step)


def test_trainable_share_in_start_up_model_txt_and_validate(tiny, capsys) -> None:
    from vaekit.config.load import load_config
    from vaekit.pipeline.summary import summarize

    tree = tiny("share", train={"max_steps": 1}, finetune={"mode": "lora", "rank": 2})
    result = vaekit.train(tree)
    assert "trainable " in capsys.readouterr().err and "finetune lora" in (result.run_dir / "model.txt").read_text()
    tree["run"]["name"] = "share2"
    text = summarize(load_config(tree))
    share = float(text.split("finetune lora")[0].rsplit("(", 1)[1].rstrip("%, "))
    assert 0 < share < 50  # the adapters' share, not 100%


def test_evaluate_a_user_module_run_with_a_fresh_instance(tmp_path: Path) -> None:
    x = _sparse_tags()
    result = vaekit.train(model=_TagVAE(), x=x, loss={"recon": "bce"}, train={"max_steps": 3, "batch_size": 64},
                          run={"dir": str(tmp_path), "name": "ev"}, log={"progress": False, "samples": False})
    out = vaekit.evaluate(result.run_dir, x[:64], model=_TagVAE(), metrics=["elbo", "mse"], k=2)
    assert out["metrics"]["mse"] < 0.5 and out["samples"] == 64
    direct = vaekit.evaluate(_TagVAE(declare="probabilities"), x[:64], metrics=["mse"], k=2)
    assert "mse" in direct["metrics"]


# ------------------------------------------------------------------ a diffusers model's defaults and description
def test_diffusers_defaults_to_mse_and_validate_shows_its_own_config(tmp_path: Path) -> None:
    import diffusers

    from vaekit.config.load import load_config
    from vaekit.pipeline.summary import summarize

    folder = tmp_path / "tiny-vae"
    diffusers.AutoencoderKL(
        in_channels=3, out_channels=3, block_out_channels=[8, 16], layers_per_block=1, latent_channels=2,
        norm_num_groups=4, down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2,
    ).save_pretrained(str(folder))
    cfg = load_config({"data": {"source": "shapes", "num_samples": 32, "image_size": 16, "channels": 3},
                       "model": {"arch": "diffusers", "pretrained": str(folder)}})
    assert cfg.loss.recon == "mse"  # was bce, which the model cannot serve, and an error asking for mse
    text = summarize(cfg)
    assert "diffusers AutoencoderKL from" in text and "block_out_channels [8, 16]" in text
    assert "hidden [32, 32, 64, 64]" not in text
    assert load_config({"model": {"arch": "diffusers", "pretrained": "x"}, "loss": {"recon": "l1"}}).loss.recon == "l1"
