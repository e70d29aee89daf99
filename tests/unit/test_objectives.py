"""Unit tests for vaekit.objectives: every term against an independent reference (torch.distributions,
auraloss, hand formulas), plus the gradient paths of VAEObjective and DiscriminatorObjective.
(The perceptual loss has its own file, test_perceptual.py.)"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.distributions import Bernoulli, Laplace, Normal, kl_divergence

from vaekit.config.schema import (
    AdversarialConfig,
    KLConfig,
    LossConfig,
    PerceptualConfig,
    SpectralConfig,
)
from vaekit.objectives import (
    DiscriminatorObjective,
    VAEObjective,
    active_units,
    adaptive_weight,
    capacity,
    corrupt,
    d_hinge_loss,
    d_nonsaturating_loss,
    feature_matching_loss,
    g_hinge_loss,
    g_nonsaturating_loss,
    kl_loss,
    kl_per_element,
    kl_stats,
    kl_weight,
    likelihood_mean,
    mse_per_element,
    multi_resolution_stft_loss,
    r1_penalty,
    reconstruction_nll,
)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


# ---------------------------------------------------------------------------------- reconstruction
def test_mse_nll_is_sum_of_squared_error() -> None:
    recon, target = torch.randn(3, 2, 4, 4), torch.rand(3, 2, 4, 4)
    expected = ((recon - target) ** 2).reshape(3, -1).sum(1)
    torch.testing.assert_close(reconstruction_nll("mse", recon, target), expected)


def test_l1_nll_matches_laplace_log_prob_up_to_constant() -> None:
    recon, target = torch.randn(3, 5), torch.randn(3, 5)
    log_prob = Laplace(recon, torch.ones_like(recon)).log_prob(target)
    expected = -(log_prob + math.log(2.0)).sum(1)
    torch.testing.assert_close(reconstruction_nll("l1", recon, target), expected)


@pytest.mark.parametrize("density", [0.5, 0.1], ids=["binary", "multi_hot"])
def test_bce_nll_matches_bernoulli_log_prob(density: float) -> None:
    logits = torch.randn(4, 12)
    target = (torch.rand(4, 12) < density).float()
    expected = -Bernoulli(logits=logits).log_prob(target).sum(1)
    torch.testing.assert_close(reconstruction_nll("bce", logits, target), expected)


def test_bce_nll_accepts_soft_targets() -> None:
    logits, target = torch.randn(2, 1, 3, 3), torch.rand(2, 1, 3, 3)
    p = torch.sigmoid(logits)
    expected = -(target * torch.log(p) + (1 - target) * torch.log(1 - p)).reshape(2, -1).sum(1)
    torch.testing.assert_close(reconstruction_nll("bce", logits, target), expected)


def test_gaussian_nll_with_scalar_logvar_matches_normal_log_prob() -> None:
    recon, target, logvar = torch.randn(3, 2, 5), torch.randn(3, 2, 5), torch.tensor(-0.7)
    expected = -Normal(recon, torch.exp(0.5 * logvar)).log_prob(target).reshape(3, -1).sum(1)
    torch.testing.assert_close(reconstruction_nll("gaussian", recon, target, logvar), expected)


def test_gaussian_nll_with_per_element_logvar_matches_normal_log_prob() -> None:
    recon, target, logvar = torch.randn(3, 6), torch.randn(3, 6), torch.randn(3, 6)
    expected = -Normal(recon, torch.exp(0.5 * logvar)).log_prob(target).sum(1)
    torch.testing.assert_close(reconstruction_nll("gaussian", recon, target, logvar), expected)


def test_gaussian_nll_without_logvar_is_an_error() -> None:
    with pytest.raises(ValueError, match="recon_logvar"):
        reconstruction_nll("gaussian", torch.zeros(2, 3), torch.zeros(2, 3))


def test_unknown_recon_kind_names_the_config_key() -> None:
    with pytest.raises(ValueError, match="loss.recon"):
        reconstruction_nll("poisson", torch.zeros(2, 3), torch.zeros(2, 3))


def test_reconstruction_nll_is_fp32_for_bf16_inputs() -> None:
    recon, target = torch.randn(2, 8).bfloat16(), torch.rand(2, 8)
    assert reconstruction_nll("mse", recon, target).dtype == torch.float32


def test_likelihood_mean_is_sigmoid_for_bce_and_identity_otherwise() -> None:
    recon = torch.randn(2, 3)
    torch.testing.assert_close(likelihood_mean("bce", recon), torch.sigmoid(recon))
    for kind in ("mse", "l1", "gaussian"):
        assert likelihood_mean(kind, recon) is recon


def test_mse_per_element_is_mean_over_data_dims() -> None:
    mean, target = torch.randn(3, 2, 4), torch.randn(3, 2, 4)
    torch.testing.assert_close(mse_per_element(mean, target), ((mean - target) ** 2).mean((1, 2)))


# ---------------------------------------------------------------------------------------------- KL
def test_kl_per_element_matches_torch_distributions() -> None:
    mean, logvar = torch.randn(4, 6), torch.randn(4, 6)
    expected = kl_divergence(Normal(mean, torch.exp(0.5 * logvar)), Normal(0.0, 1.0))
    torch.testing.assert_close(kl_per_element(mean, logvar), expected)


def test_kl_loss_sums_over_all_latent_elements() -> None:
    mean, logvar = torch.randn(3, 4, 2, 2), torch.randn(3, 4, 2, 2)
    expected = kl_divergence(Normal(mean, torch.exp(0.5 * logvar)), Normal(0.0, 1.0)).reshape(3, -1).sum(1)
    torch.testing.assert_close(kl_loss(mean, logvar), expected)


def _vector_posterior_with_one_small_dim() -> tuple[Tensor, Tensor]:
    """Dim 0 has KL ≈ 0.005 nats (under a 0.5 floor), dim 1 about 2 nats (above it)."""
    mean = torch.tensor([[0.1, 2.0], [-0.1, 2.1], [0.05, 1.9]], requires_grad=True)
    logvar = torch.zeros(3, 2, requires_grad=True)
    return mean, logvar


def test_free_bits_zeroes_gradient_below_floor() -> None:
    mean, logvar = _vector_posterior_with_one_small_dim()
    kl_loss(mean, logvar, free_bits=0.5).mean().backward()
    assert torch.all(mean.grad[:, 0] == 0) and torch.all(logvar.grad[:, 0] == 0)


def test_free_bits_keeps_ordinary_gradient_above_floor() -> None:
    mean, logvar = _vector_posterior_with_one_small_dim()
    kl_loss(mean, logvar, free_bits=0.5).mean().backward()
    grad_with_floor = mean.grad[:, 1].clone()
    mean.grad = None
    kl_loss(mean, logvar).mean().backward()
    torch.testing.assert_close(grad_with_floor, mean.grad[:, 1])
    torch.testing.assert_close(grad_with_floor, mean.detach()[:, 1] / 3)


def test_free_bits_batch_mean_equals_clamped_total_for_vector_latent() -> None:
    mean, logvar = _vector_posterior_with_one_small_dim()
    per_dim = kl_per_element(mean, logvar).mean(0)
    expected = torch.clamp(per_dim, min=0.5).sum()
    torch.testing.assert_close(kl_loss(mean, logvar, free_bits=0.5).mean(), expected)


def test_free_bits_treats_channels_of_spatial_latent_as_dimensions() -> None:
    mean = torch.randn(4, 3, 2, 5) * torch.tensor([0.05, 1.0, 2.0]).view(1, 3, 1, 1)
    mean.requires_grad_(True)
    logvar = torch.zeros(4, 3, 2, 5)
    result = kl_loss(mean, logvar, free_bits=0.3)
    per_channel = kl_per_element(mean, logvar).mean((0, 2, 3))  # nats per position
    assert per_channel[0] < 0.3 < per_channel[1]
    torch.testing.assert_close(result.mean(), 10 * torch.clamp(per_channel, min=0.3).sum())
    result.mean().backward()
    assert torch.all(mean.grad[:, 0] == 0) and torch.all(mean.grad[:, 1:] != 0)


def test_free_bits_zero_is_plain_kl() -> None:
    mean, logvar = torch.randn(3, 4), torch.randn(3, 4)
    torch.testing.assert_close(kl_loss(mean, logvar, free_bits=0.0), kl_per_element(mean, logvar).sum(1))


def test_kl_stats_reports_mean_and_max_over_dimensions() -> None:
    mean, logvar = torch.randn(5, 3), torch.randn(5, 3)
    per_dim = kl_per_element(mean, logvar).mean(0)
    stats = kl_stats(mean, logvar)
    torch.testing.assert_close(stats["kl_dim_mean"], per_dim.mean())
    torch.testing.assert_close(stats["kl_dim_max"], per_dim.max())


def test_active_units_counts_dims_whose_mean_varies_over_data() -> None:
    means = torch.randn(200, 5) * torch.tensor([1.0, 0.5, 0.01, 0.0, 2.0])
    assert active_units(means) == 3
    spatial = torch.randn(200, 4, 3, 3) * torch.tensor([1.0, 0.0, 0.01, 0.3]).view(1, 4, 1, 1)
    assert active_units(spatial, threshold=0.01) == 2


# --------------------------------------------------------------------------------------- schedules
def test_constant_schedule_is_beta_at_every_step() -> None:
    cfg = KLConfig(schedule="constant")
    assert [kl_weight(s, cfg, 4.0) for s in (0, 10, 10**6)] == [4.0, 4.0, 4.0]


def test_linear_schedule_ramps_from_zero_to_beta_over_warmup() -> None:
    cfg = KLConfig(schedule="linear", warmup_steps=100)
    assert [kl_weight(s, cfg, 2.0) for s in (0, 25, 100, 500)] == [0.0, 0.5, 2.0, 2.0]
    assert kl_weight(0, KLConfig(schedule="linear", warmup_steps=0), 2.0) == 2.0


def test_cyclical_schedule_ramps_then_holds_within_each_cycle() -> None:
    cfg = KLConfig(schedule="cyclical", cycle_steps=100, ratio=0.5)
    steps = (0, 25, 50, 99, 100, 125, 260)
    assert [kl_weight(s, cfg, 1.0) for s in steps] == pytest.approx([0.0, 0.5, 1.0, 1.0, 0.0, 0.5, 1.0])


def test_capacity_rises_linearly_to_its_maximum() -> None:
    cfg = KLConfig(schedule="capacity", capacity_max=20.0, capacity_steps=1000)
    assert [capacity(s, cfg) for s in (0, 250, 1000, 5000)] == [0.0, 5.0, 20.0, 20.0]
    assert kl_weight(300, cfg, 3.0) == 3.0


# ------------------------------------------------------------------------------------------ denoise
def test_corrupt_is_identity_when_off() -> None:
    x = torch.rand(2, 3)
    assert corrupt(x) is x


def test_corrupt_leaves_target_unchanged() -> None:
    x = torch.rand(4, 1, 8, 8)
    clean = x.clone()
    noisy = corrupt(x, noise_std=0.5, mask_rate=0.3)
    assert torch.equal(x, clean) and not torch.equal(noisy, clean)


def test_corrupt_masks_about_the_requested_fraction_without_rescaling() -> None:
    x = torch.ones(20, 1000)
    out = corrupt(x, mask_rate=0.3)
    assert abs((out == 0).float().mean().item() - 0.3) < 0.01
    assert torch.all((out == 0) | (out == 1))


def test_corrupt_adds_noise_of_the_requested_std() -> None:
    out = corrupt(torch.zeros(20, 1000), noise_std=0.2)
    assert abs(out.std().item() - 0.2) < 0.005 and abs(out.mean().item()) < 0.005


def test_corrupt_is_reproducible_with_a_generator() -> None:
    x = torch.rand(3, 10)
    a = corrupt(x, 0.1, 0.2, generator=torch.Generator().manual_seed(7))
    b = corrupt(x, 0.1, 0.2, generator=torch.Generator().manual_seed(7))
    assert torch.equal(a, b)


# ----------------------------------------------------------------------------------------- spectral
_RES = {"fft_sizes": [64, 128, 32], "hop_sizes": [16, 32, 8], "win_lengths": [48, 96, 24]}


def _auraloss(**weights: float) -> nn.Module:
    from auraloss.freq import MultiResolutionSTFTLoss

    return MultiResolutionSTFTLoss(**_RES, eps=1e-7, **weights)


def test_spectral_loss_matches_auraloss_on_one_sample() -> None:
    pred, target = torch.randn(1, 2, 512) * 0.3, torch.randn(1, 2, 512) * 0.3
    ours = multi_resolution_stft_loss(pred, target, **_RES, w_sc=1.0, w_log_mag=1.0, w_lin_mag=0.5)
    torch.testing.assert_close(ours[0], _auraloss(w_sc=1.0, w_log_mag=1.0, w_lin_mag=0.5)(pred, target))


def test_spectral_loss_per_sample_matches_auraloss_on_each_sample() -> None:
    pred, target = torch.randn(3, 1, 400), torch.randn(3, 1, 400)
    ours = multi_resolution_stft_loss(pred, target, **_RES)
    reference = _auraloss()
    expected = torch.stack([reference(pred[i : i + 1], target[i : i + 1]) for i in range(3)])
    torch.testing.assert_close(ours, expected)


def test_spectral_magnitude_terms_batch_mean_matches_auraloss() -> None:
    pred, target = torch.randn(3, 2, 300), torch.randn(3, 2, 300)
    weights = {"w_sc": 0.0, "w_log_mag": 1.0, "w_lin_mag": 2.0}
    ours = multi_resolution_stft_loss(pred, target, **_RES, **weights).mean()
    torch.testing.assert_close(ours, _auraloss(**weights)(pred, target))


def test_spectral_loss_rejects_clips_shorter_than_the_fft() -> None:
    with pytest.raises(ValueError, match="loss.spectral.fft_sizes"):
        multi_resolution_stft_loss(torch.zeros(1, 1, 40), torch.zeros(1, 1, 40), [128], [32], [128])


# ------------------------------------------------------------------------------------- adversarial
def test_discriminator_losses_match_hand_values() -> None:
    real, fake = torch.tensor([2.0, 0.5, -1.0]), torch.tensor([-2.0, 0.0, 1.0])
    # hinge: relu(1 - real) = [0, .5, 2] → 5/6; relu(1 + fake) = [0, 1, 2] → 1
    torch.testing.assert_close(d_hinge_loss(real, fake), torch.tensor(0.5 * (5 / 6 + 1.0)))
    softplus = lambda v: math.log1p(math.exp(v))  # noqa: E731
    expected = 0.5 * (
        sum(softplus(-r) for r in real.tolist()) / 3 + sum(softplus(f) for f in fake.tolist()) / 3
    )
    torch.testing.assert_close(d_nonsaturating_loss(real, fake), torch.tensor(expected))


def test_generator_losses_match_hand_values() -> None:
    fake = torch.tensor([-2.0, 0.0, 1.0])
    torch.testing.assert_close(g_hinge_loss(fake), torch.tensor(1 / 3))
    expected = (math.log1p(math.exp(2.0)) + math.log(2.0) + math.log1p(math.exp(-1.0))) / 3
    torch.testing.assert_close(g_nonsaturating_loss(fake), torch.tensor(expected))


def test_r1_penalty_on_linear_discriminator_is_squared_weight_norm() -> None:
    linear = nn.Linear(6, 1)
    real = torch.randn(4, 6, requires_grad=True)
    penalty = r1_penalty(real, linear(real))
    torch.testing.assert_close(penalty, linear.weight.pow(2).sum())
    penalty.backward()  # create_graph: the penalty trains the discriminator
    torch.testing.assert_close(linear.weight.grad, 2 * linear.weight.detach())


def test_adaptive_weight_is_ratio_of_gradient_norms_at_last_layer() -> None:
    weight = torch.randn(3, 4, requires_grad=True)
    direction = torch.randn(3, 4)
    nll, g = (weight**2).sum(), (weight * direction).sum()  # gradients 2W and direction
    expected = (2 * weight.detach()).norm() / (direction.norm() + 1e-4)
    result = adaptive_weight(nll, g, weight)
    torch.testing.assert_close(result, expected)
    assert not result.requires_grad
    torch.testing.assert_close(adaptive_weight(nll, g, weight, max_weight=0.01), torch.tensor(0.01))


def test_feature_matching_is_mean_l1_over_layers_and_detaches_real() -> None:
    real = [torch.randn(2, 3, requires_grad=True), torch.randn(2, 5, requires_grad=True)]
    fake = [torch.randn(2, 3, requires_grad=True), torch.randn(2, 5, requires_grad=True)]
    loss = feature_matching_loss(real, fake)
    expected = 0.5 * ((real[0] - fake[0]).abs().mean() + (real[1] - fake[1]).abs().mean())
    torch.testing.assert_close(loss, expected)
    loss.backward()
    assert all(r.grad is None for r in real) and all(f.grad is not None for f in fake)


# -------------------------------------------------------------------------------------- objectives
@dataclass
class Output:
    recon: Tensor
    mean: Tensor
    logvar: Tensor
    z: Tensor
    recon_logvar: Tensor | None = None


class TinyVAE(nn.Module):
    """1×16×16 images, 4 latent dims; ``decoder[-1].weight`` is the last layer."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Conv2d(1, 4, 4, stride=4), nn.Flatten(), nn.Linear(64, 8))
        self.decoder = nn.Sequential(
            nn.Linear(4, 64), nn.Unflatten(1, (4, 4, 4)), nn.ConvTranspose2d(4, 1, 4, stride=4)
        )

    @property
    def last_layer(self) -> Tensor:
        return self.decoder[-1].weight

    def forward(self, x: Tensor) -> Output:
        mean, logvar = self.encoder(x).chunk(2, dim=1)
        z = mean + torch.randn_like(mean) * torch.exp(0.5 * logvar)
        return Output(self.decoder(z), mean, logvar, z)


class TinyDiscriminator(nn.Module):
    def __init__(self, channels: int = 1) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            [nn.Conv2d(channels, 4, 3, stride=2, padding=1), nn.Conv2d(4, 1, 3, padding=1)]
        )

    def forward(self, x: Tensor, return_features: bool = False) -> Tensor | tuple[Tensor, list[Tensor]]:
        features = [F.leaky_relu(self.layers[0](x), 0.2)]
        logits = self.layers[1](features[0])
        return (logits, features) if return_features else logits


def _loss_cfg(**overrides: object) -> LossConfig:
    base: dict[str, object] = {"recon": "bce", "recon_weight": 1.0, "beta": 1.0}
    return LossConfig(**{**base, **overrides})


def _grads(module: nn.Module) -> list[Tensor | None]:
    return [p.grad for p in module.parameters()]


def _has_grad(module: nn.Module) -> bool:
    return any(g is not None and g.abs().sum() > 0 for g in _grads(module))


def test_vae_objective_total_is_weighted_sum_of_its_terms() -> None:
    cfg = _loss_cfg(
        recon="mse",
        recon_weight=2.0,
        beta=0.5,
        perceptual=PerceptualConfig(kind="vgg", pretrained=False, weight=0.3),
        adversarial=AdversarialConfig(weight=0.1, adaptive=False, feature_matching=0.7),
    )
    vae, disc, x = TinyVAE(), TinyDiscriminator(), torch.rand(3, 1, 16, 16)
    total, terms = VAEObjective(cfg)(x, vae(x), step=5, discriminator=disc)
    # the perceptual distance is added per element (N = 1·16·16), as latent-diffusion adds LPIPS per pixel
    expected = 2.0 * terms["recon"] + 0.5 * terms["kl"] + 0.3 * 256 * terms["perceptual"]
    expected = expected + 0.1 * terms["g_adv"] + 0.7 * terms["feature_matching"]
    torch.testing.assert_close(total.detach(), expected)
    torch.testing.assert_close(terms["loss"], total.detach())
    assert terms["kl_weight"].item() == 0.5 and terms["adv_weight"].item() == pytest.approx(0.1)


def test_vae_objective_terms_are_detached_zero_dim_tensors() -> None:
    vae, x = TinyVAE(), torch.rand(2, 1, 16, 16)
    _, terms = VAEObjective(_loss_cfg(adversarial=AdversarialConfig(weight=0.5)))(
        x, vae(x), step=0, discriminator=TinyDiscriminator(), last_layer=vae.last_layer
    )
    assert {"loss", "recon", "mse", "kl", "kl_weight", "g_adv", "adv_weight"} <= terms.keys()
    assert all(v.dim() == 0 and not v.requires_grad for v in terms.values())


def test_vae_objective_reports_recon_mse_and_kl_in_per_sample_units() -> None:
    vae, x = TinyVAE(), (torch.rand(3, 1, 16, 16) > 0.5).float()
    out = vae(x)
    _, terms = VAEObjective(_loss_cfg(kl=KLConfig(free_bits=5.0)))(x, out, step=0)
    torch.testing.assert_close(terms["recon"], reconstruction_nll("bce", out.recon, x).mean().detach())
    torch.testing.assert_close(terms["mse"], ((torch.sigmoid(out.recon) - x) ** 2).mean().detach())
    torch.testing.assert_close(terms["kl"], kl_loss(out.mean, out.logvar).mean().detach())  # before free bits


def test_vae_objective_uses_free_bits_in_the_loss() -> None:
    vae, x = TinyVAE(), torch.rand(3, 1, 16, 16)
    out = vae(x)
    total, terms = VAEObjective(_loss_cfg(recon_weight=0.0, kl=KLConfig(free_bits=5.0)))(x, out, step=0)
    torch.testing.assert_close(total, kl_loss(out.mean, out.logvar, 5.0).mean())
    assert total.item() >= 4 * 5.0 > terms["kl"].item()


def test_vae_objective_capacity_schedule_is_gamma_times_distance_to_target() -> None:
    cfg = _loss_cfg(
        recon_weight=0.0, kl=KLConfig(schedule="capacity", capacity_max=10.0, capacity_steps=100, gamma=3.0)
    )
    vae, x = TinyVAE(), torch.rand(2, 1, 16, 16)
    total, terms = VAEObjective(cfg)(x, vae(x), step=40)
    assert terms["capacity"].item() == pytest.approx(4.0)
    torch.testing.assert_close(total.detach(), 3.0 * (terms["kl"] - 4.0).abs())


def test_vae_objective_follows_the_kl_schedule() -> None:
    cfg = _loss_cfg(beta=2.0, kl=KLConfig(schedule="linear", warmup_steps=10))
    vae, x = TinyVAE(), torch.rand(2, 1, 16, 16)
    out = vae(x)
    total, terms = VAEObjective(cfg)(x, out, step=5)
    assert terms["kl_weight"].item() == 1.0
    torch.testing.assert_close(total.detach(), terms["recon"] + terms["kl"])


def test_gaussian_recon_gradient_reaches_the_learned_logvar() -> None:
    vae, x = TinyVAE(), torch.rand(2, 1, 16, 16)
    out = vae(x)
    out.recon_logvar = torch.zeros((), requires_grad=True)
    total, _ = VAEObjective(_loss_cfg(recon="gaussian"))(x, out, step=0)
    total.backward()
    assert out.recon_logvar.grad is not None and out.recon_logvar.grad != 0


@pytest.mark.parametrize(
    ("overrides", "encoder", "decoder"),
    [
        ({"beta": 0.0}, True, True),  # recon reaches both (decoder directly, encoder through z)
        ({"recon_weight": 0.0}, True, False),  # KL depends on the encoder only
        (
            {"recon_weight": 0.0, "beta": 0.0, "perceptual": PerceptualConfig(kind="vgg", pretrained=False)},
            True,
            True,
        ),
        (
            {"recon_weight": 0.0, "beta": 0.0, "adversarial": AdversarialConfig(weight=1.0, adaptive=False)},
            True,
            True,
        ),
    ],
    ids=["recon", "kl", "perceptual", "adversarial"],
)
def test_each_vae_objective_term_reaches_the_right_parameters(
    overrides: dict, encoder: bool, decoder: bool
) -> None:
    vae, disc, x = TinyVAE(), TinyDiscriminator(), torch.rand(2, 1, 16, 16)
    total, _ = VAEObjective(_loss_cfg(**overrides))(x, vae(x), step=0, discriminator=disc)
    total.backward()
    assert _has_grad(vae.encoder) is encoder
    assert _has_grad(vae.decoder) is decoder


def test_spectral_term_reaches_the_reconstruction() -> None:
    spectral = SpectralConfig(weight=0.5, **_RES)
    cfg = _loss_cfg(recon="mse", recon_weight=0.0, beta=0.0, spectral=spectral)
    target = torch.randn(2, 1, 256)
    recon = torch.randn(2, 1, 256, requires_grad=True)
    out = Output(recon, torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(2, 3))
    total, terms = VAEObjective(cfg)(target, out, step=0)
    torch.testing.assert_close(total.detach(), 0.5 * terms["spectral"])  # per clip: λ·MRSTFT, not ×N
    total.backward()
    assert recon.grad is not None and recon.grad.abs().sum() > 0


def test_adaptive_weight_applies_only_in_training_with_grad() -> None:
    cfg = _loss_cfg(adversarial=AdversarialConfig(weight=0.5, adaptive=True))
    vae, disc, x = TinyVAE(), TinyDiscriminator(), torch.rand(2, 1, 16, 16)
    objective = VAEObjective(cfg)
    out = vae(x)
    _, terms = objective(x, out, step=0, discriminator=disc, last_layer=vae.last_layer)
    nll = reconstruction_nll("bce", out.recon, x).mean()
    g = g_hinge_loss(disc(torch.sigmoid(out.recon)))
    torch.testing.assert_close(terms["adv_weight"], 0.5 * adaptive_weight(nll, g, vae.last_layer))
    objective.eval()
    _, terms = objective(x, out, step=0, discriminator=disc, last_layer=vae.last_layer)
    assert terms["adv_weight"].item() == 0.5


def test_adaptive_weight_without_last_layer_falls_back_to_the_plain_weight() -> None:
    # the trainer passes no last_layer when the decoder is frozen: nothing to balance against
    vae, x = TinyVAE(), torch.rand(2, 1, 16, 16)
    objective = VAEObjective(_loss_cfg(adversarial=AdversarialConfig(weight=0.5)))
    _, terms = objective(x, vae(x), step=0, discriminator=TinyDiscriminator())
    assert terms["adv_weight"].item() == pytest.approx(0.5)


def test_adversarial_term_waits_for_start_step() -> None:
    cfg = _loss_cfg(adversarial=AdversarialConfig(weight=0.5, start_step=10, adaptive=False))
    vae, disc, x = TinyVAE(), TinyDiscriminator(), torch.rand(2, 1, 16, 16)
    out = vae(x)
    _, before = VAEObjective(cfg)(x, out, step=9, discriminator=disc)
    _, after = VAEObjective(cfg)(x, out, step=10, discriminator=disc)
    assert "g_adv" not in before and "g_adv" in after


def test_vae_objective_never_syncs_with_the_host(monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = _loss_cfg(
        kl=KLConfig(schedule="capacity", free_bits=0.1),
        adversarial=AdversarialConfig(weight=0.5, feature_matching=1.0),
    )
    vae, disc, x = TinyVAE(), TinyDiscriminator(), torch.rand(2, 1, 16, 16)
    objective = VAEObjective(cfg)

    def no_sync(*args: object, **kwargs: object) -> None:
        raise AssertionError("host sync in the objective")

    monkeypatch.setattr(torch.Tensor, "item", no_sync)
    monkeypatch.setattr(torch.Tensor, "tolist", no_sync)
    monkeypatch.setattr(torch.Tensor, "__bool__", no_sync)
    objective(x, vae(x), step=3, discriminator=disc, last_layer=vae.last_layer)


def test_discriminator_objective_gradient_reaches_only_the_discriminator() -> None:
    cfg = _loss_cfg(adversarial=AdversarialConfig(weight=1.0, r1_weight=1.0))
    vae, disc, x = TinyVAE(), TinyDiscriminator(), torch.rand(2, 1, 16, 16)
    total, _ = DiscriminatorObjective(cfg)(x, vae(x).recon, step=0, discriminator=disc)
    total.backward()
    assert _has_grad(disc)
    assert all(g is None for g in _grads(vae))


def test_discriminator_objective_terms_match_hand_computation() -> None:
    cfg = _loss_cfg(adversarial=AdversarialConfig(weight=1.0, loss="non_saturating", disc_weight=0.5))
    disc, real, fake_logits = TinyDiscriminator(), torch.rand(3, 1, 16, 16), torch.randn(3, 1, 16, 16)
    total, terms = DiscriminatorObjective(cfg)(real, fake_logits, step=0, discriminator=disc)
    logits_real, logits_fake = (
        disc(real),
        disc(torch.sigmoid(fake_logits)),
    )  # bce: the discriminator sees sigmoid
    torch.testing.assert_close(terms["d_loss"], d_nonsaturating_loss(logits_real, logits_fake).detach())
    torch.testing.assert_close(total.detach(), 0.5 * terms["d_loss"])
    torch.testing.assert_close(terms["d_real"], logits_real.mean().detach())
    torch.testing.assert_close(terms["d_fake"], logits_fake.mean().detach())
    accuracy = 0.5 * ((logits_real > 0).float().mean() + (logits_fake < 0).float().mean())
    torch.testing.assert_close(terms["d_acc"], accuracy)


def test_discriminator_objective_adds_lazy_r1_every_n_steps() -> None:
    cfg = _loss_cfg(recon="mse", adversarial=AdversarialConfig(weight=1.0, r1_weight=2.0, r1_every=4))
    disc, real, fake = TinyDiscriminator(), torch.rand(2, 1, 16, 16), torch.rand(2, 1, 16, 16)
    objective = DiscriminatorObjective(cfg)
    _, skipped = objective(real, fake, step=3, discriminator=disc)
    assert "r1" not in skipped
    total, terms = objective(real, fake, step=4, discriminator=disc)
    torch.testing.assert_close(total.detach(), terms["d_loss"] + 2.0 * 4 * terms["r1"])
    leaf = real.clone().requires_grad_(True)
    torch.testing.assert_close(terms["r1"], r1_penalty(leaf, disc(leaf)).detach())
    assert not real.requires_grad


def test_discriminator_objective_is_active_after_start_step_only() -> None:
    objective = DiscriminatorObjective(_loss_cfg(adversarial=AdversarialConfig(weight=1.0, start_step=5)))
    assert not objective.active(4) and objective.active(5)
    assert not DiscriminatorObjective(_loss_cfg()).active(100)
