"""Classic detectors (Sionna's, through the bridge): ML equals brute force, LMMSE's estimate its direct formula,
K-best and soft outputs behave, bad input is refused."""

import itertools
import math

import pytest
import torch

from diffusers_binflow.mimo import (
    expectation_propagation,
    get_modulation,
    k_best,
    lmmse,
    lmmse_estimate,
    maximum_likelihood,
    simulate,
    zero_forcing,
)
from diffusers_binflow.mimo.detectors import DEFAULT_LLR_CLIP, all_bit_vectors, list_detection


def brute_force_llrs(y, H, noise_var, modulation):
    modulation = get_modulation(modulation)
    num_bits = H.shape[-1] * modulation.bits_per_real
    log_liks = {}
    for bits in itertools.product([0.0, 1.0], repeat=num_bits):
        s = modulation.bits_to_symbols(torch.tensor(bits, dtype=y.dtype))
        log_liks[bits] = -float(((y - H @ s) ** 2).sum()) / noise_var
    llrs = []
    for i in range(num_bits):
        ones = torch.logsumexp(torch.tensor([v for b, v in log_liks.items() if b[i] == 1]), 0)
        zeros = torch.logsumexp(torch.tensor([v for b, v in log_liks.items() if b[i] == 0]), 0)
        llrs.append(float(ones - zeros))
    return torch.tensor(llrs, dtype=torch.float64)


@pytest.mark.parametrize("modulation,num_tx,num_rx", [("qpsk", 2, 2), ("qpsk", 3, 4), ("16qam", 1, 2),
                                                      ("64qam", 1, 1)])
def test_ml_equals_brute_force(modulation, num_tx, num_rx):
    """Exact APP LLRs of our bits, in our order and sign, and hard bits that are their signs (bit-wise MAP)."""
    batch = simulate(12, num_tx, num_rx, modulation, 3.0, generator=torch.Generator().manual_seed(0))
    y, H = batch.y.double(), batch.H.double()
    out = maximum_likelihood(y, H, batch.noise_var.double(), modulation)
    assert out.llrs.dtype == torch.float64
    for i in range(12):
        expected = brute_force_llrs(y[i], H[i], float(batch.noise_var[i]), modulation)
        assert torch.allclose(out.llrs[i], expected, atol=1e-6)
        assert torch.equal(out.bits[i], (expected > 0).double())


def test_ml_chunks_agree_with_one_pass():
    batch = simulate(50, 2, 2, "qpsk", 5.0, generator=torch.Generator().manual_seed(1))
    whole = maximum_likelihood(batch.y, batch.H, batch.noise_var, "qpsk")
    chunked = maximum_likelihood(batch.y, batch.H, batch.noise_var, "qpsk", max_elements=64)
    assert torch.equal(whole.bits, chunked.bits) and torch.allclose(whole.llrs, chunked.llrs)


def test_ml_refuses_systems_beyond_enumeration():
    batch = simulate(2, 16, 16, "qpsk", 5.0)
    with pytest.raises(ValueError, match="k_best"):
        maximum_likelihood(batch.y, batch.H, batch.noise_var, "qpsk")


def test_lmmse_matches_the_direct_formula():
    """E[s y^T] E[y y^T]^-1 y = Es H^T (Es H H^T + (N0/2) I)^-1 y, the other side of the matrix inversion lemma."""
    modulation = get_modulation("16qam")
    batch = simulate(8, 3, 4, modulation, 8.0, generator=torch.Generator().manual_seed(2))
    y, H, n0 = batch.y.double(), batch.H.double(), batch.noise_var.double()
    estimate, variance = lmmse_estimate(y, H, n0, modulation)
    es = modulation.energy_per_real
    for i in range(8):
        W = es * H[i].T @ torch.linalg.inv(es * H[i] @ H[i].T + n0[i] / 2 * torch.eye(H.shape[1], dtype=H.dtype))
        mu = torch.diagonal(W @ H[i])
        assert torch.allclose(estimate[i], W @ y[i] / mu, atol=1e-9)
        # the error of the bias-free estimate: Es (1 - mu) / mu
        assert torch.allclose(variance[i], es * (1 - mu) / mu, atol=1e-9)


def test_linear_detectors_are_exact_without_noise():
    batch = simulate(30, 3, 4, "16qam", 200.0, generator=torch.Generator().manual_seed(3))
    for detector in (zero_forcing, lmmse, expectation_propagation, k_best):
        assert torch.equal(detector(batch.y, batch.H, batch.noise_var, "16qam").bits, batch.bits)


def test_ep_without_iterations_is_lmmse_and_its_iterations_move_it_towards_ml():
    """With the Gaussian prior's moments and no update, EP's cavity is LMMSE's bias-free estimate (Sionna's LMMSE
    here); its iterations replace that prior by the discrete one and must close most of the gap to ML (4x4 QPSK,
    14 dB)."""
    batch = simulate(3000, 4, 4, "qpsk", 14.0, generator=torch.Generator().manual_seed(6))
    args = (batch.y.double(), batch.H.double(), batch.noise_var.double(), "qpsk")
    assert torch.allclose(expectation_propagation(*args, iterations=0).llrs, lmmse(*args).llrs, atol=1e-6)
    errors = lambda bits: int((bits != batch.bits).sum())  # noqa: E731
    linear, ep, ml = errors(lmmse(*args).bits), errors(expectation_propagation(*args).bits), errors(
        maximum_likelihood(*args).bits)
    assert ml < ep < linear / 2


def test_list_detection_takes_the_closest_candidate_and_max_log_llrs():
    bits = torch.tensor([[[0.0, 1.0], [1.0, 1.0], [0.0, 0.0]]])  # one channel use, three candidates
    distances = torch.tensor([[3.0, 1.0, 7.0]])
    out = list_detection(bits, distances, torch.tensor([[0.5]]), llr_clip=9.0)
    assert torch.equal(out.bits, torch.tensor([[1.0, 1.0]]))
    # bit 0: min d(b=0) = 3, min d(b=1) = 1 -> (3 - 1) / (2 * 0.5) = 2; bit 1: min d(b=0) = 7, min d(b=1) = 1 -> 6
    assert torch.allclose(out.llrs, torch.tensor([[2.0, 6.0]]))
    lone = list_detection(bits[:, :2], distances[:, :2], torch.tensor([[0.5]]), llr_clip=9.0)
    assert lone.llrs[0, 1] == 9.0  # no candidate with bit 1 = 0: the clip


def test_list_app_weighs_each_distinct_candidate_by_its_likelihood():
    bits = torch.tensor([[[0.0, 1.0], [1.0, 1.0], [0.0, 0.0]]])
    distances = torch.tensor([[3.0, 1.0, 7.0]])
    out = list_detection(bits, distances, torch.tensor([[0.5]]), llr_clip=9.0, output="app")
    # bit 0: log e^-1 - log(e^-3 + e^-7); bit 1: log(e^-3 + e^-1) - log e^-7
    expected = torch.tensor([[-1 - math.log(math.exp(-3) + math.exp(-7)), math.log(math.exp(-3) + math.exp(-1)) + 7]])
    torch.testing.assert_close(out.llrs, expected)
    assert torch.equal(out.bits, torch.tensor([[1.0, 1.0]]))
    # A candidate drawn twice counts once; a bit no candidate contradicts gets the clip.
    repeated = list_detection(bits[:, [0, 1, 0, 2, 1]], distances[:, [0, 1, 0, 2, 1]], torch.tensor([[0.5]]),
                              llr_clip=9.0, output="app")
    torch.testing.assert_close(repeated.llrs, out.llrs)
    assert list_detection(bits[:, :2], distances[:, :2], torch.tensor([[0.5]]), llr_clip=9.0,
                          output="app").llrs[0, 1] == 9.0
    with pytest.raises(ValueError, match="'maxlog' or 'app'"):
        list_detection(bits, distances, torch.tensor([[0.5]]), output="exact")


def test_list_app_over_every_candidate_is_the_ml_detector_s_exact_app():
    """The bit-wise MAP LLRs of Sionna's exhaustive ML ("app") are the list APP of the full candidate list; where
    the two decisions differ from the closest candidate's (max-log), the APP ones make fewer errors."""
    batch = simulate(2000, 3, 3, "qpsk", 2.0, generator=torch.Generator().manual_seed(4))
    candidates = all_bit_vectors(6).expand(2000, -1, -1)
    distances = ((batch.y[:, None] - (batch.H @ get_modulation("qpsk").bits_to_symbols(all_bit_vectors(6)).T).mT)
                 ** 2).sum(-1)
    app = list_detection(candidates, distances, batch.noise_var[:, None] / 2, output="app")
    ml = maximum_likelihood(batch.y, batch.H, batch.noise_var, "qpsk")
    clipped = ml.llrs.abs() < DEFAULT_LLR_CLIP - 1
    torch.testing.assert_close(app.llrs[clipped], ml.llrs[clipped], atol=1e-3, rtol=1e-4)
    assert torch.equal(app.bits, ml.bits)
    max_log = list_detection(candidates, distances, batch.noise_var[:, None] / 2)
    errors = lambda out: int((out.bits != batch.bits).sum())  # noqa: E731
    assert (max_log.bits != app.bits).any() and errors(app) < errors(max_log)


def test_k_best_with_a_full_list_is_max_log_ml_and_smaller_lists_are_no_better():
    """With every candidate in its list, K-best's LLRs are the max-log ones of brute force."""
    batch = simulate(400, 3, 3, "qpsk", 6.0, generator=torch.Generator().manual_seed(4))
    ml = maximum_likelihood(batch.y, batch.H, batch.noise_var, "qpsk")
    full = k_best(batch.y, batch.H, batch.noise_var, "qpsk", k=64)
    candidates = all_bit_vectors(6)
    distances = ((batch.y[:, None] - (batch.H @ get_modulation("qpsk").bits_to_symbols(candidates).T).mT) ** 2).sum(-1)
    max_log = list_detection(candidates.expand(400, -1, -1), distances, batch.noise_var[:, None] / 2)
    torch.testing.assert_close(full.llrs, max_log.llrs, atol=1e-3, rtol=1e-4)
    assert torch.equal(full.bits, max_log.bits)
    errors = lambda out: int((out.bits != batch.bits).sum())  # noqa: E731
    assert errors(k_best(batch.y, batch.H, batch.noise_var, "qpsk", k=1)) >= errors(ml)


def test_soft_outputs_are_calibrated_probabilities():
    batch = simulate(4000, 2, 2, "qpsk", 4.0, generator=torch.Generator().manual_seed(5))
    for detector in (maximum_likelihood, lmmse):
        p = detector(batch.y, batch.H, batch.noise_var, "qpsk").probabilities
        confident = (p - 0.5).abs() > 0.4
        # where a detector says >= 90% sure, it is right about that often
        accuracy = ((p[confident] > 0.5).float() == batch.bits[confident]).float().mean()
        assert accuracy > 0.88


@pytest.mark.parametrize("detector", [zero_forcing, lmmse, expectation_propagation, maximum_likelihood, k_best])
def test_bad_input_is_refused(detector):
    if detector is not expectation_propagation:  # Sionna's: QAM only
        bpsk = simulate(4, 2, 2, "bpsk", 5.0)
        with pytest.raises(ValueError, match="QAM"):
            detector(bpsk.y, bpsk.H, bpsk.noise_var, "bpsk")
    batch = simulate(4, 2, 2, "qpsk", 5.0)
    with pytest.raises(ValueError, match="disagree"):
        detector(batch.y[:, :3], batch.H, batch.noise_var, "qpsk")
    with pytest.raises(ValueError, match="non-finite"):
        detector(batch.y * float("nan"), batch.H, batch.noise_var, "qpsk")
    with pytest.raises(ValueError, match="positive"):
        detector(batch.y, batch.H, -1.0, "qpsk")


def test_ep_agrees_with_sionnas_where_sionnas_works_and_stays_exact_where_it_breaks():
    """Why EP is this package's own: configured alike (l = iterations + 1 passes, old sites weighted 1 - damping),
    Sionna's EPDetector decides like ours at an ordinary SNR, but in single precision it returns wrong bits on an
    all but noiseless channel. If this starts failing on the second assertion, Sionna fixed it: use theirs."""
    from sionna.phy.mimo import EPDetector

    from diffusers_binflow.mimo.detectors import EP_DAMPING, EP_ITERATIONS
    from diffusers_binflow.mimo.sionna_bridge import llrs_from_sionna, noise_covariance, real_to_complex

    sionna_ep = EPDetector("bit", 2, l=EP_ITERATIONS + 1, beta=1 - EP_DAMPING)

    def sionna_bits(batch):
        y, H = real_to_complex(batch.y, batch.H, "qpsk")
        return (llrs_from_sionna(sionna_ep(y, H, noise_covariance(batch.noise_var, 4, y.dtype))) > 0).float()

    ordinary = simulate(2000, 4, 4, "qpsk", 12.0, generator=torch.Generator().manual_seed(7))
    ours = expectation_propagation(ordinary.y, ordinary.H, ordinary.noise_var, "qpsk").bits
    assert (ours == sionna_bits(ordinary)).all(1).float().mean() > 0.97
    clean = simulate(300, 4, 4, "qpsk", 80.0, generator=torch.Generator().manual_seed(8))
    assert torch.equal(expectation_propagation(clean.y, clean.H, clean.noise_var, "qpsk").bits, clean.bits)
    assert (sionna_bits(clean) != clean.bits).float().mean() > 0.01
