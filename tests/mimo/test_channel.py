"""The channel simulator: symbol energy, Gray mapping, the real-valued equivalent, the SNR convention, correlated
channels and imperfect channel knowledge."""

import math

import pytest
import torch

from diffusers_binflow.mimo import (
    MODULATIONS,
    channel_given_estimate,
    complex_to_real,
    expectation_propagation,
    get_modulation,
    lmmse,
    simulate,
    snr_db_to_ebn0_db,
)
from diffusers_binflow.mimo.sionna_bridge import real_to_complex


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


def test_correlated_channels_follow_the_exponential_kronecker_model():
    """E[h_i h_j^*] over receive antennas is rho^|i - j| (and so over transmit antennas), entries keep unit power,
    and rho = 0 is the i.i.d. channel of the same draws."""
    rho, generator = 0.7, torch.Generator().manual_seed(0)
    batch = simulate(20000, 3, 4, "qpsk", 10.0, generator=generator, correlation=rho)
    _, H = real_to_complex(batch.y, batch.H, "qpsk")
    receive = torch.einsum("bik,bjk->ij", H, H.conj()) / (H.shape[0] * H.shape[2])
    transmit = torch.einsum("bki,bkj->ij", H, H.conj()) / (H.shape[0] * H.shape[1])
    for matrix, n in ((receive, 4), (transmit, 3)):
        expected = rho ** (torch.arange(n)[:, None] - torch.arange(n)).abs().double()
        torch.testing.assert_close(matrix.real.double(), expected, atol=0.03, rtol=0)
    iid = simulate(5, 3, 4, "qpsk", 10.0, generator=torch.Generator().manual_seed(1))
    same = simulate(5, 3, 4, "qpsk", 10.0, generator=torch.Generator().manual_seed(1), correlation=0.0)
    assert torch.equal(iid.H, same.H) and torch.equal(iid.y, same.y)


def test_imperfect_channel_knowledge_gives_the_receiver_a_noisy_estimate():
    exact = simulate(4000, 4, 4, "16qam", 20.0, generator=torch.Generator().manual_seed(2))
    noisy = simulate(4000, 4, 4, "16qam", 20.0, generator=torch.Generator().manual_seed(2), csi_error_var=0.1)
    assert exact.H_true is exact.H
    assert torch.equal(noisy.H_true, exact.H) and torch.equal(noisy.y, exact.y) and torch.equal(noisy.bits, exact.bits)
    _, error = real_to_complex(noisy.y, noisy.H - noisy.H_true, "16qam")
    assert (error.abs() ** 2).mean().item() == pytest.approx(0.1, rel=0.05)
    # the estimate costs a detector that trusts it: LMMSE's BER rises
    ber = lambda b: (lmmse(b.y, b.H, b.noise_var, "16qam").bits != b.bits).float().mean()  # noqa: E731
    assert ber(noisy) > 2 * ber(exact)


def test_a_receiver_that_knows_the_error_variance_reads_the_estimate_as_an_exact_linear_model():
    v = 0.1
    draw = lambda aware: simulate(20000, 4, 4, "qpsk", 30.0, generator=torch.Generator().manual_seed(3),  # noqa: E731
                                  csi_error_var=v, csi_aware=aware)
    naive, aware = draw(False), draw(True)
    assert torch.equal(aware.y, naive.y) and torch.equal(aware.bits, naive.bits)
    assert torch.equal(aware.H_true, naive.H_true) and not torch.equal(aware.H, naive.H)
    H, noise_var = channel_given_estimate(naive.H, naive.noise_var, v, num_tx=4)
    assert torch.equal(aware.H, H) and torch.equal(aware.noise_var, noise_var)

    def residual_and_slope(batch):
        """y minus the model's mean, its variance and its regression slope on that mean (0 for an exact model)."""
        mean = (batch.H @ batch.symbols[..., None]).squeeze(-1)
        residual = batch.y - mean
        return residual.var().item(), ((residual * mean).sum() / (mean * mean).sum()).item()

    variance, slope = residual_and_slope(aware)
    assert variance == pytest.approx(noise_var[0].item() / 2, rel=0.03)  # N0' / 2 per real dimension
    assert slope == pytest.approx(0, abs=0.005)
    # Reading the estimate as exact leaves a residual that still depends on H_hat s: slope -v / (1 + v).
    assert residual_and_slope(naive)[1] == pytest.approx(-v / (1 + v), abs=0.005)
    # Nothing to read without an error; the function is the same on a complex channel.
    exact = simulate(8, 4, 4, "qpsk", 10.0, generator=torch.Generator().manual_seed(3))
    same = simulate(8, 4, 4, "qpsk", 10.0, generator=torch.Generator().manual_seed(3), csi_aware=True)
    assert torch.equal(exact.H, same.H) and torch.equal(exact.noise_var, same.noise_var)
    H_c = torch.randn(3, 4, 4, dtype=torch.complex64)
    torch.testing.assert_close(complex_to_real(torch.zeros(3, 4, dtype=torch.complex64),
                                               channel_given_estimate(H_c, 1.0, v, 4)[0], "qpsk")[1],
                               channel_given_estimate(complex_to_real(torch.zeros(3, 4, dtype=torch.complex64), H_c,
                                                                      "qpsk")[1], 1.0, v, 4)[0])


def test_detectors_that_know_the_error_variance_lose_most_of_the_error_floor():
    """EP and LMMSE given an estimate as if exact are overconfident at high SNR; read as `channel_given_estimate`
    does, the same channel uses are detected with far fewer errors."""
    errors = {}
    for aware in (False, True):
        batch = simulate(8192, 4, 4, "qpsk", 24.0, generator=torch.Generator().manual_seed(5), csi_error_var=0.02,
                         csi_aware=aware)
        for name, detect in (("lmmse", lmmse), ("ep", expectation_propagation)):
            errors[name, aware] = int((detect(batch.y, batch.H, batch.noise_var, "qpsk").bits != batch.bits).sum())
    assert errors["ep", True] < errors["ep", False] / 3 and errors["lmmse", True] < 0.8 * errors["lmmse", False]


@pytest.mark.parametrize("options,message", [({"correlation": 1.0}, "correlation"), ({"correlation": -0.1}, "correlation"),
                                             ({"csi_error_var": -1.0}, "csi_error_var"),
                                             ({"csi_error_var": float("nan")}, "csi_error_var"),
                                             ({"csi_error_var": 0.1, "csi_aware": True, "correlation": 0.5},
                                              "i.i.d.")])
def test_bad_channel_options_are_refused(options, message):
    with pytest.raises(ValueError, match=message):
        simulate(2, 2, 2, "qpsk", 10.0, **options)
