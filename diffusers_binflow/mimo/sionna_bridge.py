"""The one place where this package's real-valued MIMO convention (`channel`) meets Sionna's complex one.

Sionna (`sionna.phy`, Apache-2.0) labels the points of a QAM stream with ``num_bits_per_symbol`` bits interleaved as
``[re_0, im_0, re_1, im_1, ...]`` (even bits on the in-phase axis, odd ones on the quadrature axis), with bit 0 on the
positive half of an axis and on its inner level. Here all real parts come before all imaginary parts, each real
symbol's bits most significant first, and bit 1 is the positive half (`channel`). The two Gray codes are the same
up to that reordering and an inversion of every bit, so

    ours[..., i] = 1 - sionna[..., order[i]],        llr_ours[..., i] = -llr_sionna[..., order[i]]

with ``order = sionna_bit_order(num_tx, modulation)`` (tests/mimo/test_sionna_bridge.py maps every bit pattern
through both). Both sides agree on the rest: unit-energy symbols, ``H`` with CN(0, 1) entries, and Sionna's ``no``
(the noise variance of each complex receive antenna) is ``noise_var`` = N0. Sionna's detectors take the noise as
its covariance ``N0 I`` (`noise_covariance`).
"""

import torch

from .channel import Modulation, get_modulation


def sionna_modulation(modulation: "str | Modulation") -> tuple[str, int]:
    """Sionna's ``(constellation_type, num_bits_per_symbol)`` of a QAM `modulation`. BPSK (one real dimension) has
    no QAM counterpart, and Sionna's detectors treat symbols as complex, so it is refused."""
    modulation = get_modulation(modulation)
    if modulation.real_dims != 2:
        raise ValueError(f"Sionna's MIMO detectors take QAM constellations; {modulation.name!r} is not one "
                         "(use 'qpsk', '16qam' or '64qam').")
    return "qam", modulation.bits_per_symbol


def sionna_bit_order(num_tx: int, modulation: "str | Modulation", device=None) -> torch.Tensor:
    """``order`` (num_bits,) with ``ours[..., i] = 1 - sionna[..., order[i]]`` for Sionna's bits flattened over
    (num_tx, num_bits_per_symbol): our real symbol ``j`` is the real part of stream ``j`` for ``j < num_tx`` and the
    imaginary part of stream ``j - num_tx`` after it, and its ``k``-th bit is Sionna's bit ``2 k`` (real) or
    ``2 k + 1`` (imaginary) of that stream."""
    return _bit_order(num_tx, sionna_modulation(modulation)[1], device)


def _bit_order(num_tx: int, bits_per_symbol: int, device=None) -> torch.Tensor:
    part = torch.arange(2 * num_tx, device=device)[:, None]  # our real symbol j
    k = torch.arange(bits_per_symbol // 2, device=device)  # its bit, most significant first
    return ((part % num_tx) * bits_per_symbol + 2 * k + part // num_tx).flatten()


def bits_to_sionna(bits: torch.Tensor, num_tx: int, modulation: "str | Modulation") -> torch.Tensor:
    """Our bits (B, num_bits) -> Sionna's (B, num_tx, num_bits_per_symbol)."""
    order = sionna_bit_order(num_tx, modulation, bits.device)
    return (1 - bits[..., order.argsort()]).unflatten(-1, (num_tx, -1))


def bits_from_sionna(bits: torch.Tensor) -> torch.Tensor:
    """Sionna's bits (B, num_tx, num_bits_per_symbol) -> ours (B, num_bits)."""
    num_tx, bits_per_symbol = bits.shape[-2:]
    return 1 - bits.flatten(-2)[..., _bit_order(num_tx, bits_per_symbol, bits.device)]


def llrs_from_sionna(llrs: torch.Tensor) -> torch.Tensor:
    """Sionna's LLRs ``log P(b = 1) / P(b = 0)`` (B, num_tx, num_bits_per_symbol) of its labels -> ours (B, num_bits)
    of our labels: the same reordering, and the sign flips with the inverted labels."""
    num_tx, bits_per_symbol = llrs.shape[-2:]
    return -llrs.flatten(-2)[..., _bit_order(num_tx, bits_per_symbol, llrs.device)]


def real_to_complex(y: torch.Tensor, H: torch.Tensor, modulation: "str | Modulation"):
    """The complex ``(y (B, num_rx), H (B, num_rx, num_tx))`` of a real-valued batch (`channel.complex_to_real`
    inverted): ``y_r = [Re y; Im y]``, ``H_r = [[Re H, -Im H], [Im H, Re H]]``."""
    sionna_modulation(modulation)
    num_rx, num_tx = y.shape[-1] // 2, H.shape[-1] // 2
    return (torch.complex(y[..., :num_rx], y[..., num_rx:]),
            torch.complex(H[..., :num_rx, :num_tx], H[..., num_rx:, :num_tx]))


def noise_covariance(noise_var: torch.Tensor, num_rx: int, dtype: torch.dtype) -> torch.Tensor:
    """Sionna's noise argument: the covariance ``N0 I`` (B, num_rx, num_rx) of the complex noise, from N0 (B,)."""
    eye = torch.eye(num_rx, dtype=dtype, device=noise_var.device)
    return noise_var.to(dtype)[:, None, None] * eye


__all__ = ["bits_from_sionna", "bits_to_sionna", "llrs_from_sionna", "noise_covariance", "real_to_complex",
           "sionna_bit_order", "sionna_modulation"]
