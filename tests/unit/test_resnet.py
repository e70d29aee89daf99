"""``model.arch=resnet``: SD's parameter count, shapes in 1D/2D/3D, the causal video rule, checkpointing, and the
one-line errors ``vaekit validate`` gives before any data is read."""

from __future__ import annotations

import re

import pytest
import torch

from vaekit.config.load import ConfigError, load_config
from vaekit.models import ResNetVAE, count_parameters

SD = {"block_out_channels": [128, 256, 512, 512], "layers_per_block": 2, "latent_channels": 4}


def test_sd_config_has_exactly_the_parameters_of_diffusers_autoencoderkl() -> None:
    diffusers = pytest.importorskip("diffusers")
    with torch.device("meta"):  # no memory, no init: only the parameter shapes
        reference = diffusers.AutoencoderKL(
            in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * 4,
            up_block_types=["UpDecoderBlock2D"] * 4, norm_num_groups=32, **SD)
        ours = ResNetVAE((3, 256, 256), 4, [128, 256, 512, 512], layers_per_block=2, recon_kind="mse")
    assert count_parameters(ours) == count_parameters(reference) == 83_653_863


@pytest.mark.parametrize(
    ("shape", "latent"),
    [((2, 32), (3, 8)), ((3, 16, 8), (3, 4, 2)), ((1, 4, 8, 8), (3, 2, 2, 2))],
)
def test_resnet_picks_1d_2d_3d_from_the_data(shape: tuple[int, ...], latent: tuple[int, ...]) -> None:
    model = ResNetVAE(shape, 3, [4, 8, 8], layers_per_block=1, attention_stages=[2], temporal_downsample=1,
                      recon_kind="mse")
    out = model(torch.rand(2, *shape))
    assert out.recon.shape == (2, *shape) and out.mean.shape == (2, *latent)
    assert model.latent_shape == latent


def causal_model(**kwargs) -> ResNetVAE:
    torch.manual_seed(0)
    return ResNetVAE((2, 5, 8, 8), 3, [4, 8, 8], layers_per_block=1, causal=True, temporal_downsample=2,
                     attention_stages=[1], recon_kind="mse", **kwargs).eval()


@pytest.mark.parametrize("downsample", ["conv", "interpolate"])
def test_causal_video_encodes_the_first_frame_alone_and_maps_1_plus_4k_frames_to_1_plus_k(downsample: str) -> None:
    model = causal_model(downsample=downsample)
    clip = torch.rand(2, 2, 9, 8, 8)
    with torch.no_grad():
        mean, _ = model.encode(clip)
        assert mean.shape == (2, 3, 3, 2, 2)  # 1 + 4·2 frames -> 1 + 2
        first, _ = model.encode(clip[:, :, :1])  # a single image is a 1-frame video
        torch.testing.assert_close(first, mean[:, :, :1])
        # frame t depends on frames <= t only: changing the last 4 frames leaves the first two latents alone
        edited = clip.clone()
        edited[:, :, 5:] = torch.rand_like(edited[:, :, 5:])
        torch.testing.assert_close(model.encode(edited)[0][:, :, :2], mean[:, :, :2])
        recon, _ = model.decode(mean)
        assert recon.shape == clip.shape
        torch.testing.assert_close(model.decode(mean[:, :, :1])[0], recon[:, :, :1])  # causal decoder too


def test_causal_clip_length_that_breaks_1_plus_4k_names_what_works() -> None:
    model = causal_model()
    with pytest.raises(ValueError, match=r"needs 1 \+ 4·m frames \(1, 5, 9, 13, \.\.\.\); got 8"):
        model.encode(torch.rand(1, 2, 8, 8, 8))


def test_grad_checkpointing_gives_the_same_gradients() -> None:
    x = torch.rand(2, 1, 8, 8)
    grads = []
    for enabled in (False, True):
        torch.manual_seed(0)
        model = ResNetVAE((1, 8, 8), 2, [4, 8], layers_per_block=1, recon_kind="mse", grad_checkpointing=enabled)
        model(x, sample_posterior=False).recon.sum().backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b)


def test_config_rebuilds_the_model() -> None:
    from vaekit.models import build_model_from_config

    model = ResNetVAE((1, 8, 8), 2, [4, 8], layers_per_block=1, recon_kind="mse",
                      bottleneck={"kind": "fsq", "levels": [5, 3]})
    again = build_model_from_config(model.config)
    again.load_state_dict(model.state_dict())
    x = torch.rand(1, 1, 8, 8)
    torch.testing.assert_close(again.eval()(x).recon, model.eval()(x).recon)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["model.arch=resnet", "model.hidden_dims=[8,8,8,8]", "data.image_size=36"],
         r"^data\.image_size: 36 is not divisible by 8, .* use 32 or 40"),
        (["model.arch=resnet", "model.hidden_dims=[8,8,8]", "model.temporal_downsample=2", "data.source=moving_shapes",
          "data.frames=8", "model.resnet.causal=true"],
         r"^data\.frames: 8 breaks the causal rule 1 \+ 4·m frames .*; use 1, 5, 9, 13"),
        (["model.arch=resnet", "model.hidden_dims=[8,8]", "model.resnet.attention_stages=[2]"],
         r"model\.resnet\.attention_stages: stage 2 does not exist; model\.hidden_dims has 2 stages \(0\.\.1\)"),
        (["model.bottleneck.kind=fsq", "model.bottleneck.levels=[2,4]"], r"model\.bottleneck\.levels: .*each from 3"),
        (["model.bottleneck.kind=lfq", "model.bottleneck.codebook_size=1000"],
         r"model\.bottleneck\.codebook_size: lfq needs a power of 2 .*try 1024"),
        (["model.bottleneck.kind=vq", "loss.kl.schedule=linear"],
         r"^loss\.kl\.schedule: linear schedules a KL, but model\.bottleneck\.kind=vq is a quantised latent"),
        (["model.bottleneck.kind=rvq", "loss.kl.free_bits=0.5"], r"^loss\.kl\.free_bits: model\.bottleneck\.kind=rvq"),
        (["model.bottleneck.kind=vq", "eval.metrics=[iwae]"], r"^eval\.metrics: iwae needs a Gaussian posterior"),
        (["model.bottleneck.kind=vq", "model.arch=diffusers", "model.diffusers_config={}"],
         r"model\.bottleneck\.kind: vq applies to model\.arch mlp, conv, resnet"),
    ],
)
def test_bad_model_settings_are_one_line_errors_before_data_is_read(overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(None, overrides)
    assert "\n" not in str(err.value)
    assert re.search(message, str(err.value)), str(err.value)


def test_resnet_and_bottleneck_keys_validate() -> None:
    cfg = load_config(None, ["model.arch=resnet", "model.hidden_dims=[8,16]", "data.image_size=32",
                             "model.bottleneck.kind=rvq", "model.bottleneck.num_quantizers=4"])
    assert cfg.model.bottleneck.as_spec()["num_quantizers"] == 4
