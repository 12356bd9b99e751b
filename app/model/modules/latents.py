"""Latent heads: q(z|x) from encoder features, reparameterised sampling, and KL to the prior.

Noise is drawn from a NumPy `Generator` and assembled into codes in torch, in one code path for
training (generator seeded from torch) and for serving (one generator per question, seeded from the
question's text, so a question always gets the same codes).

Shapes: B = batch, F = feature size, D = latent dimension, N = samples per question.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F


@dataclass(frozen=True)
class Posterior:
    """Parameters of q(z|x): `mean` (B, D); `logvar` (B, D) for the Gaussian, None for the vMF."""

    mean: torch.Tensor
    logvar: torch.Tensor | None

    @property
    def scale(self) -> torch.Tensor:
        """Per-dimension standard deviation (B, D); zeros for the vMF, whose spread is the fixed kappa."""
        if self.logvar is None:
            return torch.zeros_like(self.mean)
        return torch.exp(0.5 * self.logvar)


class GaussianLatent(nn.Module):
    """Diagonal Gaussian posterior, standard normal prior. Distance between codes: Euclidean."""

    metric = "l2"

    def __init__(self, feature_size: int, latent_dim: int):
        super().__init__()
        self.latent_dim = latent_dim
        self.to_mean = nn.Linear(feature_size, latent_dim)
        self.to_logvar = nn.Linear(feature_size, latent_dim)

    def forward(self, features: torch.Tensor) -> Posterior:
        """features (B, F) -> Posterior(mean (B, D), logvar (B, D))"""
        logvar = self.to_logvar(features).clamp(min=-12.0, max=8.0)
        return Posterior(self.to_mean(features), logvar)

    def draw_noise(self, rng: np.random.Generator, batch: int, n: int) -> np.ndarray:
        """Standard normal noise (batch, n, D)."""
        return rng.standard_normal((batch, n, self.latent_dim), dtype=np.float32)

    def rsample(self, posterior: Posterior, noise: np.ndarray, temperature: float = 1.0) -> torch.Tensor:
        """-> codes (B, N, D) = mean + temperature * sigma * eps"""
        eps = torch.as_tensor(noise, device=posterior.mean.device, dtype=posterior.mean.dtype)
        return posterior.mean[:, None, :] + temperature * posterior.scale[:, None, :] * eps

    def kl_per_dim(self, posterior: Posterior) -> torch.Tensor:
        """KL(q(z|x) || N(0, I)) per example and dimension (B, D)."""
        mean, logvar = posterior.mean, posterior.logvar
        return 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar)

    def kl_penalty(self, posterior: Posterior, free_bits: float) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (penalty to minimise, scalar; KL per example, (B,)).
        Free bits: each dimension's batch-averaged KL counts at least `free_bits` nats, so the
        optimiser gains nothing by pushing a dimension all the way to the prior."""
        per_dim = self.kl_per_dim(posterior)
        penalty = per_dim.mean(0).clamp(min=free_bits).sum() if free_bits > 0 else per_dim.sum(1).mean()
        return penalty, per_dim.sum(1)


def log_bessel_iv(order: float, x: float) -> float:
    """log I_order(x) for order >= 0, x > 0, by the power series summed in log space (float64)."""
    if x <= 0:
        raise ValueError("x must be positive")
    half_log_x = math.log(x / 2.0)
    terms = []
    k = 0
    while True:
        term = (2 * k + order) * half_log_x - math.lgamma(k + 1) - math.lgamma(k + order + 1)
        terms.append(term)
        # Terms grow until k ~ x/2 and then fall off faster than geometrically.
        if k > x and term < terms[0] - 50 and term < max(terms) - 40:
            break
        k += 1
    peak = max(terms)
    return peak + math.log(sum(math.exp(t - peak) for t in terms))


def vmf_kl_to_uniform(kappa: float, dim: int) -> float:
    """KL(vMF(mu, kappa) || uniform on S^{dim-1}); independent of mu."""
    order = dim / 2.0 - 1.0
    log_iv = log_bessel_iv(order, kappa)
    mean_cosine = math.exp(log_bessel_iv(order + 1.0, kappa) - log_iv)  # A_dim(kappa)
    log_normaliser = order * math.log(kappa) - (dim / 2.0) * math.log(2 * math.pi) - log_iv
    log_sphere_area = math.log(2.0) + (dim / 2.0) * math.log(math.pi) - math.lgamma(dim / 2.0)
    return kappa * mean_cosine + log_normaliser + log_sphere_area


def sample_vmf_cosines(rng: np.random.Generator, kappa: float, dim: int, size: tuple[int, ...]) -> np.ndarray:
    """w = <z, mu> for z ~ vMF(mu, kappa) on S^{dim-1}: Wood's (1994) rejection sampler, vectorised.

    Every requested cosine is drawn from its own accepted proposal; the loop only re-draws the
    rejected ones, so the acceptance rate (high for any kappa) bounds its length."""
    m1 = dim - 1.0
    b = m1 / (2.0 * kappa + math.sqrt(4.0 * kappa**2 + m1**2))
    x0 = (1.0 - b) / (1.0 + b)
    c = kappa * x0 + m1 * math.log(1.0 - x0**2)
    out = np.empty(int(np.prod(size)), dtype=np.float64)
    pending = np.arange(out.size)
    while pending.size:
        eps = rng.beta(m1 / 2.0, m1 / 2.0, size=pending.size)
        w = (1.0 - (1.0 + b) * eps) / (1.0 - (1.0 - b) * eps)
        log_u = np.log(rng.uniform(size=pending.size))
        accepted = kappa * w + m1 * np.log1p(-x0 * w) - c >= log_u
        out[pending[accepted]] = w[accepted]
        pending = pending[~accepted]
    return np.clip(out, -1.0, 1.0).reshape(size)


class VMFLatent(nn.Module):
    """von Mises-Fisher posterior with fixed concentration kappa on the unit hypersphere, uniform
    prior. The KL is a constant of kappa and D, so it can neither collapse nor be optimised away.
    Distance between codes: cosine distance."""

    metric = "cosine"

    def __init__(self, feature_size: int, latent_dim: int, kappa: float):
        super().__init__()
        if latent_dim < 2:
            raise ValueError("the vMF latent needs latent_dim >= 2")
        self.latent_dim = latent_dim
        self.kappa = float(kappa)
        self.to_direction = nn.Linear(feature_size, latent_dim)
        self._kl = vmf_kl_to_uniform(self.kappa, latent_dim)

    def forward(self, features: torch.Tensor) -> Posterior:
        """features (B, F) -> Posterior(mean (B, D) unit vectors, None)"""
        return Posterior(F.normalize(self.to_direction(features), dim=-1, eps=1e-6), None)

    def draw_noise(self, rng: np.random.Generator, batch: int, n: int) -> np.ndarray:
        """(batch, n, 1 + D): the cosine to the mean, then a Gaussian vector for the tangent direction."""
        w = sample_vmf_cosines(rng, self.kappa, self.latent_dim, (batch, n))
        tangent = rng.standard_normal((batch, n, self.latent_dim))
        return np.concatenate([w[..., None], tangent], axis=-1).astype(np.float32)

    def rsample(self, posterior: Posterior, noise: np.ndarray, temperature: float = 1.0) -> torch.Tensor:
        """-> codes (B, N, D) on the unit sphere. Samples around e1, then a Householder reflection
        maps e1 onto the mean; the reflection is skipped (not divided by zero) at the pole."""
        mean = posterior.mean
        noise_t = torch.as_tensor(noise, device=mean.device, dtype=mean.dtype)
        w, tangent = noise_t[..., :1], noise_t[..., 1:]  # (B, N, 1), (B, N, D)
        if temperature != 1.0:
            # Shrink the angle to the mean: temperature 0 gives the mean itself.
            w = torch.cos(temperature * torch.arccos(w.clamp(-1.0, 1.0)))
        tangent = tangent.clone()
        tangent[..., 0] = 0.0
        tangent = F.normalize(tangent, dim=-1, eps=1e-12)
        e1 = torch.zeros_like(mean)
        e1[:, 0] = 1.0
        around_e1 = w * e1[:, None, :] + torch.sqrt((1.0 - w * w).clamp(min=0.0)) * tangent
        u = e1 - mean  # (B, D)
        u_norm = u.norm(dim=-1, keepdim=True)
        at_pole = u_norm < 1e-6
        u = u / torch.where(at_pole, torch.ones_like(u_norm), u_norm)
        reflected = around_e1 - 2.0 * (around_e1 * u[:, None, :]).sum(-1, keepdim=True) * u[:, None, :]
        return torch.where(at_pole[:, None, :], around_e1, reflected)

    def kl_penalty(self, posterior: Posterior, free_bits: float) -> tuple[torch.Tensor, torch.Tensor]:
        per_example = torch.full((posterior.mean.size(0),), self._kl, device=posterior.mean.device)
        return per_example.mean(), per_example


LATENT_CHOICES = ("gaussian", "vmf")


def build_latent(kind: str, *, feature_size: int, latent_dim: int, kappa: float) -> nn.Module:
    if kind == "gaussian":
        return GaussianLatent(feature_size, latent_dim)
    if kind == "vmf":
        return VMFLatent(feature_size, latent_dim, kappa)
    raise ValueError(f"unknown latent {kind!r}; choose one of {', '.join(LATENT_CHOICES)}")
