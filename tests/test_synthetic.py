import pytest
import torch

from diffusers_binflow.flow import interpolate
from diffusers_binflow.synthetic import (
    IsingModel,
    LinearCode,
    ProductBernoulliMixture,
    all_states,
    exact_posterior_mean,
    state_index,
)


def test_samples_follow_the_mixture():
    mixture = ProductBernoulliMixture([0.3, 0.7], [[1.0, 0.0, 0.5], [0.0, 1.0, 0.5]])
    bits = mixture.sample(40_000, generator=torch.Generator().manual_seed(0))
    assert bits.shape == (40_000, 3) and set(bits.unique().tolist()) == {0.0, 1.0}
    assert bits[:, 0].mean().item() == pytest.approx(0.3, abs=0.01)
    assert bits[:, 2].mean().item() == pytest.approx(0.5, abs=0.01)
    assert (bits[:, 0] + bits[:, 1] == 1).all()


def test_product_bernoulli_posterior_mean_is_the_closed_form_tanh():
    probs = torch.tensor([0.1, 0.5, 0.8])
    sample, sigma = torch.randn(5, 3, generator=torch.Generator().manual_seed(1)), 0.4
    expected = torch.tanh(torch.atanh(2 * probs - 1) + (1 - sigma) * sample / sigma**2)
    torch.testing.assert_close(ProductBernoulliMixture([1.0], probs[None]).posterior_mean(sample, sigma), expected)


def test_posterior_mean_matches_monte_carlo_regression():
    """E[x | x_sigma] by brute force: average x over draws whose x_sigma lands near the query point."""
    mixture = ProductBernoulliMixture([0.5, 0.5], [[0.9, 0.9], [0.1, 0.2]])
    g = torch.Generator().manual_seed(2)
    x = 2 * mixture.sample(2_000_000, generator=g) - 1
    noisy = interpolate(x, torch.randn(x.shape, generator=g), 0.6)
    query = torch.tensor([[0.3, -0.2]])
    near = ((noisy - query).abs() < 0.05).all(1)
    torch.testing.assert_close(mixture.posterior_mean(query, 0.6)[0], x[near].mean(0), atol=0.03, rtol=0)


def test_bit_scale_multiplies_the_evidence_and_the_mean():
    """Signal +-s in unit noise carries s times the log-likelihood ratio of +-1: a = s (1 - sigma) x_sigma / sigma^2."""
    mixture = ProductBernoulliMixture([1.0], [[0.3, 0.6]])
    sample = torch.randn(4, 2, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(mixture.posterior_mean(sample, 0.5, bit_scale=2.0),
                               2 * mixture.posterior_mean(2 * sample, 0.5))


@pytest.mark.parametrize("bit_scale", [1.0, 2.0])
def test_enumerated_posterior_mean_equals_the_mixture_closed_form_at_every_sigma(bit_scale):
    """Summing over all 2^d states weighted by p(b) N(x_sigma; (1 - sigma) x, sigma^2) is the closed form; one sigma
    per row, chunks smaller than the batch, and states of probability 0 (a prototype) included."""
    mixture = ProductBernoulliMixture([0.2, 0.5, 0.3], [[0.1, 0.9, 0.5, 0.7, 0.2], [0.6, 0.3, 0.8, 0.1, 0.5],
                                                          [1.0, 0.0, 1.0, 1.0, 0.0]])
    g = torch.Generator().manual_seed(4)
    sample, sigmas = 1.5 * torch.randn(9, 5, generator=g), torch.tensor([0.05, 0.1, 0.2, 0.35, 0.5, 0.65, 0.8, 0.95, 1.0])
    enumerated = exact_posterior_mean(mixture.probabilities(), sample, sigmas, bit_scale=bit_scale, chunk_size=4)
    closed_form = torch.cat([mixture.posterior_mean(row[None], s.item(), bit_scale=bit_scale)
                             for row, s in zip(sample, sigmas)])
    torch.testing.assert_close(enumerated, closed_form, atol=1e-5, rtol=0)
    # sigma = 1 carries no evidence: the prior mean
    torch.testing.assert_close(enumerated[-1], bit_scale * (2 * mixture.sample(400_000, generator=g).mean(0) - 1),
                               atol=0.01, rtol=0)


def test_enumerated_posterior_mean_keeps_to_the_support_and_checks_shapes():
    code = LinearCode.random(n=8, k=3, seed=0)
    mean = exact_posterior_mean(code.probabilities(), torch.randn(6, 8, generator=torch.Generator().manual_seed(5)),
                                0.01)
    assert code.is_valid((mean > 0).float()).all()  # near the data end every estimate is a codeword
    with pytest.raises(ValueError, match=r"2\*\*7 states of \(B, 7\) samples, got \(256,\)"):
        exact_posterior_mean(code.probabilities(), torch.zeros(2, 7), 0.5)
    with pytest.raises(ValueError, match="`sigma` must be positive"):
        exact_posterior_mean(code.probabilities(), torch.zeros(2, 8), torch.tensor([0.5, 0.0]))


def test_bad_parameters_are_refused():
    with pytest.raises(ValueError, match="one weight per component"):
        ProductBernoulliMixture([1.0, 1.0], [[0.5]])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        ProductBernoulliMixture([1.0], [[1.5]])


# --- enumerable distributions: state order, Ising model, linear codes -------------------------------------------

def test_state_index_reads_bits_as_a_binary_number_first_bit_most_significant():
    assert state_index(torch.tensor([[0.0, 0, 1], [1, 0, 0], [1, 1, 0]])).tolist() == [1, 4, 6]
    states = all_states(5)
    assert states.shape == (32, 5) and (state_index(states) == torch.arange(32)).all()
    with pytest.raises(ValueError, match="d <= 20"):
        all_states(21)


def test_mixture_probabilities_are_the_exact_pmf():
    mixture = ProductBernoulliMixture([0.3, 0.7], [[1.0, 0.0, 0.5], [0.2, 0.9, 0.5]])
    p = mixture.probabilities()
    assert p.shape == (8,) and p.sum().item() == pytest.approx(1.0)
    # state 0b101: bits (1, 0, 1)
    expected = 0.3 * 1.0 * 1.0 * 0.5 + 0.7 * 0.2 * 0.1 * 0.5
    assert p[5].item() == pytest.approx(expected)
    assert p[0].item() == pytest.approx(0.7 * 0.8 * 0.1 * 0.5)  # component 0 cannot have bit 0 off
    torch.testing.assert_close(mixture.log_prob(all_states(3)).exp(), p)


def test_ising_probabilities_sum_to_one_and_are_flip_symmetric_at_zero_field():
    model = IsingModel(side=4, temperature=2.269)
    p = model.probabilities()
    assert model.dim == 16 and p.shape == (2**16,) and p.sum().item() == pytest.approx(1.0, abs=1e-9)
    torch.testing.assert_close(p, p.flip(0))  # flipping every bit maps index j to 2**16 - 1 - j
    assert not torch.allclose(IsingModel(4, 2.269, field=0.5).probabilities().flip(0), p)


def test_ising_energy_counts_the_periodic_bonds():
    model = IsingModel(side=4, temperature=1.0)
    assert model.energy(torch.zeros(1, 16)).item() == -32  # 2 * 16 bonds, all aligned
    checkerboard = ((torch.arange(4)[:, None] + torch.arange(4)[None]) % 2).float().reshape(1, 16)
    assert model.energy(checkerboard).item() == 32
    assert IsingModel(4, 1.0, field=0.5).energy(torch.ones(1, 16)).item() == -32 - 8


def test_cold_ising_concentrates_on_the_two_ground_states_and_hot_ising_is_near_uniform():
    cold = IsingModel(4, temperature=0.5).probabilities()
    assert cold[0].item() + cold[-1].item() > 0.999
    hot = IsingModel(4, temperature=1000.0).probabilities()
    assert (hot * 2**16).min().item() > 0.9 and (hot * 2**16).max().item() < 1.1


def test_exact_samples_match_the_probabilities_within_sampling_error():
    g = torch.Generator().manual_seed(0)
    for model, n in ((IsingModel(4, 2.269), 100_000), (LinearCode.hamming(3), 50_000)):
        p = model.probabilities()
        counts = torch.bincount(state_index(model.sample(n, generator=g)), minlength=p.numel()).double()
        likely = p * n > 50
        z = (counts[likely] - n * p[likely]) / (n * p[likely] * (1 - p[likely])).sqrt()
        assert z.abs().max().item() < 5 and counts[p == 0].sum() == 0


def test_ising_rejects_bad_parameters():
    with pytest.raises(ValueError, match="side >= 3"):
        IsingModel(side=2, temperature=1.0)
    with pytest.raises(ValueError, match="d <= 20"):
        IsingModel(side=5, temperature=1.0)
    with pytest.raises(ValueError, match="positive"):
        IsingModel(side=4, temperature=0.0)


def test_hamming_code_has_2_to_the_k_valid_codewords():
    code = LinearCode.hamming(4)
    words = code.codewords()
    assert code.dim == 15 and code.num_info_bits == 11 and words.shape == (2**11, 15)
    assert code.is_valid(words).all() and len(torch.unique(words, dim=0)) == 2**11
    assert code.probabilities().sum().item() == pytest.approx(1.0)
    assert (code.probabilities() > 0).sum().item() == 2**11


def test_code_samples_are_valid_and_random_bits_are_valid_with_probability_2_to_the_minus_checks():
    g = torch.Generator().manual_seed(1)
    for code in (LinearCode.hamming(4), LinearCode.random(16, 8, seed=0)):
        assert code.is_valid(code.sample(2000, generator=g)).all()
        random_bits = (torch.rand(40_000, code.dim, generator=g) < 0.5).float()
        rate, expected = code.is_valid(random_bits).double().mean().item(), 2.0 ** -(code.dim - code.num_info_bits)
        assert rate == pytest.approx(expected, abs=4 * (expected / 40_000) ** 0.5)


def test_random_code_is_fixed_by_its_seed_and_redundant_checks_lower_the_rank():
    assert torch.equal(LinearCode.random(16, 8, seed=3).parity_check_matrix,
                       LinearCode.random(16, 8, seed=3).parity_check_matrix)
    h = LinearCode.hamming(3).parity_check_matrix
    redundant = LinearCode(torch.cat([h, (h[:1] + h[1:2]) % 2]))  # a 4th check that is the sum of two others
    assert redundant.num_info_bits == 4 and len(redundant.codewords()) == 16
    with pytest.raises(ValueError, match="parity_check_matrix"):
        LinearCode([[0, 2, 1]])
