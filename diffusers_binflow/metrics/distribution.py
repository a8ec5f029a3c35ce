"""Exact metrics of generated bits against an enumerable distribution (d <= 20 bits, all ``2**d`` states).

States are indexed as in `diffusers_binflow.synthetic`: a row of bits read as a binary number, first bit most
significant. Each statistic of N generated samples should be read next to its finite-sample floor, the same
statistic for N exact samples (`finite_sample_floor`): even a perfect sampler's histogram is N draws away from p.

Too few samples make a histogram statistic meaningless (with N below the number of likely states almost every TV
is near 1), so the histogram metrics refuse N below ``minimum_samples(p) = max(MIN_SAMPLES, 10 * exp(H(p)))``:
ten samples per effective state, where ``exp(H(p))`` (the perplexity, H in nats) counts the states that carry the
mass (4x4 Ising: 88 at T = 2.269, 6,211 at T = 1 / 0.3; a [16, 8] code: 256). Pass ``min_samples`` to override
it, e.g. in smoke tests.
"""

import math
from collections.abc import Callable

import torch

from ..bits import check_binary
from ..synthetic import LinearCode, state_index


MIN_SAMPLES = 1000  # the fixed floor of `minimum_samples`
SAMPLES_PER_STATE = 10  # samples per effective state (perplexity) in `minimum_samples`
MIN_VALIDITY_SAMPLES = 100  # `validity_rate`: a standard error of at most 0.05
KL_SMOOTHING = 1e-6  # mass of the uniform distribution mixed into p by `kl_divergence`


def minimum_samples(probabilities: torch.Tensor) -> int:
    """``max(MIN_SAMPLES, ceil(SAMPLES_PER_STATE * exp(H(p))))``: the fewest samples the histogram metrics accept."""
    p = torch.as_tensor(probabilities, dtype=torch.float64)
    entropy = -torch.special.xlogy(p, p).sum().item()
    return max(MIN_SAMPLES, math.ceil(round(SAMPLES_PER_STATE * math.exp(entropy), 6)))


def check_bits(bits: torch.Tensor, dim: int | None = None) -> None:
    """Raise a `ValueError` unless `bits` is (N, d) of 0/1, with d = `dim` when given."""
    if bits.ndim != 2 or (dim is not None and bits.shape[1] != dim):
        expected = "(N, d)" if dim is None else f"(N, {dim})"
        raise ValueError(f"`bits` must have shape {expected}, one row per sample, got {tuple(bits.shape)}.")
    check_binary(bits)


def check_probabilities(probabilities: torch.Tensor, dim: int) -> torch.Tensor:
    """`probabilities` as float64, after checking it is a pmf over the ``2**dim`` states of the samples' d bits."""
    p = torch.as_tensor(probabilities, dtype=torch.float64)
    if p.shape != (2**dim,):
        raise ValueError(f"Samples of d = {dim} bits need `probabilities` of shape ({2**dim},) (one per state), "
                         f"got {tuple(p.shape)}.")
    if (p < 0).any() or abs(p.sum().item() - 1) > 1e-6:
        raise ValueError("`probabilities` must be non-negative and sum to 1.")
    return p


def check_sample_count(num_samples: int, minimum: int, what: str) -> None:
    if num_samples < minimum:
        raise ValueError(f"{what} needs at least {minimum} samples for a stable estimate, got {num_samples}.")


def empirical_histogram(bits: torch.Tensor) -> torch.Tensor:
    """``q(j) = #{n : index(bits[n]) = j} / N`` over all ``2**d`` states, float64 of shape (2**d,)."""
    check_bits(bits)
    return torch.bincount(state_index(bits), minlength=2 ** bits.shape[1]).double() / bits.shape[0]


def _histogram_against(bits, probabilities, min_samples, what):
    check_bits(bits)
    p = check_probabilities(probabilities, bits.shape[1])
    check_sample_count(bits.shape[0], minimum_samples(p) if min_samples is None else min_samples, what)
    return empirical_histogram(bits), p


def total_variation(bits: torch.Tensor, probabilities: torch.Tensor, min_samples: int | None = None) -> float:
    """``TV(q, p) = 1/2 sum_j |q(j) - p(j)|`` in [0, 1], q the empirical histogram of `bits` (N, d) and p the
    exact `probabilities` (2**d,)."""
    q, p = _histogram_against(bits, probabilities, min_samples, "Total variation")
    return 0.5 * (q - p).abs().sum().item()


def kl_divergence(bits: torch.Tensor, probabilities: torch.Tensor, min_samples: int | None = None,
                  smoothing: float = KL_SMOOTHING) -> float:
    """``KL(q || p_s) = sum_j q(j) log(q(j) / p_s(j))`` in nats: the empirical histogram q of `bits` against the
    exact p, smoothed as ``p_s = (1 - smoothing) p + smoothing / 2**d`` so that samples on states of probability 0
    (invalid codewords) cost a large but finite ``log(q 2**d / smoothing)`` each instead of infinity.

    This direction needs no smoothing of q (states never sampled add 0) and punishes samples where p is small;
    missing modes show through the entropy of q and in TV / coverage. Its floor for exact samples is about
    ``(number of distinct sampled states - 1) / (2 N)`` (the plug-in entropy bias).
    """
    q, p = _histogram_against(bits, probabilities, min_samples, "KL divergence")
    p_smoothed = (1 - smoothing) * p + smoothing / p.numel()
    seen = q > 0
    return (q[seen] * (q[seen] / p_smoothed[seen]).log()).sum().item()


STATISTICS = {"total_variation": total_variation, "kl_divergence": kl_divergence}


def finite_sample_floor(distribution, num_samples: int, statistic: str | Callable = "total_variation",
                        repeats: int = 5, generator: torch.Generator | None = None, **statistic_kwargs) -> float:
    """The mean over `repeats` of ``statistic(distribution.sample(num_samples), distribution.probabilities())``:
    what a perfect sampler scores with `num_samples` samples. `distribution` is any object with ``sample(n,
    generator)`` and ``probabilities()`` (those of `diffusers_binflow.synthetic`); `statistic` a name in
    ``STATISTICS`` or a function ``(bits, probabilities) -> float``."""
    if isinstance(statistic, str):
        if statistic not in STATISTICS:
            raise ValueError(f"Unknown statistic {statistic!r}; choose one of {tuple(STATISTICS)} or pass a function.")
        statistic = STATISTICS[statistic]
    if repeats < 1:
        raise ValueError(f"`repeats` must be at least 1, got {repeats}.")
    probabilities = distribution.probabilities()
    values = [statistic(distribution.sample(num_samples, generator=generator), probabilities, **statistic_kwargs)
              for _ in range(repeats)]
    return sum(values) / repeats


def validity_rate(bits: torch.Tensor, code: LinearCode, min_samples: int = MIN_VALIDITY_SAMPLES) -> float:
    """Fraction of the rows of `bits` (N, n) that satisfy every parity check of `code` (1 for exact samples,
    about ``2**-(n - k)`` for random bits)."""
    check_bits(bits, code.dim)
    check_sample_count(bits.shape[0], min_samples, "The validity rate")
    return code.is_valid(bits).double().mean().item()


def codeword_coverage(bits: torch.Tensor, code: LinearCode, min_samples: int | None = None) -> float:
    """Fraction of the ``2**k`` codewords of `code` that occur at least once among the rows of `bits` (N, n).
    N uniform codewords cover ``1 - (1 - 2**-k)**N`` on average (`finite_sample_floor` gives it); at least
    ``minimum_samples`` (10 per codeword) are required."""
    check_bits(bits, code.dim)
    minimum = minimum_samples(code.probabilities()) if min_samples is None else min_samples
    check_sample_count(bits.shape[0], minimum, "Codeword coverage")
    valid = bits[code.is_valid(bits)]
    return torch.unique(state_index(valid)).numel() / 2**code.num_info_bits if len(valid) else 0.0
