"""diffusers autoencoders behind the VAE contract (tiny random configs, nothing downloaded), the ``model`` keys of
``arch=diffusers``, and the LoRA finetuner: its checkpoint view, merging, and the adapters kept aside on load."""

from __future__ import annotations

import pytest
import torch

from vaekit.config.load import dump_config, load_config
from vaekit.config.schema import FinetuneConfig
from vaekit.errors import ConfigError

diffusers = pytest.importorskip("diffusers")
from vaekit.models.diffusers import DiffusersVAE  # noqa: E402

# (class, tiny config, input batch shape): images, video (causal 3D VAEs) and audio
CLASSES = [
    ("AutoencoderKL", dict(in_channels=3, out_channels=3, block_out_channels=[8, 16], layers_per_block=1,
                           latent_channels=2, norm_num_groups=4, down_block_types=["DownEncoderBlock2D"] * 2,
                           up_block_types=["UpDecoderBlock2D"] * 2), (2, 3, 16, 16), (2, 8, 8)),
    ("AutoencoderKLCogVideoX", dict(in_channels=3, out_channels=3, down_block_types=("CogVideoXDownBlock3D",) * 2,
                                    up_block_types=("CogVideoXUpBlock3D",) * 2, block_out_channels=(8, 16),
                                    latent_channels=2, layers_per_block=1, norm_num_groups=4,
                                    temporal_compression_ratio=4), (1, 3, 5, 16, 16), (2, 3, 8, 8)),
    ("AutoencoderKLWan", dict(base_dim=8, z_dim=2, dim_mult=[1, 1], num_res_blocks=1, temperal_downsample=[False]),
     (1, 3, 1, 16, 16), (2, 1, 8, 8)),
    ("AutoencoderKLLTXVideo", dict(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8,) * 4,
                                   decoder_block_out_channels=(8,) * 4, layers_per_block=(1,) * 5,
                                   decoder_layers_per_block=(1,) * 5,
                                   spatio_temporal_scaling=(True, True, False, False),
                                   decoder_spatio_temporal_scaling=(True, True, False, False),
                                   decoder_inject_noise=(False,) * 5, upsample_residual=(False,) * 4,
                                   upsample_factor=(1,) * 4, timestep_conditioning=False, patch_size=1,
                                   patch_size_t=1, encoder_causal=True, decoder_causal=False),
     (1, 3, 9, 16, 16), (4, 3, 4, 4)),
    ("AutoencoderOobleck", dict(encoder_hidden_size=4, downsampling_ratios=[2, 2], decoder_channels=4,
                                decoder_input_channels=2, audio_channels=1, channel_multiples=[1, 2]),
     (1, 1, 64), (2, 16)),
]


@pytest.mark.filterwarnings("ignore::FutureWarning")
@pytest.mark.parametrize(("name", "config", "shape", "latent"), CLASSES, ids=[c[0] for c in CLASSES])
def test_diffusers_autoencoders_fit_the_vae_contract(name: str, config: dict, shape: tuple, latent: tuple) -> None:
    torch.manual_seed(0)
    module = getattr(diffusers, name)(**config)
    vae = DiffusersVAE(name, {}, "mse", rescale=len(shape) in (4, 5), module=module)
    assert vae.latent_shape_for(shape[1:]) == latent  # found by probing encode
    x = torch.rand(*shape)
    out = vae(x)
    assert out.recon.shape == x.shape and out.mean.shape == (shape[0], *latent)
    out.recon.pow(2).mean().backward()
    assert any(p.grad is not None for p in vae.decoder.parameters())
    # the recorded config rebuilds the same architecture (vaekit.load_model on a run's model_config.json)
    rebuilt = DiffusersVAE(**{k: v for k, v in vae.config.items() if k != "arch"})
    assert set(rebuilt.module.state_dict()) == set(module.state_dict())


def test_model_keys_of_a_diffusers_run() -> None:
    cfg = load_config(None, ["model.arch=diffusers", "model.pretrained=org/vae", "model.class=AutoencoderKLWan",
                             "model.subfolder=vae", "model.torch_dtype=bfloat16"])
    assert cfg.model.class_name == "AutoencoderKLWan" and cfg.model.subfolder == "vae"
    assert load_config(None, [f"model.{k}={v}" for k, v in cfg.model.model_dump().items() if v is not None
                              and not isinstance(v, list | dict)]).model.class_name == "AutoencoderKLWan"
    assert "class_name: AutoencoderKLWan" in dump_config(cfg)  # the saved config.yaml reloads
    with pytest.raises(ConfigError, match="model.pretrained: required with model.arch=diffusers"):
        load_config(None, ["model.arch=diffusers"])
    with pytest.raises(ConfigError, match="not a diffusers autoencoder class"):
        load_config(None, ["model.arch=diffusers", "model.pretrained=x/y", "model.class=os.system"])
    with pytest.raises(ConfigError, match="lora is not supported with train.strategy=fsdp"):
        load_config(None, ["finetune.mode=lora", "train.strategy=fsdp"])


def test_lora_checkpoint_view_merge_and_stash() -> None:
    pytest.importorskip("peft")
    from vaekit.engine.finetune import Finetuner

    torch.manual_seed(0)
    name, config, shape, _ = CLASSES[0]
    module = getattr(diffusers, name)(**config).eval()
    plain_keys = set(module.state_dict())
    tuner = Finetuner(module)
    lora = FinetuneConfig(mode="lora", rank=2, alpha=4)
    tuner.apply(lora, lora)
    with torch.no_grad():
        for n, p in module.named_parameters():
            if "lora_B" in n:
                p.normal_()  # as if trained
    x = torch.rand(*shape)
    with torch.no_grad():
        adapted = module.decode(module.encode(x).latent_dist.mean).sample
    state = tuner.state_dict()
    assert {k for k in state if ".lora_" not in k} == plain_keys  # base weights under their plain names
    # a fresh module loads the view: base now, adapters kept aside until their stage re-injects them
    fresh = getattr(diffusers, name)(**config).eval()
    other = Finetuner(fresh)
    other.load_state_dict(state)
    assert other.stash and set(fresh.state_dict()) == plain_keys
    other.apply(FinetuneConfig(mode="full"), lora)  # leaving lora: re-inject, load, merge
    assert other.lora is None and not other.stash and set(fresh.state_dict()) == plain_keys
    with torch.no_grad():
        merged = fresh.decode(fresh.encode(x).latent_dist.mean).sample
    torch.testing.assert_close(merged, adapted, rtol=1e-4, atol=1e-5)
