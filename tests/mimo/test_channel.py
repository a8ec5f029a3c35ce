"""The channel simulator: symbol energy, Gray mapping, the real-valued equivalent and the SNR convention."""

import math

import pytest
import torch

from diffusers_binflow.mimo import (
    MODULATIONS,
    complex_to_real,
    get_modulation,
    simulate,
    snr_db_to_ebn0_db,
)


@pytest.mark.parametrize("name", list(MODULATIONS))
def test_constellation_has_unit_energy_per_complex_symbol(name):
    modulation = get_modulation(name)
    levels, _ = modulation.constellation(dtype=torch.float64)
    assert math.isclose(modulation.real_dims * levels.pow(2).mean().item(), 1.0, rel_tol=1e-6)


@pytest.mark.parametrize("name", list(MODULATIONS))
def test_simulated_symbols_have_unit_energy(name):
    batch = simulate(20000, 2, 2, name, 10.0, generator=torch.Generator().manual_seed(0))
    energy_per_complex_symbol = batch.symbols.pow(2).sum(1).mean() / 2
    assert abs(energy_per_complex_symbol.item() - 1) < 0.03


@pytest.mark.parametrize("name", list(MODULATIONS))
def test_gray_mapping_round_trips_and_neighbours_differ_in_one_bit(name):
    modulation = get_modulation(name)
    bits = torch.randint(0, 2, (500, 3 * modulation.bits_per_real), generator=torch.Generator().manual_seed(1))
    assert torch.equal(modulation.symbols_to_bits(modulation.bits_to_symbols(bits.float())), bits.float())
    levels, labels = modulation.constellation()
    assert (levels[1:] > levels[:-1]).all()
    assert ((labels[1:] != labels[:-1]).sum(1) == 1).all()  # Gray: adjacent levels differ in exactly one bit


def test_qpsk_is_the_bit_signal_scaled_and_16qam_has_the_standard_levels():
    qpsk, qam = get_modulation("qpsk"), get_modulation("16qam")
    assert torch.allclose(qpsk.bits_to_symbols(torch.tensor([0.0, 1.0])), torch.tensor([-1, 1]) / math.sqrt(2))
    levels, labels = qam.constellation()
    assert torch.allclose(levels, torch.tensor([-3.0, -1, 1, 3]) / math.sqrt(10))
    assert labels.tolist() == [[0, 0], [0, 1], [1, 1], [1, 0]]


def test_noise_and_channel_follow_the_snr_convention():
    num_tx, num_rx, snr_db = 4, 2, 6.0
    batch = simulate(40000, num_tx, num_rx, "qpsk", snr_db, generator=torch.Generator().manual_seed(2))
    noise = batch.y - (batch.H @ batch.symbols[..., None]).squeeze(-1)
    n0 = num_tx / 10 ** (snr_db / 10)
    assert torch.allclose(batch.noise_var, torch.full((40000,), n0))
    assert abs(noise.pow(2).mean().item() / (n0 / 2) - 1) < 0.02  # each real dimension carries N0 / 2
    assert abs(batch.H.pow(2).mean().item() * 2 - 1) < 0.02  # complex entries have unit variance
    signal = (batch.H @ batch.symbols[..., None]).pow(2).sum((1, 2)).mean() / num_rx
    assert abs(10 * math.log10(signal.item() / n0) - snr_db) < 0.1  # SNR per receive antenna


def test_real_equivalent_reproduces_the_complex_product():
    generator = torch.Generator().manual_seed(3)
    H = torch.randn(5, 3, 2, dtype=torch.complex64, generator=generator)
    s = torch.randn(5, 2, dtype=torch.complex64, generator=generator)
    y = (H @ s[..., None]).squeeze(-1)
    y_r, H_r = complex_to_real(y, H, "qpsk")
    assert torch.allclose(y_r, (H_r @ torch.cat([s.real, s.imag], -1)[..., None]).squeeze(-1), atol=1e-5)


def test_simulation_is_seeded_and_snr_may_vary_per_channel_use():
    snrs = torch.tensor([0.0, 10.0, 20.0])
    a = simulate(3, 2, 2, "16qam", snrs, generator=torch.Generator().manual_seed(4))
    b = simulate(3, 2, 2, "16qam", snrs, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a.y, b.y) and torch.equal(a.bits, b.bits)
    assert torch.allclose(a.noise_var, 2 / 10 ** (snrs / 10))


def test_ebn0_conversion():
    # 4x4 QPSK: Eb/N0 = SNR * num_rx / (num_tx * 2 bits)
    assert math.isclose(snr_db_to_ebn0_db(10.0, 4, 4, "qpsk"), 10 - 10 * math.log10(2))


def test_unknown_modulation_is_named():
    with pytest.raises(ValueError, match="8psk"):
        get_modulation("8psk")
