"""The von Mises-Fisher latent: Bessel function, KL constant, Wood's sampler, poles."""

import math

import numpy as np
import pytest
import torch

from app.model.modules.latents import (
    Posterior,
    VMFLatent,
    log_bessel_iv,
    sample_vmf_cosines,
    vmf_kl_to_uniform,
)


@pytest.mark.parametrize("x", [0.1, 1.0, 7.5, 60.0, 400.0])
def test_log_bessel_matches_closed_form_of_half_order(x):
    # I_{1/2}(x) = sqrt(2 / (pi x)) sinh(x)
    expected = 0.5 * math.log(2 / (math.pi * x)) + x + math.log1p(-math.exp(-2 * x)) - math.log(2)
    assert log_bessel_iv(0.5, x) == pytest.approx(expected, rel=1e-10, abs=1e-10)


def test_log_bessel_matches_tabulated_integer_orders():
    assert math.exp(log_bessel_iv(0, 1.0)) == pytest.approx(1.2660658777520082, rel=1e-12)
    assert math.exp(log_bessel_iv(1, 2.0)) == pytest.approx(1.5906368546373291, rel=1e-12)


def mean_cosine(kappa: float, dim: int) -> float:
    return math.exp(log_bessel_iv(dim / 2, kappa) - log_bessel_iv(dim / 2 - 1, kappa))


@pytest.mark.parametrize(("kappa", "dim"), [(5.0, 3), (50.0, 16), (100.0, 128), (1000.0, 64)])
def test_wood_sampler_has_the_vmf_mean_cosine(kappa, dim):
    w = sample_vmf_cosines(np.random.default_rng(1), kappa, dim, (20000,))
    assert np.all((w >= -1) & (w <= 1))
    assert w.mean() == pytest.approx(mean_cosine(kappa, dim), abs=0.01)


def test_kl_is_positive_grows_with_kappa_and_vanishes_towards_uniform():
    assert vmf_kl_to_uniform(1e-3, 16) == pytest.approx(0.0, abs=1e-5)
    kls = [vmf_kl_to_uniform(k, 16) for k in (1.0, 10.0, 100.0)]
    assert 0 < kls[0] < kls[1] < kls[2]


def test_kl_in_three_dimensions_matches_its_closed_form():
    # d = 3: KL = kappa coth(kappa) - 1 + log(kappa / sinh(kappa))
    kappa = 4.0
    expected = kappa / math.tanh(kappa) - 1 + math.log(kappa / math.sinh(kappa))
    assert vmf_kl_to_uniform(kappa, 3) == pytest.approx(expected, rel=1e-9)


def test_samples_are_unit_vectors_without_nan_at_either_pole():
    latent = VMFLatent(feature_size=4, latent_dim=6, kappa=30.0)
    means = torch.tensor([[1.0, 0, 0, 0, 0, 0], [-1.0, 0, 0, 0, 0, 0], [0, 1.0, 0, 0, 0, 0]], requires_grad=True)
    codes = latent.rsample(Posterior(means, None), latent.draw_noise(np.random.default_rng(0), 3, 500))
    assert not torch.isnan(codes).any()
    assert torch.allclose(codes.norm(dim=-1), torch.ones(3, 500), atol=1e-5)
    cosines = (codes * means[:, None, :]).sum(-1).mean(1)
    assert torch.allclose(cosines, torch.full((3,), mean_cosine(30.0, 6)), atol=0.03)
    codes.sum().backward()
    assert torch.isfinite(means.grad).all()


def test_zero_temperature_gives_the_mean_direction():
    latent = VMFLatent(feature_size=4, latent_dim=5, kappa=10.0)
    mean = torch.nn.functional.normalize(torch.randn(2, 5), dim=-1)
    codes = latent.rsample(Posterior(mean, None), latent.draw_noise(np.random.default_rng(0), 2, 3), temperature=0.0)
    assert torch.allclose(codes, mean[:, None, :].expand(2, 3, 5), atol=1e-5)
