"""MIMO detectors on the real-valued equivalent system (see `channel` for the conventions).

The classical detectors are Sionna's (`sionna.phy.mimo`), reached through `sionna_bridge`, but for EP; what Sionna
lacks stays here: the bias-free LMMSE estimate and the expectation-propagation cavities a flow denoiser reads as
features, and decisions over a list of candidates (K-best's, or a flow model's posterior samples).
benchmarks/mimo_crosscheck.py (at commit af701eb, before this package's own versions were removed) measured
Sionna's detectors against ours on the same channel uses: identical hard decisions for ZF, LMMSE, ML (max-log) and
K-best, and EP within its error bars when configured alike. Sionna 2.2's `EPDetector` is not used: it computes in
the detector's precision and in single precision its decisions break down at high SNR (wrong bits on an all but
noiseless 4x4 QPSK channel at 80 dB: tests/mimo/test_detectors.py), and it starts from an unbiased estimate of the symbol
energy (1 for QPSK instead of 1/2); this package's EP iterates in double precision.

Every detector is called as ``detector(y, H, noise_var, modulation) -> DetectionOutput`` with ``y (B, 2 num_rx)``,
``H (B, 2 num_rx, n)`` and ``noise_var`` = N0 (a float or (B,)), for QAM modulations. Soft outputs are per-bit LLRs
``log P(b = 1 | y) / P(b = 0 | y)`` (positive favours bit 1, as ``sigmoid(llr)`` = P(bit = 1)); hard bits are their
signs:

- `zero_forcing` and `lmmse`: Sionna's `LinearDetector`, linear estimates demapped exactly (APP) per symbol;
- `expectation_propagation`: LMMSE whose Gaussian prior is refined, symbol by symbol, towards the discrete one
  (this package's `gaussian_ep_cavities`, exactly demapped);
- `maximum_likelihood`: Sionna's `MaximumLikelihoodDetector`, exhaustive, exact APP LLRs, so its hard bits are the
  bit-wise MAP decisions (the lowest BER any detector reaches; the joint ML vector differs in a few per cent of the
  channel uses at low SNR);
- `k_best`: Sionna's `KBestDetector` (K paths over complex symbols), max-log LLRs over its final list.
"""

import functools
from dataclasses import dataclass

import torch
from diffusers.utils import BaseOutput

from .channel import Modulation, check_channel_inputs, get_modulation
from .sionna_bridge import llrs_from_sionna, noise_covariance, real_to_complex, sionna_modulation

# LLR magnitude reported for a bit whose counter-hypothesis is absent from a candidate list (Sionna's K-best clips
# at the same value).
DEFAULT_LLR_CLIP = 20.0
# Largest bit count exhaustive ML enumerates (2^20 candidates per channel use).
MAX_ML_BITS = 20
# Expectation propagation (the detector and the denoiser's cavities): iterations, the weight of each new site, and
# the floor of a tilted variance.
EP_ITERATIONS, EP_DAMPING, EP_MIN_VARIANCE = 5, 0.5, 1e-9


@dataclass
class DetectionOutput(BaseOutput):
    """
    Args:
        bits (`torch.Tensor` of shape (B, num_bits)): Hard decisions, 0/1.
        llrs (`torch.Tensor` of shape (B, num_bits)): ``log P(b = 1) / P(b = 0)``.
    """

    bits: torch.Tensor
    llrs: torch.Tensor

    @property
    def probabilities(self) -> torch.Tensor:
        """P(bit = 1) for each bit."""
        return torch.sigmoid(self.llrs)


def _real_noise_var(noise_var, y, H):
    """N0 / 2, the variance of each real noise dimension, shaped (B, 1)."""
    return (check_channel_inputs(y, H, noise_var) / 2)[:, None]


@functools.lru_cache(maxsize=64)
def sionna_detector(name: str, num_tx: int, modulation: str, precision: str, device: str, option: int | None = None):
    """The Sionna detector `name` ("zf", "lmmse", "ml", "kbest") with bit outputs, for `num_tx` streams of
    `modulation`; `option` is K-best's K. Built once per setting (ML enumerates its candidates on construction)."""
    # Imported here: Sionna takes a second to import, and a flow model's pipeline never needs it.
    from sionna.phy.mimo import KBestDetector, LinearDetector, MaximumLikelihoodDetector

    constellation, bits = sionna_modulation(modulation)
    where = dict(precision=precision, device=device)
    if name in ("zf", "lmmse"):
        return LinearDetector(name, "bit", "app", constellation, bits, **where)
    if name == "ml":
        return MaximumLikelihoodDetector("bit", "app", num_tx, constellation, bits, **where)
    return KBestDetector("bit", num_tx, option, constellation, bits, **where)


def detect_with_sionna(name: str, y, H, noise_var, modulation, option: int | None = None,
                       chunk: int | None = None) -> DetectionOutput:
    """Run `sionna_detector(name)` on a real-valued batch, `chunk` channel uses at a time (all when None), and
    return our bits and LLRs."""
    modulation = get_modulation(modulation)
    noise_var = check_channel_inputs(y, H, noise_var)
    detector = sionna_detector(name, H.shape[-1] // 2, modulation.name,
                               "double" if y.dtype == torch.float64 else "single", str(y.device), option)
    y_c, H_c = real_to_complex(y, H, modulation)
    covariance = noise_covariance(noise_var, y_c.shape[-1], y_c.dtype)
    chunk = chunk or len(y)
    # K-best fuses a comparison with torch.compile; run it eagerly, so that detection needs no compiler toolchain.
    with torch.compiler.set_stance("force_eager"):
        llrs = torch.cat([detector(y_c[i:i + chunk], H_c[i:i + chunk], covariance[i:i + chunk])
                          for i in range(0, len(y), chunk)])
    return _from_llrs(llrs_from_sionna(llrs).to(y.dtype))


def _from_llrs(llrs: torch.Tensor) -> DetectionOutput:
    return DetectionOutput(bits=(llrs > 0).to(llrs.dtype), llrs=llrs)


def pam_llrs(estimate: torch.Tensor, variance: torch.Tensor, modulation: Modulation,
             log_prior: torch.Tensor | None = None) -> torch.Tensor:
    """Exact per-bit LLRs of real symbols observed as ``estimate = s + e``, ``e ~ N(0, variance)``.

    `estimate` and `variance` are (B, n); the result is (B, n * bits_per_real). The prior over each symbol's levels
    is uniform, or ``softmax(log_prior)`` with `log_prior` (B, n, M) in `Modulation.constellation`'s level order."""
    levels, labels = modulation.constellation(estimate.device, estimate.dtype)
    log_lik = -(estimate[..., None] - levels) ** 2 / (2 * variance[..., None])  # (B, n, M)
    if log_prior is not None:
        log_lik = log_lik + log_prior
    ones = labels.bool().T  # (m, M)
    llr = [torch.logsumexp(log_lik[..., bit], -1) - torch.logsumexp(log_lik[..., ~bit], -1) for bit in ones]
    return torch.stack(llr, -1).flatten(-2)


def lmmse_estimate(y, H, noise_var, modulation) -> tuple[torch.Tensor, torch.Tensor]:
    """The LMMSE estimate ``E[s | y]`` of a linear Gaussian model and its per-symbol bias-free reading.

    ``x = (H^T H + (sigma^2 / Es) I)^-1 H^T y`` with ``sigma^2 = N0 / 2`` and ``Es`` the energy of a real symbol.
    Its j-th entry is ``mu_j s_j + (error)`` with ``mu = diag((H^T H + (sigma^2/Es) I)^-1 H^T H)``; returns the
    unbiased estimate ``x / mu`` (B, n) and the variance of its error ``Es (1 - mu) / mu`` (B, n).
    """
    modulation = get_modulation(modulation)
    sigma2 = _real_noise_var(noise_var, y, H)
    gram = H.mT @ H
    eye = torch.eye(gram.shape[-1], dtype=gram.dtype, device=gram.device)
    regularised = gram + (sigma2 / modulation.energy_per_real)[..., None] * eye
    x = torch.linalg.solve(regularised, H.mT @ y[..., None]).squeeze(-1)
    mu = torch.linalg.solve(regularised, gram).diagonal(dim1=-2, dim2=-1).clamp(1e-6, 1 - 1e-7)
    return x / mu, modulation.energy_per_real * (1 - mu) / mu


def _level_moments(log_weights: torch.Tensor, levels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and variance (floored at `EP_MIN_VARIANCE`) of the distribution ``softmax(log_weights)`` over `levels`."""
    weights = torch.softmax(log_weights, -1)
    mean = (weights * levels).sum(-1)
    return mean, (weights * (levels - mean[..., None]) ** 2).sum(-1).clamp_min(EP_MIN_VARIANCE)


def gaussian_ep_cavities(precision: torch.Tensor, linear: torch.Tensor, levels: torch.Tensor, iterations: int,
                         damping: float = EP_DAMPING, log_prior: torch.Tensor | None = None
                         ) -> tuple[torch.Tensor, torch.Tensor]:
    """Expectation propagation for ``p(s) ∝ exp(-s^T A s / 2 + s^T b) prod_j pi_j(s_j)``, ``pi_j`` a discrete prior
    over `levels` (equiprobable, or ``softmax(log_prior[..., j, :])``).

    Each discrete prior factor is replaced by a Gaussian site ``exp(-Lambda_j s_j^2 / 2 + gamma_j s_j)``, starting
    from the moments of the prior. An iteration computes the Gaussian posterior
    ``N((A + diag Lambda)^-1 (b + gamma), (A + diag Lambda)^-1)``, removes each site to get the cavity
    ``N(t_j, v_j)``, matches the mean and variance of the cavity times the discrete prior, and moves the sites
    (damped) to the site that reproduces them; sites that would turn negative are kept (Céspedes et al., 2014).

    Args:
        precision (`torch.Tensor` of shape (B, n, n)): ``A``, symmetric positive semi-definite.
        linear (`torch.Tensor` of shape (B, n)): ``b``.
        levels (`torch.Tensor` of shape (M,)): The values each ``s_j`` can take.
        iterations (`int`): EP iterations; 0 returns the cavities of the Gaussian prior with the prior's moments.
        damping (`float`): Weight of the new site in each update, in (0, 1].
        log_prior (`torch.Tensor` of shape (B, n, M), *optional*): Each symbol's prior log-weights over `levels`
            (up to a constant); uniform if not given.

    Returns:
        The cavity means ``t`` and variances ``v``, each (B, n): the evidence about ``s_j`` from everything but its
        own prior, to be combined with the discrete prior (`pam_llrs`).
    """
    dtype = precision.dtype
    precision, linear, levels = precision.double(), linear.double(), levels.double()
    eye = torch.eye(precision.shape[-1], dtype=precision.dtype, device=precision.device)
    log_prior = torch.zeros(*linear.shape, len(levels), dtype=linear.dtype, device=linear.device) \
        if log_prior is None else log_prior.double()
    prior_mean, prior_variance = _level_moments(log_prior, levels)
    site_precision, site_linear = 1 / prior_variance, prior_mean / prior_variance
    for step in range(iterations + 1):
        covariance = torch.linalg.inv(precision + site_precision[..., None] * eye)
        mean = (covariance @ (linear + site_linear)[..., None]).squeeze(-1)
        variance = covariance.diagonal(dim1=-2, dim2=-1)
        cavity_precision = (1 / variance - site_precision).clamp_min(1e-12)
        cavity_mean = (mean / variance - site_linear) / cavity_precision
        if step == iterations:
            return cavity_mean.to(dtype), (1 / cavity_precision).to(dtype)
        tilted_mean, tilted_variance = _level_moments(
            log_prior - (cavity_mean[..., None] - levels) ** 2 * cavity_precision[..., None] / 2, levels)
        new_precision = 1 / tilted_variance - cavity_precision
        new_linear = tilted_mean / tilted_variance - cavity_mean * cavity_precision
        keep = new_precision <= 0
        site_precision = torch.where(keep, site_precision, damping * new_precision + (1 - damping) * site_precision)
        site_linear = torch.where(keep, site_linear, damping * new_linear + (1 - damping) * site_linear)


def all_bit_vectors(num_bits: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """Every bit vector of length `num_bits`, shape (2^num_bits, num_bits), first bit most significant."""
    return ((torch.arange(2**num_bits, device=device)[:, None] >> torch.arange(num_bits - 1, -1, -1, device=device))
            & 1).to(dtype)


def list_detection(candidate_bits: torch.Tensor, distances: torch.Tensor, noise_real: torch.Tensor,
                   llr_clip: float = DEFAULT_LLR_CLIP, output: str = "maxlog") -> DetectionOutput:
    """Decide from a list of candidate bit vectors (B, P, num_bits) with their distances ``||y - H s||^2`` (B, P),
    up to a constant per channel use; ``s^2 = N0 / 2`` is `noise_real`, (B, 1).

    - ``output="maxlog"``: hard bits are the closest candidate's; LLRs are max-log over the list,
      ``(min d_(b=0) - min d_(b=1)) / (2 s^2)``.
    - ``output="app"``: each bit's a posteriori LLR over the distinct candidates (a repeated candidate counts
      once), ``log sum_(b=1) exp(-d / (2 s^2)) - log sum_(b=0) exp(-d / (2 s^2))``, and hard bits its signs:
      bit-wise MAP restricted to the list, as Sionna's "app" demapping is over all candidates.

    LLRs are clipped to `llr_clip`, which is also their value where the list holds no counter-hypothesis."""
    if output not in ("maxlog", "app"):
        raise ValueError(f"`output` must be 'maxlog' or 'app', got {output!r}.")
    if output == "app":
        # A candidate equal to an earlier one in its list would be counted twice.
        same = (candidate_bits[:, :, None] == candidate_bits[:, None]).all(-1)  # (B, P, P)
        repeated = same.tril(diagonal=-1).any(-1)
        distances = distances.masked_fill(repeated, float("inf"))
    scores = -distances[..., None] / (2 * noise_real[..., None])  # (B, P, 1)
    ones = candidate_bits.bool()
    combine = torch.logsumexp if output == "app" else torch.amax

    def hypothesis(bit_is_one: bool) -> torch.Tensor:
        """The candidates' scores combined over those whose bit is `bit_is_one`, per bit: (B, num_bits)."""
        return combine(scores.masked_fill(ones != bit_is_one, -float("inf")), 1)

    llrs = (hypothesis(True) - hypothesis(False)).nan_to_num(posinf=llr_clip, neginf=-llr_clip)
    llrs = llrs.clamp(-llr_clip, llr_clip)
    if output == "app":
        return DetectionOutput(bits=(llrs > 0).to(candidate_bits.dtype), llrs=llrs)
    best = distances.argmin(1)
    return DetectionOutput(bits=candidate_bits[torch.arange(len(best), device=best.device), best], llrs=llrs)


def zero_forcing(y, H, noise_var, modulation) -> DetectionOutput:
    """``s_hat = (H^H H)^-1 H^H y`` with its per-stream error variance, demapped exactly."""
    return detect_with_sionna("zf", y, H, noise_var, modulation)


def lmmse(y, H, noise_var, modulation) -> DetectionOutput:
    """LMMSE equalisation followed by exact per-symbol demapping of its bias-free output."""
    return detect_with_sionna("lmmse", y, H, noise_var, modulation)


def expectation_propagation(y, H, noise_var, modulation, iterations: int = EP_ITERATIONS) -> DetectionOutput:
    """EP detection: `gaussian_ep_cavities` on ``A = H^T H / sigma^2``, ``b = H^T y / sigma^2``
    (``sigma^2 = N0 / 2``) over the PAM levels, then exact per-symbol demapping of each cavity."""
    modulation = get_modulation(modulation)
    sigma2 = _real_noise_var(noise_var, y, H)
    levels, _ = modulation.constellation(y.device, y.dtype)
    cavity_mean, cavity_variance = gaussian_ep_cavities(H.mT @ H / sigma2[..., None],
                                                        (H.mT @ y[..., None]).squeeze(-1) / sigma2, levels, iterations)
    return _from_llrs(pam_llrs(cavity_mean, cavity_variance, modulation))


def maximum_likelihood(y, H, noise_var, modulation, max_elements: int = 2**24) -> DetectionOutput:
    """Exhaustive search over all ``2^num_bits`` transmit vectors with exact APP LLRs
    ``log sum_{b_i = 1} exp(-||y - H s||^2 / N0) - log sum_{b_i = 0} (...)``; hard bits are their signs. Channel
    uses are processed in chunks of at most `max_elements` candidate residual entries."""
    modulation = get_modulation(modulation)
    num_bits = H.shape[-1] * modulation.bits_per_real
    if num_bits > MAX_ML_BITS:
        raise ValueError(f"Exhaustive ML over {num_bits} bits (2^{num_bits} candidates) is out of reach; the limit is "
                         f"{MAX_ML_BITS} bits. Use k_best for larger systems.")
    chunk = max(1, max_elements // (2**num_bits * y.shape[-1]))
    return detect_with_sionna("ml", y, H, noise_var, modulation, chunk=chunk)


def k_best(y, H, noise_var, modulation, k: int = 16) -> DetectionOutput:
    """K-best sphere decoding over complex symbols, keeping the `k` partial vectors of least distance at each
    level; max-log LLRs over the final list, clipped to `DEFAULT_LLR_CLIP` where it holds no counter-hypothesis."""
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}.")
    return detect_with_sionna("kbest", y, H, noise_var, modulation, option=k)


DETECTORS = {"zf": zero_forcing, "lmmse": lmmse, "ep": expectation_propagation, "ml": maximum_likelihood,
             "kbest": k_best}
