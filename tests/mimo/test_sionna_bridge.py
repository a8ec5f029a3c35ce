"""The bridge to Sionna: every bit pattern maps to the same complex symbols both ways, and batches convert exactly."""

import pytest
import torch
from sionna.phy.mapping import Mapper

from diffusers_binflow.mimo import complex_to_real, get_modulation, simulate
from diffusers_binflow.mimo.detectors import all_bit_vectors
from diffusers_binflow.mimo.sionna_bridge import (
    bits_from_sionna,
    bits_to_sionna,
    llrs_from_sionna,
    noise_covariance,
    real_to_complex,
    sionna_bit_order,
)


@pytest.mark.parametrize("modulation,num_tx", [("qpsk", 1), ("qpsk", 4), ("16qam", 1), ("16qam", 2), ("64qam", 1)])
def test_every_bit_pattern_maps_to_the_same_symbols(modulation, num_tx):
    mod = get_modulation(modulation)
    bits = all_bit_vectors(mod.num_real_symbols(num_tx) * mod.bits_per_real)
    real = mod.bits_to_symbols(bits)  # (N, 2 num_tx): real parts, then imaginary parts
    ours = torch.complex(real[:, :num_tx], real[:, num_tx:])
    theirs = Mapper("qam", mod.bits_per_symbol)(bits_to_sionna(bits, num_tx, mod).flatten(-2))
    torch.testing.assert_close(theirs, ours, atol=1e-6, rtol=0)
    assert torch.equal(bits_from_sionna(bits_to_sionna(bits, num_tx, mod)), bits)


def test_bit_order_for_four_qpsk_streams_is_real_bits_then_imaginary_bits():
    assert sionna_bit_order(4, "qpsk").tolist() == [0, 2, 4, 6, 1, 3, 5, 7]
    assert sionna_bit_order(1, "16qam").tolist() == [0, 2, 1, 3]


def test_llrs_follow_the_bits():
    """A positive LLR of Sionna's label is a negative one of ours (inverted labels), at the reordered position."""
    sionna_llrs = torch.tensor([[[1.0, -2.0], [3.0, -4.0]]])  # 2 QPSK streams
    sionna_bits = (sionna_llrs > 0).float()
    assert torch.equal(llrs_from_sionna(sionna_llrs) > 0, bits_from_sionna(sionna_bits).bool())
    assert llrs_from_sionna(sionna_llrs).tolist() == [[-1.0, -3.0, 2.0, 4.0]]


def test_a_batch_converts_back_to_complex_exactly():
    batch = simulate(5, 3, 4, "16qam", 10.0, generator=torch.Generator().manual_seed(0))
    y, H = real_to_complex(batch.y, batch.H, "16qam")
    assert y.shape == (5, 4) and H.shape == (5, 4, 3) and y.dtype == torch.complex64
    y_r, H_r = complex_to_real(y, H, "16qam")
    assert torch.equal(y_r, batch.y) and torch.equal(H_r, batch.H)
    covariance = noise_covariance(batch.noise_var, 4, y.dtype)
    assert torch.equal(covariance[2], batch.noise_var[2] * torch.eye(4, dtype=y.dtype))


def test_bpsk_has_no_sionna_counterpart():
    with pytest.raises(ValueError, match="QAM"):
        sionna_bit_order(2, "bpsk")
