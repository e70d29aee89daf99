"""The bottleneck contract: ``encode(h) -> (z, info)`` for the Gaussian and every quantised kind, the quantiser
terms in stated units (checked against direct computations), codebook statistics, and the objective reading
the terms from ``out.info`` without a KL."""

from __future__ import annotations

import math

import pytest
import torch

from vaekit.config.schema import BottleneckConfig, LossConfig
from vaekit.models import MLPVAE, ConvVAE
from vaekit.models.bottleneck import GaussianBottleneck, QuantizedBottleneck, build_bottleneck, codebook_stats
from vaekit.objectives.objective import VAEObjective
from vaekit.objectives.terms import produced_metrics, vae_terms

KINDS = {
    "vq": {"codebook_size": 16},
    "vq_learned": {"codebook_size": 16, "codebook": "learned"},
    "rvq": {"codebook_size": 16, "num_quantizers": 3},
    "fsq": {"levels": [5, 3, 3]},
    "lfq": {"codebook_size": 16},
}


def make(name: str, channels: int = 4) -> QuantizedBottleneck:
    spec = BottleneckConfig(kind=name.split("_")[0], **KINDS[name]).as_spec()
    bottleneck = build_bottleneck(spec, channels)
    assert isinstance(bottleneck, QuantizedBottleneck)
    return bottleneck


def test_gaussian_bottleneck_reparameterises_with_the_given_noise() -> None:
    h = torch.randn(3, 8, 5, 5)
    noise = torch.randn(3, 4, 5, 5)
    z, info = GaussianBottleneck().encode(h, noise=noise)
    mean, logvar = h[:, :4], h[:, 4:]
    torch.testing.assert_close(z, mean + torch.exp(0.5 * logvar) * noise)
    assert set(info) == {"mean", "logvar"}
    z_mean, _ = GaussianBottleneck().encode(h, sample=False)
    torch.testing.assert_close(z_mean, mean)


@pytest.mark.parametrize("name", list(KINDS))
@pytest.mark.parametrize("shape", [(2, 4, 3, 5), (2, 4), (2, 4, 2, 3, 3)])
def test_quantized_bottleneck_contract(name: str, shape: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    q = make(name)
    h = torch.randn(*shape, requires_grad=True)
    z, info = q.encode(h)
    assert z.shape == h.shape
    positions = math.prod(shape[2:]) if len(shape) > 2 else 1
    indices = info["indices"]
    assert indices.shape == (2, positions, q.num_codebooks)
    assert 0 <= int(indices.min()) and int(indices.max()) < q.codebook_size
    assert info["bottleneck_loss"].dim() == 0
    (z.sum() + info["bottleneck_loss"]).backward()
    assert h.grad is not None and torch.isfinite(h.grad).all()  # the straight-through gradient reaches h
    q.eval()  # in eval mode the codes decode back to exactly the quantised latent
    with torch.no_grad():
        z_eval, info_eval = q.encode(h)
        torch.testing.assert_close(q.decode_indices(info_eval["indices"], tuple(shape[1:])), z_eval)


def test_commit_term_is_the_summed_squared_distance_per_sample() -> None:
    torch.manual_seed(0)
    q = make("vq")
    h = torch.randn(3, 4, 2, 2)
    z, info = q.encode(h)
    expected = ((h - z.detach()) ** 2).sum() / h.shape[0]  # Σ over a sample's latent elements, batch mean
    torch.testing.assert_close(info["commit"], expected)
    torch.testing.assert_close(info["bottleneck_loss"], 0.25 * expected)


def test_learned_codebook_is_trained_by_the_codebook_loss_and_ema_codebook_is_not_a_parameter() -> None:
    torch.manual_seed(0)
    learned = make("vq_learned")
    h = torch.randn(4, 4, 3, 3)
    _, info = learned.encode(h)
    codebook = learned.quantizer.codebook
    assert isinstance(learned.quantizer._codebook.embed, torch.nn.Parameter)
    info["codebook"].backward()
    assert learned.quantizer._codebook.embed.grad is not None and learned.quantizer._codebook.embed.grad.abs().sum() > 0
    torch.testing.assert_close(info["codebook"], info["commit"])  # same distance, gradients to different sides
    assert codebook.shape == (16, 4)
    ema = make("vq")
    assert not any(p.requires_grad for p in ema.quantizer._codebook.parameters())
    assert any(name.endswith("embed_avg") for name, _ in ema.named_buffers())  # EMA state is checkpointed


def test_lfq_entropy_is_the_library_entropy_summed_over_positions() -> None:
    torch.manual_seed(0)
    q = make("lfq")
    h = torch.randn(2, 4, 3, 3)
    _, info = q.encode(h)
    torch.manual_seed(0)
    (_, _, _), breakdown = q.quantizer(h.flatten(2).transpose(1, 2), return_loss_breakdown=True)
    per_position = breakdown.per_sample_entropy - breakdown.batch_entropy
    torch.testing.assert_close(info["entropy"], per_position * 9)
    q.eval()
    assert "entropy" not in q.encode(h)[1]  # the library computes it in training only


def test_fsq_has_no_loss_and_its_codebook_is_the_product_of_levels() -> None:
    q = make("fsq")
    _, info = q.encode(torch.randn(2, 4, 2, 2))
    assert q.codebook_size == 45 and "commit" not in info
    assert float(info["bottleneck_loss"]) == 0.0
    assert q.bits_per_position == pytest.approx(math.log2(45))


def test_rvq_rate_counts_every_quantizer() -> None:
    assert make("rvq").bits_per_position == pytest.approx(3 * 4.0)


def test_codebook_stats_against_direct_counts() -> None:
    uniform = torch.ones(1, 8)
    assert codebook_stats(uniform) == pytest.approx({"code_usage": 1.0, "perplexity": 8.0, "dead_codes": 0.0})
    counts = torch.tensor([[3.0, 1.0, 0.0, 0.0]])
    p = torch.tensor([0.75, 0.25])
    stats = codebook_stats(counts)
    assert stats["code_usage"] == 0.5 and stats["dead_codes"] == 2.0
    assert stats["perplexity"] == pytest.approx(math.exp(-(p * p.log()).sum().item()))


@pytest.mark.parametrize("family", ["mlp", "conv"])
def test_quantized_model_output_has_z_q_as_mean_and_no_logvar(family: str) -> None:
    spec = BottleneckConfig(kind="fsq", levels=[5, 5]).as_spec()
    if family == "mlp":
        model = MLPVAE((1, 8, 8), 2, [16], recon_kind="mse", bottleneck=spec)
    else:
        model = ConvVAE((1, 8, 8), 2, [4, 8], latent="spatial", norm="group", recon_kind="mse", bottleneck=spec)
    out = model(torch.rand(3, 1, 8, 8))
    assert out.logvar is None and torch.equal(out.mean, out.z)
    assert "indices" in out.info
    mean, logvar = model.encode(torch.rand(3, 1, 8, 8))
    assert logvar is None and mean.shape == out.mean.shape
    assert model.sample(2, generator=torch.Generator().manual_seed(0)).shape == (2, 1, 8, 8)


def test_objective_adds_the_bottleneck_loss_and_logs_its_terms_without_kl() -> None:
    torch.manual_seed(0)
    spec = BottleneckConfig(kind="lfq", codebook_size=16).as_spec()
    model = ConvVAE((1, 8, 8), 4, [4, 8], latent="spatial", norm="group", recon_kind="mse", bottleneck=spec)
    x = torch.rand(2, 1, 8, 8)
    out = model(x)
    total, terms = VAEObjective(LossConfig(recon="mse"))(x, out, step=0)
    assert "kl" not in terms and "kl_weight" not in terms
    assert {"commit", "entropy", "recon", "mse", "loss"} <= set(terms)
    torch.testing.assert_close(total, terms["recon"] + out.info["bottleneck_loss"].detach())
    torch.testing.assert_close(out.info["bottleneck_loss"], 0.25 * out.info["commit"] + 0.1 * out.info["entropy"])


def test_declared_terms_follow_the_bottleneck() -> None:
    loss = LossConfig(recon="mse")
    assert vae_terms(loss, BottleneckConfig(kind="vq", codebook="learned")) == {"loss", "recon", "mse", "commit",
                                                                                 "codebook"}
    metrics = produced_metrics(loss, (), BottleneckConfig(kind="lfq"))
    assert {"train/entropy", "val/code_usage", "val/perplexity", "val/dead_codes", "val/bits_per_element"} <= metrics
    assert "val/entropy" not in metrics and "val/kl" not in metrics
    assert "val/bits_per_element" in produced_metrics(loss)  # Gaussian: the KL in bits per element
