"""Unit tests for vaekit.models: one shared model tester over every family, then per-feature tests."""

from __future__ import annotations

import json
from typing import Any

import pytest
import torch
from torch import nn

from vaekit.config.schema import DiscriminatorConfig, ModelConfig
from vaekit.models import (
    MLPVAE,
    MODELS,
    VAE,
    ConvVAE,
    PatchDiscriminator,
    VAEOutput,
    build_discriminator,
    build_model,
    build_model_from_config,
    count_parameters,
    model_summary,
)

B = 3
# (id, class, kwargs): tiny members of every family; each norm, both latents, 1D/2D/3D.
CASES: list[tuple[str, type[VAE], dict[str, Any]]] = [
    ("mlp-mnist-batch", MLPVAE, dict(input_shape=(1, 28, 28), latent_dim=4, hidden_dims=[16], norm="batch")),
    ("mlp-tab-group", MLPVAE, dict(input_shape=(16,), latent_dim=3, hidden_dims=[8, 4], norm="group", dropout=0.1)),
    ("mlp-tab-none", MLPVAE, dict(input_shape=(16,), latent_dim=3, hidden_dims=[8], norm="none")),
    ("conv1d-vector-batch", ConvVAE, dict(input_shape=(1, 64), latent_dim=4, hidden_dims=[4, 8], norm="batch")),
    ("conv1d-spatial-group", ConvVAE, dict(input_shape=(1, 64), latent_dim=2, hidden_dims=[4, 8], latent="spatial", norm="group")),
    ("conv2d-vector-group", ConvVAE, dict(input_shape=(1, 16, 16), latent_dim=4, hidden_dims=[4, 8], norm="group")),
    ("conv2d-vector-batch-rgb", ConvVAE, dict(input_shape=(3, 16, 16), latent_dim=4, hidden_dims=[4, 8], norm="batch")),
    ("conv2d-spatial-none", ConvVAE, dict(input_shape=(3, 16, 16), latent_dim=2, hidden_dims=[4, 8], latent="spatial", norm="none", activation="silu")),
    ("conv3d-vector-batch", ConvVAE, dict(input_shape=(1, 4, 16, 16), latent_dim=4, hidden_dims=[4, 8], norm="batch", temporal_downsample=1)),
    ("conv3d-spatial-group", ConvVAE, dict(input_shape=(1, 4, 16, 16), latent_dim=2, hidden_dims=[4, 8], latent="spatial", norm="group", temporal_downsample=2)),
]  # fmt: skip


def make(cls: type[VAE], kwargs: dict[str, Any], seed: int = 0, **overrides: Any) -> VAE:
    torch.manual_seed(seed)
    return cls(**{**kwargs, **overrides})


def batch_for(model: VAE, seed: int = 1, shape: tuple[int, ...] | None = None) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.rand((B, *(shape or model.input_shape)), generator=gen)


# ------------------------------------------------------------------------------------ model tester
@pytest.mark.parametrize(("cls", "kwargs"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
class TestModelContract:
    def test_forward_shapes(self, cls: type[VAE], kwargs: dict[str, Any]) -> None:
        model = make(cls, kwargs)
        x = batch_for(model)
        out = model(x)
        assert isinstance(out, VAEOutput)
        assert out.recon.shape == x.shape
        for t in (out.mean, out.logvar, out.z):
            assert t.shape == (B, *model.latent_shape)
        assert out.recon_logvar is None
        assert model.sample(2).shape == (2, *x.shape[1:])

    def test_gradient_reaches_encoder_and_decoder(self, cls: type[VAE], kwargs: dict[str, Any]) -> None:
        model = make(cls, kwargs)
        out = model(batch_for(model))
        (out.recon.square().mean() + out.mean.square().mean() + out.logvar.exp().mean()).backward()
        for group in (model.encoder, model.decoder):
            grads = [p.grad for p in group.parameters()]
            assert all(g is not None and torch.isfinite(g).all() for g in grads)
            assert any(g.abs().sum() > 0 for g in grads)
        assert model.last_layer.grad is not None
        assert any(model.last_layer is p for p in model.decoder.parameters())

    def test_eval_without_sampling_is_deterministic(self, cls: type[VAE], kwargs: dict[str, Any]) -> None:
        model = make(cls, kwargs).eval()
        x = batch_for(model)
        a, b = model(x, sample_posterior=False), model(x, sample_posterior=False)
        torch.testing.assert_close(a.recon, b.recon, rtol=0, atol=0)
        torch.testing.assert_close(a.z, a.mean, rtol=0, atol=0)

    def test_rebuild_from_config_reproduces_outputs(self, cls: type[VAE], kwargs: dict[str, Any]) -> None:
        model = make(cls, kwargs).eval()
        clone = build_model_from_config(json.loads(json.dumps(model.config)))
        assert type(clone) is cls
        clone.load_state_dict(model.state_dict())
        clone.eval()
        x = batch_for(model)
        torch.testing.assert_close(
            clone(x, sample_posterior=False).recon, model(x, sample_posterior=False).recon, rtol=0, atol=0
        )

    def test_sampling_uses_the_global_rng_and_generator(self, cls: type[VAE], kwargs: dict[str, Any]) -> None:
        model = make(cls, kwargs).eval()
        x = batch_for(model)
        torch.manual_seed(5)
        a = model(x).z
        torch.manual_seed(5)
        torch.testing.assert_close(model(x).z, a, rtol=0, atol=0)
        s1 = model.sample(2, generator=torch.Generator().manual_seed(3))
        s2 = model.sample(2, generator=torch.Generator().manual_seed(3))
        torch.testing.assert_close(s1, s2, rtol=0, atol=0)


# ------------------------------------------------------------------------------------ likelihood heads
@pytest.mark.parametrize("case", ["mlp-mnist-batch", "conv2d-vector-group", "conv3d-spatial-group"])
def test_gaussian_scalar_logvar_is_a_learned_zero_dim_parameter(case: str) -> None:
    _, cls, kwargs = next(c for c in CASES if c[0] == case)
    model = make(cls, kwargs, recon_kind="gaussian", gaussian_logvar="scalar")
    out = model(batch_for(model))
    assert isinstance(out.recon_logvar, nn.Parameter) and out.recon_logvar.shape == ()
    assert out.recon_logvar.item() == 0.0 and out.recon.shape == (B, *model.input_shape)
    (out.recon.sum() + out.recon_logvar).backward()
    assert out.recon_logvar.grad is not None


@pytest.mark.parametrize(
    "case", ["mlp-tab-none", "mlp-mnist-batch", "conv1d-vector-batch", "conv3d-spatial-group"]
)
def test_gaussian_pixel_logvar_has_the_shape_of_x_and_is_clamped(case: str) -> None:
    _, cls, kwargs = next(c for c in CASES if c[0] == case)
    model = make(cls, kwargs, recon_kind="gaussian", gaussian_logvar="pixel")
    x = batch_for(model)
    out = model(x)
    assert out.recon.shape == x.shape and out.recon_logvar.shape == x.shape
    with torch.no_grad():
        model.decoder.head.bias.fill_(1e3)
    logvar = model(x).recon_logvar
    assert logvar.max() <= 20.0 and torch.isfinite(logvar.exp()).all()


def test_non_gaussian_models_have_no_recon_logvar_parameter() -> None:
    model = MLPVAE((16,), 3, [8], recon_kind="mse")
    assert model.recon_logvar is None and "recon_logvar" not in dict(model.named_parameters())


# ------------------------------------------------------------------------------------ conv specifics
def test_spatial_latent_works_at_several_resolutions() -> None:
    model = ConvVAE((3, 16, 16), 2, [4, 8], latent="spatial", norm="group").eval()
    for size in [(16, 16), (32, 24)]:
        x = torch.rand(2, 3, *size)
        out = model(x)
        assert out.recon.shape == x.shape and out.z.shape == (2, 2, size[0] // 4, size[1] // 4)


def test_video_temporal_downsample_halves_time_only_in_the_first_stages() -> None:
    model = ConvVAE((1, 8, 16, 16), 2, [4, 4, 4], latent="spatial", temporal_downsample=1)
    assert model.latent_shape == (2, 4, 2, 2)
    assert model(torch.rand(1, 1, 8, 16, 16)).recon.shape == (1, 1, 8, 16, 16)


@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 15, 15), (1, 5, 28, 28), (1, 100)])
def test_vector_latent_takes_sizes_the_strides_do_not_divide(shape: tuple[int, ...]) -> None:
    # MNIST is 28×28 and four stride-2 stages give 2×2; the decoder's output padding restores 28 exactly
    model = ConvVAE(shape, 4, [4, 8, 8, 8], norm="none")
    assert model(torch.rand(2, *shape)).recon.shape == (2, *shape)


def test_size_not_divisible_by_the_stages_names_the_keys() -> None:
    with pytest.raises(ValueError, match=r"model\.hidden_dims.*data\.image_size"):
        ConvVAE((1, 15, 15), 4, [4, 8], latent="spatial")
    spatial = ConvVAE((1, 16, 16), 2, [4, 8], latent="spatial")
    with pytest.raises(ValueError, match=r"model\.hidden_dims.*data\.image_size"):
        spatial(torch.rand(1, 1, 18, 18))
    vector = ConvVAE((1, 16, 16), 2, [4, 8])
    with pytest.raises(ValueError, match=r"model\.latent=spatial"):
        vector(torch.rand(1, 1, 32, 32))
    with pytest.raises(ValueError, match=r"model\.temporal_downsample"):
        ConvVAE((1, 4, 16, 16), 2, [4, 8], temporal_downsample=3)


@pytest.mark.parametrize("case", ["mlp-mnist-batch", "conv2d-vector-batch-rgb", "conv3d-vector-batch"])
def test_grad_checkpointing_gives_identical_gradients_and_running_stats(case: str) -> None:
    _, cls, kwargs = next(c for c in CASES if c[0] == case)
    models = [make(cls, kwargs, grad_checkpointing=flag) for flag in (False, True)]
    x = batch_for(models[0])
    for model in models:
        torch.manual_seed(7)
        out = model(x)
        (out.recon.square().mean() + out.mean.square().mean() + out.logvar.exp().mean()).backward()
    (plain, ckpt) = (dict(m.named_parameters()) for m in models)
    for name, p in plain.items():
        torch.testing.assert_close(ckpt[name].grad, p.grad, msg=name)
    for (name, a), (_, b) in zip(models[0].named_buffers(), models[1].named_buffers(), strict=True):
        torch.testing.assert_close(b, a, rtol=0, atol=0, msg=name)
    assert models[1].config["grad_checkpointing"] is True


def test_vanilla_vae_architecture_is_expressible() -> None:
    model = ConvVAE((3, 64, 64), 128, [32, 64, 128, 256, 512], norm="batch", activation="leaky_relu")
    assert model.latent_shape == (128,)
    assert model.decoder.proj[1].unflattened_size == (512, 2, 2)
    assert 3_000_000 < count_parameters(model) < 5_000_000


def test_classic_mnist_mlp_has_the_paper_parameter_count() -> None:
    # 784-400-20: fc1 (784·400+400), fc21+fc22 (2·(400·20+20)), fc3 (20·400+400), fc4 (400·784+784)
    assert count_parameters(MLPVAE((1, 28, 28), 20, [400])) == 652_824


# ------------------------------------------------------------------------------------ factories
def test_build_model_dispatches_on_arch_and_passes_config_fields() -> None:
    conv = build_model(
        ModelConfig(arch="conv", latent_dim=3, hidden_dims=[4, 8], norm="group"), (1, 16, 16), "bce"
    )
    assert isinstance(conv, ConvVAE) and conv.config["norm"] == "group" and conv.latent_shape == (3,)
    mlp = build_model(ModelConfig(arch="mlp", latent_dim=3, hidden_dims=[8]), (16,), "gaussian")
    assert isinstance(mlp, MLPVAE) and mlp.recon_logvar is not None
    assert set(MODELS) >= {"conv", "mlp"}


def test_build_model_rejects_impossible_combinations_naming_the_key() -> None:
    with pytest.raises(ValueError, match=r"model\.latent"):
        build_model(ModelConfig(arch="mlp", latent="spatial"), (16,), "bce")
    with pytest.raises(ValueError, match=r"model\.arch=mlp"):
        build_model(ModelConfig(arch="conv"), (16,), "bce")


# ------------------------------------------------------------------------------------ discriminator
@pytest.mark.parametrize(
    ("shape", "logits_size"),
    [((2, 64), (6,)), ((3, 32, 32), (2, 2)), ((1, 4, 32, 32), (4, 2, 2))],
    ids=["1d", "2d", "3d"],
)
@pytest.mark.parametrize("norm", ["batch", "group", "none"])
def test_discriminator_shapes_and_features(
    shape: tuple[int, ...], logits_size: tuple[int, ...], norm: str
) -> None:
    disc = build_discriminator(DiscriminatorConfig(channels=4, layers=3, norm=norm), shape)
    assert disc.output_size(shape[1:]) == logits_size
    x = torch.rand(2, *shape)
    logits, features = disc(x, return_features=True)
    assert logits.shape == (2, 1, *logits_size)
    assert len(features) == 4 and [f.shape[1] for f in features] == [4, 8, 16, 32]
    torch.testing.assert_close(disc(x), logits)
    logits.mean().backward()
    assert all(p.grad is not None for p in disc.parameters())


def test_discriminator_matches_taming_layout_and_init() -> None:
    torch.manual_seed(0)
    disc = PatchDiscriminator(3, dims=2, channels=64, layers=3, norm="batch")
    assert count_parameters(disc) == 2_765_633  # taming NLayerDiscriminator(3, 64, 3)
    assert disc(torch.rand(1, 3, 256, 256)).shape == (1, 1, 30, 30)
    conv = disc.blocks[1][0]
    assert conv.bias is None and abs(conv.weight.std().item() - 0.02) < 2e-3
    assert abs(disc.blocks[1][1].weight.mean().item() - 1.0) < 0.01


def test_discriminator_too_deep_for_the_input_names_the_key() -> None:
    with pytest.raises(ValueError, match=r"loss\.adversarial\.discriminator\.layers"):
        build_discriminator(DiscriminatorConfig(layers=3), (1, 16, 16))
    with pytest.raises(ValueError, match=r"loss\.adversarial\.weight"):
        build_discriminator(DiscriminatorConfig(), (16,))


# ------------------------------------------------------------------------------------ inspection
def test_model_summary_lists_blocks_and_parameter_counts() -> None:
    model = ConvVAE((1, 16, 16), 4, [4, 8], recon_kind="gaussian")
    model.encoder.requires_grad_(False)
    text = model_summary(model, example=torch.rand(2, 1, 16, 16))
    assert f"total params: {count_parameters(model):,}" in text
    assert f"trainable params: {count_parameters(model, trainable_only=True):,}" in text
    assert count_parameters(model, trainable_only=True) < count_parameters(model)
    for block in ("encoder.blocks", "decoder.head", "recon_logvar", "(2, 1, 16, 16)"):
        assert block in text
    assert model.training
