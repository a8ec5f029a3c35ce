"""Bits and the signal they are mapped to.

A bit ``b`` in {0, 1} becomes the signal ``x = bit_scale * (2b - 1)`` in {-bit_scale, +bit_scale}; the flow
runs in signal space. Everything that crosses between the two spaces calls these functions.
"""


import torch


def check_binary(bits: torch.Tensor, name: str = "bits") -> None:
    """Raise a `ValueError` naming `name` unless every value of `bits` is 0 or 1."""
    if bits.is_floating_point() and not torch.isfinite(bits).all():
        raise ValueError(f"`{name}` must hold only 0 and 1, but it contains non-finite values.")
    if not ((bits == 0) | (bits == 1)).all():
        found = torch.unique(bits.detach().flatten())[:6].tolist()
        raise ValueError(f"`{name}` must hold only 0 and 1, but it contains other values, e.g. {found}.")


def bits_to_signal(bits: torch.Tensor, bit_scale: float = 1.0, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Map bits in {0, 1} to the signal ``bit_scale * (2b - 1)``."""
    check_binary(bits)
    return (2 * bits.to(dtype) - 1) * bit_scale


def signal_to_bits(signal: torch.Tensor) -> torch.Tensor:
    """Hard decision: bit 1 where the signal is positive, else 0 (float tensor of 0/1, same dtype)."""
    return (signal > 0).to(signal.dtype)


def signal_to_probabilities(signal: torch.Tensor, bit_scale: float = 1.0) -> torch.Tensor:
    """P(bit = 1) read off a soft signal in [-bit_scale, bit_scale]: ``(x / bit_scale + 1) / 2``, clipped to [0, 1].

    For an x-prediction this is the posterior probability of each bit; for logits ``l`` it equals ``sigmoid(l)``
    because ``x_hat = bit_scale * tanh(l / 2)``.
    """
    return ((signal / bit_scale + 1) / 2).clamp(0.0, 1.0)
