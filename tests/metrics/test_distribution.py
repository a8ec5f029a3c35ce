import math

import pytest
import torch

from diffusers_binflow.metrics import (
    codeword_coverage,
    empirical_histogram,
    finite_sample_floor,
    kl_divergence,
    minimum_samples,
    total_variation,
    validity_rate,
)
from diffusers_binflow.synthetic import IsingModel, LinearCode, ProductBernoulliMixture


def generator(seed=0):
    return torch.Generator().manual_seed(seed)


def test_histogram_counts_states_in_binary_order():
    bits = torch.tensor([[0.0, 1], [0, 1], [1, 1], [0, 0]])
    assert empirical_histogram(bits).tolist() == [0.25, 0.5, 0.0, 0.25]


def test_tv_and_kl_of_a_histogram_equal_to_p_are_zero_and_known_by_hand():
    mixture = ProductBernoulliMixture([1.0], [[0.5, 0.5]])  # uniform on 4 states
    bits = torch.tensor([[0.0, 0], [0, 1], [1, 0], [1, 1]]).repeat(250, 1)
    assert total_variation(bits, mixture.probabilities()) == pytest.approx(0.0)
    assert kl_divergence(bits, mixture.probabilities()) == pytest.approx(0.0, abs=1e-5)
    only_zero = torch.zeros(1000, 2)
    assert total_variation(only_zero, mixture.probabilities()) == pytest.approx(0.75)
    assert kl_divergence(only_zero, mixture.probabilities()) == pytest.approx(math.log(4), abs=1e-5)


def test_minimum_samples_is_ten_per_effective_state_with_a_fixed_floor():
    assert minimum_samples(torch.full((4,), 0.25)) == 1000
    assert minimum_samples(torch.full((2**10,), 2.0**-10)) == 10 * 2**10
    assert minimum_samples(LinearCode.random(16, 8).probabilities()) == 2560


@pytest.mark.parametrize("statistic", ["total_variation", "kl_divergence"])
def test_true_samples_score_near_the_floor_and_a_wrong_distribution_far_above_it(statistic):
    model = IsingModel(4, temperature=2.269)
    p, n = model.probabilities(), 4000
    floor = finite_sample_floor(model, n, statistic, repeats=3, generator=generator(0))
    metric = {"total_variation": total_variation, "kl_divergence": kl_divergence}[statistic]
    true_value = metric(model.sample(n, generator=generator(1)), p)
    wrong_value = metric(IsingModel(4, temperature=3.0).sample(n, generator=generator(2)), p)
    assert 0 < floor and abs(true_value - floor) < 0.15 * floor
    assert wrong_value > 1.5 * floor


def test_code_validity_and_coverage():
    code = LinearCode.random(16, 8, seed=0)
    n = minimum_samples(code.probabilities())
    exact = code.sample(n, generator=generator(0))
    assert validity_rate(exact, code) == 1.0
    # 2560 uniform draws of 256 codewords miss each with probability (1 - 1/256)^2560 ~ 4.5e-5
    assert codeword_coverage(exact, code) == 1.0
    random_bits = (torch.rand(n, 16, generator=generator(1)) < 0.5).float()
    assert validity_rate(random_bits, code) < 0.02
    one_word = code.codewords()[3:4].repeat(n, 1)
    assert validity_rate(one_word, code) == 1.0 and codeword_coverage(one_word, code) == 1 / 256
    coverage = lambda bits, _: codeword_coverage(bits, code)
    assert finite_sample_floor(code, n, coverage, repeats=2, generator=generator()) == 1.0


def test_kl_charges_invalid_samples_a_large_finite_cost():
    code = LinearCode.hamming(3)  # [7, 4]: 16 codewords
    bits = code.sample(1000, generator=generator(0))
    bits[:100, 0] = 1 - bits[:100, 0]  # 10% invalid
    value = kl_divergence(bits, code.probabilities())
    assert math.isfinite(value) and value > 1.0


def test_bad_input_is_refused_with_the_reason():
    p = IsingModel(4, temperature=2.269).probabilities()
    bits = IsingModel(4, temperature=2.269).sample(1000, generator=generator())
    with pytest.raises(ValueError, match=r"\(65536,\)"):
        total_variation(bits[:, :15], p)
    with pytest.raises(ValueError, match=r"shape \(N, d\)"):
        total_variation(bits.reshape(1000, 4, 4), p)
    with pytest.raises(ValueError, match="only 0 and 1"):
        kl_divergence(bits * 0.5, p)
    with pytest.raises(ValueError, match="at least 1000 samples"):
        total_variation(bits[:999], p)
    with pytest.raises(ValueError, match="at least 62110 samples"):
        total_variation(bits, IsingModel(4, temperature=1 / 0.3).probabilities())
    assert total_variation(bits[:10], p, min_samples=10) > 0  # explicit override for smoke runs
    with pytest.raises(ValueError, match="sum to 1"):
        total_variation(bits, p * 2)
    code = LinearCode.hamming(4)
    with pytest.raises(ValueError, match=r"\(N, 15\)"):
        validity_rate(bits, code)
    with pytest.raises(ValueError, match="at least 100 samples"):
        validity_rate(code.sample(50), code)
    with pytest.raises(ValueError, match="at least 20480 samples"):
        codeword_coverage(code.sample(1000), code)
    with pytest.raises(ValueError, match="Unknown statistic"):
        finite_sample_floor(code, 10, "mmd")
