"""Training-time sigma samplers (sigma = 1 is noise; the paper's t = 1 - sigma).

The paper's recipe samples sigma uniformly. The logit-normal alternative draws ``sigma = sigmoid(N(mean, std))``;
JiT's ``t ~ logit-normal(-0.8, 0.8)`` is ``logit_mean=0.8, logit_std=0.8`` here, since sigma = 1 - t. Its density
vanishes at both ends (JiT's setting draws sigma < 0.2 about 0.3% of the time); ``uniform_fraction`` mixes in the
uniform sampler so that the data end is trained too.
"""

import math

import torch

from .utils import check_choice, check_fraction


SIGMA_SAMPLERS = ("uniform", "logit_normal")


def sample_sigmas(
    batch_size: int,
    scheme: str = "uniform",
    logit_mean: float = 0.0,
    logit_std: float = 1.0,
    generator: torch.Generator | None = None,
    device: str | torch.device | None = None,
    uniform_fraction: float = 0.0,
) -> torch.Tensor:
    """Draw one sigma per sample, shape (batch_size,), in (0, 1] (never exactly 0, where a v-loss divides).

    With ``uniform_fraction = p > 0`` each sigma comes from the uniform sampler with probability p and from `scheme`
    otherwise: the mixture's density is at least p everywhere on (0, 1].
    """
    check_choice("timestep sampling scheme", scheme, SIGMA_SAMPLERS)
    check_fraction("uniform_fraction", uniform_fraction)
    sigmas = _draw_sigmas(batch_size, scheme, logit_mean, logit_std, generator, device)
    if uniform_fraction == 0:  # draws nothing more, so runs without the mixture stay exactly as they were
        return sigmas
    uniform = _draw_sigmas(batch_size, "uniform", logit_mean, logit_std, generator, device)
    coin = torch.rand(batch_size, generator=generator, device=device) < uniform_fraction
    return torch.where(coin, uniform, sigmas)


def _draw_sigmas(batch_size: int, scheme: str, logit_mean: float, logit_std: float, generator, device) -> torch.Tensor:
    if scheme == "uniform":
        # torch.rand is in [0, 1); its complement is in (0, 1].
        return 1 - torch.rand(batch_size, generator=generator, device=device)
    normal = torch.randn(batch_size, generator=generator, device=device)
    return torch.sigmoid(logit_mean + logit_std * normal).clamp_min(torch.finfo(torch.float32).tiny)


def expected_inverse_square_sigma(scheme: str, logit_mean: float = 0.0, logit_std: float = 1.0,
                                  uniform_fraction: float = 0.0) -> float:
    """``E[sigma**-2]``: the mean weight an x-prediction v-loss puts on the x-error under a sampler.

    Uniform sigma (or any mixture with it) gives infinity. Logit-normal gives
    ``1 + 2 exp(-m + s^2/2) + exp(-2m + 2 s^2)`` because ``sigma**-2 = (1 + exp(-u))**2`` for ``u ~ N(m, s^2)``;
    JiT's setting (m = s = 0.8) gives about 2.96.
    """
    check_choice("timestep sampling scheme", scheme, SIGMA_SAMPLERS)
    if scheme == "uniform" or uniform_fraction > 0:
        return math.inf
    m, s = logit_mean, logit_std
    return 1 + 2 * math.exp(-m + s**2 / 2) + math.exp(-2 * m + 2 * s**2)
