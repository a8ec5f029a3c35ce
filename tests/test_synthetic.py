import pytest
import torch

from diffusers_binflow.flow import interpolate
from diffusers_binflow.synthetic import ProductBernoulliMixture


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


def test_bad_parameters_are_refused():
    with pytest.raises(ValueError, match="one weight per component"):
        ProductBernoulliMixture([1.0, 1.0], [[0.5]])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        ProductBernoulliMixture([1.0], [[1.5]])
