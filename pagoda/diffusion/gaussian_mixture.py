"""An analytic denoiser: a Gaussian mixture's exact posterior mean, for measuring samplers without a model.

Data x0 ~ Σ_k w_k N(μ_k, s_k² I). Under x = x0 + σ·ε the noisy marginal is Σ_k w_k N(μ_k, (s_k² + σ²) I), so
the ideal denoiser (Tweedie: D = x + σ² ∇ log p_σ(x)) is exact:

    D(x, σ) = Σ_k r_k(x) · (μ_k + s_k² / (s_k² + σ²) · (x − μ_k)),  r_k ∝ w_k N(x; μ_k, (s_k² + σ²) I)

and the probability-flow ODE dx/dσ = (x − D)/σ can be solved to any accuracy (`reference_solution`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class GaussianMixture:
    means: torch.Tensor  # (K, d)
    stds: torch.Tensor  # (K,)
    weights: torch.Tensor  # (K,), sums to 1

    @classmethod
    def random(cls, num_components: int = 8, dim: int = 8, seed: int = 0) -> GaussianMixture:
        g = torch.Generator().manual_seed(seed)
        means = torch.randn(num_components, dim, generator=g, dtype=torch.float64)
        stds = 0.1 + 0.3 * torch.rand(num_components, generator=g, dtype=torch.float64)
        weights = torch.rand(num_components, generator=g, dtype=torch.float64) + 0.5
        return cls(means, stds, weights / weights.sum())

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    def sample(self, n: int, generator: torch.Generator) -> torch.Tensor:
        k = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        eps = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        return self.means[k] + self.stds[k, None] * eps

    def denoise(self, x: torch.Tensor, sigma: float) -> torch.Tensor:
        """Exact E[x0 | x] at noise level σ; x is (n, d)."""
        x64 = x.double()
        var = self.stds**2 + sigma**2  # (K,)
        sq = torch.cdist(x64, self.means) ** 2  # (n, K)
        logits = torch.log(self.weights) - 0.5 * sq / var - 0.5 * self.dim * torch.log(var)
        r = torch.softmax(logits, dim=1)  # (n, K)
        shrink = (self.stds**2 / var)  # (K,)
        # Σ_k r_k (μ_k + shrink_k (x − μ_k)) = Σ_k r_k (1 − shrink_k) μ_k + (Σ_k r_k shrink_k) x
        out = (r * (1 - shrink)) @ self.means + (r @ shrink)[:, None] * x64
        return out.to(x.dtype)

    def reference_solution(self, x: torch.Tensor, sigma_max: float, num_steps: int = 2000,
                           sigma_end: float = 1e-4) -> torch.Tensor:
        """Solve the probability-flow ODE from σ_max to 0 with classical RK4 in log σ, then denoise at σ_end."""
        x = x.double()
        s0, s1 = math.log(sigma_max), math.log(sigma_end)
        ds = (s1 - s0) / num_steps

        def f(x: torch.Tensor, s: float) -> torch.Tensor:  # dx/d(log σ) = x − D(x, σ)
            return x - self.denoise(x, math.exp(s))

        s = s0
        for _ in range(num_steps):
            k1 = f(x, s)
            k2 = f(x + 0.5 * ds * k1, s + 0.5 * ds)
            k3 = f(x + 0.5 * ds * k2, s + 0.5 * ds)
            k4 = f(x + ds * k3, s + ds)
            x = x + ds / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
            s += ds
        return self.denoise(x, sigma_end)


def sliced_wasserstein(a: torch.Tensor, b: torch.Tensor, num_projections: int = 256, seed: int = 0) -> float:
    """Sliced 2-Wasserstein distance between two equal-size point clouds (n, d)."""
    g = torch.Generator().manual_seed(seed)
    dirs = torch.randn(a.shape[1], num_projections, generator=g, dtype=torch.float64)
    dirs = dirs / dirs.norm(dim=0, keepdim=True)
    pa, _ = torch.sort(a.double() @ dirs, dim=0)
    pb, _ = torch.sort(b.double() @ dirs, dim=0)
    return float(((pa - pb) ** 2).mean().sqrt())
