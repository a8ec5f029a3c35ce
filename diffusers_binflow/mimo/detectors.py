"""Classic MIMO detectors on the real-valued equivalent system (see `channel` for the conventions).

Every detector is called as ``detector(y, H, noise_var, modulation) -> DetectionOutput`` with ``y (B, 2 num_rx)``,
``H (B, 2 num_rx, n)`` and ``noise_var`` = N0 (a float or (B,)). Soft outputs are per-bit LLRs
``log P(b = 1 | y) / P(b = 0 | y)`` (positive favours bit 1, as ``sigmoid(llr)`` = P(bit = 1)):

- `zero_forcing` and `lmmse`: linear estimates treated as Gaussian per real symbol, demapped exactly over the PAM;
- `maximum_likelihood`: exhaustive search; hard bits are the joint ML decision, LLRs the exact a-posteriori ones;
- `k_best`: breadth-first tree search after a QR decomposition, max-log LLRs from its final list.
"""

from dataclasses import dataclass

import torch
from diffusers.utils import BaseOutput

from .channel import Modulation, check_channel_inputs, get_modulation

# LLR magnitude reported for a bit whose counter-hypothesis is absent from a K-best list.
DEFAULT_LLR_CLIP = 20.0
# Largest bit count exhaustive ML enumerates (2^20 candidates per channel use).
MAX_ML_BITS = 20


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


def pam_llrs(estimate: torch.Tensor, variance: torch.Tensor, modulation: Modulation) -> torch.Tensor:
    """Exact per-bit LLRs of real symbols observed as ``estimate = s + e``, ``e ~ N(0, variance)``, uniform prior.

    `estimate` and `variance` are (B, n); the result is (B, n * bits_per_real)."""
    levels, labels = modulation.constellation(estimate.device, estimate.dtype)
    log_lik = -(estimate[..., None] - levels) ** 2 / (2 * variance[..., None])  # (B, n, M)
    ones = labels.bool().T  # (m, M)
    llr = [torch.logsumexp(log_lik[..., bit], -1) - torch.logsumexp(log_lik[..., ~bit], -1) for bit in ones]
    return torch.stack(llr, -1).flatten(-2)


def _from_llrs(llrs: torch.Tensor) -> DetectionOutput:
    return DetectionOutput(bits=(llrs > 0).to(llrs.dtype), llrs=llrs)


def zero_forcing(y, H, noise_var, modulation) -> DetectionOutput:
    """``s_hat = (H^T H)^-1 H^T y``, error covariance ``(N0 / 2) (H^T H)^-1``."""
    modulation = get_modulation(modulation)
    sigma2 = _real_noise_var(noise_var, y, H)
    gram_inv = torch.linalg.inv(H.mT @ H)
    estimate = (gram_inv @ (H.mT @ y[..., None])).squeeze(-1)
    return _from_llrs(pam_llrs(estimate, sigma2 * gram_inv.diagonal(dim1=-2, dim2=-1), modulation))


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


def lmmse(y, H, noise_var, modulation) -> DetectionOutput:
    """LMMSE equalisation followed by exact per-symbol demapping of its bias-free output."""
    modulation = get_modulation(modulation)
    estimate, variance = lmmse_estimate(y, H, noise_var, modulation)
    return _from_llrs(pam_llrs(estimate, variance, modulation))


def all_bit_vectors(num_bits: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """Every bit vector of length `num_bits`, shape (2^num_bits, num_bits), first bit most significant."""
    return ((torch.arange(2**num_bits, device=device)[:, None] >> torch.arange(num_bits - 1, -1, -1, device=device))
            & 1).to(dtype)


def maximum_likelihood(y, H, noise_var, modulation, max_elements: int = 2**24) -> DetectionOutput:
    """Exhaustive ML: ``argmin_s ||y - H s||^2`` over all ``2^num_bits`` transmit vectors, with exact APP LLRs
    ``log sum_{b_i = 1} exp(-||y - H s||^2 / N0) - log sum_{b_i = 0} (...)``. Channel uses are processed in chunks
    of at most `max_elements` candidate residual entries."""
    modulation = get_modulation(modulation)
    sigma2 = _real_noise_var(noise_var, y, H)
    num_bits = H.shape[-1] * modulation.bits_per_real
    if num_bits > MAX_ML_BITS:
        raise ValueError(f"Exhaustive ML over {num_bits} bits (2^{num_bits} candidates) is out of reach; the limit is "
                         f"{MAX_ML_BITS} bits. Use k_best for larger systems.")
    candidate_bits = all_bit_vectors(num_bits, y.device, y.dtype)  # (K, num_bits)
    candidates = modulation.bits_to_symbols(candidate_bits)  # (K, n)
    ones = candidate_bits.bool().T  # (num_bits, K)
    chunk = max(1, max_elements // (candidates.shape[0] * y.shape[1]))
    bits, llrs = [], []
    for start in range(0, y.shape[0], chunk):
        y_c, H_c, s2 = y[start:start + chunk], H[start:start + chunk], sigma2[start:start + chunk]
        distance = ((y_c[..., None] - H_c @ candidates.T) ** 2).sum(1)  # (b, K)
        log_lik = -distance / (2 * s2)
        bits.append(candidate_bits[distance.argmin(-1)])
        llrs.append(torch.stack([torch.logsumexp(log_lik[:, bit], -1) - torch.logsumexp(log_lik[:, ~bit], -1)
                                 for bit in ones], -1))
    return DetectionOutput(bits=torch.cat(bits), llrs=torch.cat(llrs))


def k_best(y, H, noise_var, modulation, k: int = 16, llr_clip: float = DEFAULT_LLR_CLIP) -> DetectionOutput:
    """K-best sphere decoding: with ``H = Q R``, walk the real symbols from the last to the first, keeping the `k`
    partial vectors of least partial distance ``||Q^T y - R s||^2`` at each level. Hard bits are the best final
    vector; LLRs are max-log over the final list, ``(min d_(b=0) - min d_(b=1)) / N0``, clipped to `llr_clip` where
    the list holds no counter-hypothesis. With `k` at least ``M^n`` it is exact ML."""
    modulation = get_modulation(modulation)
    sigma2 = _real_noise_var(noise_var, y, H)
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}.")
    levels, labels = modulation.constellation(y.device, y.dtype)
    Q, R = torch.linalg.qr(H)
    z = (Q.mT @ y[..., None]).squeeze(-1)
    batch, n = z.shape
    paths = torch.zeros(batch, 1, 0, dtype=torch.long, device=y.device)  # level indices of symbols i..n-1
    metric = torch.zeros(batch, 1, dtype=y.dtype, device=y.device)
    for i in range(n - 1, -1, -1):
        interference = (R[:, i, None, i + 1:] * levels[paths]).sum(-1)  # (B, P)
        residual = z[:, i, None, None] - interference[..., None] - R[:, i, i, None, None] * levels  # (B, P, M)
        expanded = (metric[..., None] + residual**2).flatten(1)
        metric, best = expanded.topk(min(k, expanded.shape[1]), dim=1, largest=False)
        parent, level = best // len(levels), best % len(levels)
        paths = torch.cat([level[..., None], paths.gather(1, parent[..., None].expand(-1, -1, paths.shape[2]))], -1)
    path_bits = labels[paths].flatten(-2)  # (B, P, num_bits), metric sorted ascending
    inf = torch.tensor(float("inf"), dtype=y.dtype, device=y.device)
    d1 = torch.where(path_bits.bool(), metric[..., None], inf).amin(1)
    d0 = torch.where(path_bits.bool(), inf, metric[..., None]).amin(1)
    llrs = ((d0 - d1) / (2 * sigma2)).nan_to_num(posinf=llr_clip, neginf=-llr_clip).clamp(-llr_clip, llr_clip)
    return DetectionOutput(bits=path_bits[:, 0], llrs=llrs)


DETECTORS = {"zf": zero_forcing, "lmmse": lmmse, "ml": maximum_likelihood, "kbest": k_best}
