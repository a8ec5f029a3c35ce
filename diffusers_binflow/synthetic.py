"""Small binary distributions with exact probabilities and exact posterior means.

They serve as ground truth: a sampler fed the exact posterior mean ``E[x | x_sigma]`` as its "model" must
reproduce the distribution, so any error left is the sampler's own.
"""

import torch


class ProductBernoulliMixture:
    """A mixture of product Bernoullis: pick component k with probability ``weights[k]``, then bit i is 1 with
    probability ``probs[k, i]``. One component is a product Bernoulli; probabilities in {0, 1} make prototypes.

    With ``x = bit_scale * (2b - 1)``, ``x_sigma = (1 - sigma) x + sigma eps`` and
    ``a = bit_scale (1 - sigma) x_sigma / sigma**2``, each component's likelihood factorises into
    ``p e^a + (1 - p) e^-a`` per bit, which gives the exact posterior mean in closed form.
    """

    def __init__(self, weights, probs):
        self.weights = torch.as_tensor(weights, dtype=torch.float64)
        self.probs = torch.as_tensor(probs, dtype=torch.float64)
        if self.probs.ndim != 2 or self.weights.shape != self.probs.shape[:1]:
            raise ValueError("`probs` must be (K, d) with one weight per component in `weights` (K,).")
        if (self.probs < 0).any() or (self.probs > 1).any() or (self.weights < 0).any():
            raise ValueError("`probs` must lie in [0, 1] and `weights` must be non-negative.")
        self.weights = self.weights / self.weights.sum()

    @property
    def dim(self) -> int:
        return self.probs.shape[1]

    def sample(self, num_samples: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Bits, shape (num_samples, d), float 0/1."""
        components = torch.multinomial(self.weights, num_samples, replacement=True, generator=generator)
        return (torch.rand(num_samples, self.dim, generator=generator, dtype=torch.float64)
                < self.probs[components]).float()

    def posterior_mean(self, sample: torch.Tensor, sigma: float, bit_scale: float = 1.0) -> torch.Tensor:
        """``E[x | x_sigma]`` for `sample` of shape (B, d) at a positive `sigma`; returns (B, d) in signal space."""
        a = (bit_scale * (1 - sigma) * sample.double() / sigma**2)[:, None, :]  # (B, 1, d)
        log_on, log_off = self.probs.log()[None] + a, (1 - self.probs).log()[None] - a  # (B, K, d)
        log_norm = torch.logaddexp(log_on, log_off)
        component_mean = (log_on - log_norm).exp() - (log_off - log_norm).exp()
        log_posterior = self.weights.log()[None] + log_norm.sum(-1)  # (B, K)
        mean = (log_posterior.softmax(-1)[..., None] * component_mean).sum(1)
        return (bit_scale * mean).to(sample.dtype)

