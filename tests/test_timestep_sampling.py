import math

import pytest
import torch

from diffusers_binflow.timestep_sampling import expected_inverse_square_sigma, sample_sigmas


def test_uniform_sigmas_fill_the_half_open_unit_interval():
    sigmas = sample_sigmas(100_000, generator=torch.Generator().manual_seed(0))
    assert sigmas.shape == (100_000,) and sigmas.min() > 0 and sigmas.max() <= 1
    assert sigmas.mean().item() == pytest.approx(0.5, abs=0.005)
    assert torch.histc(sigmas, bins=10, min=0, max=1).div(1e4).sub(1).abs().max() < 0.05


def test_logit_normal_sigmas_have_the_requested_logit_moments():
    sigmas = sample_sigmas(100_000, "logit_normal", logit_mean=0.8, logit_std=0.8,
                           generator=torch.Generator().manual_seed(0))
    logits = torch.logit(sigmas.double())
    assert logits.mean().item() == pytest.approx(0.8, abs=0.01)
    assert logits.std().item() == pytest.approx(0.8, abs=0.01)


def test_same_generator_same_sigmas():
    a = sample_sigmas(8, "logit_normal", generator=torch.Generator().manual_seed(3))
    b = sample_sigmas(8, "logit_normal", generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)


def test_unknown_scheme_is_refused():
    with pytest.raises(ValueError, match="scheme"):
        sample_sigmas(4, "cosine")


def test_logit_normal_mean_weight_closed_form_is_finite_and_matches_monte_carlo():
    closed = expected_inverse_square_sigma("logit_normal", 0.8, 0.8)
    assert closed == pytest.approx(2.96, abs=0.01)  # JiT's t ~ logit-normal(-0.8, 0.8)
    draws = sample_sigmas(400_000, "logit_normal", 0.8, 0.8, generator=torch.Generator().manual_seed(0))
    assert (draws.double() ** -2).mean().item() == pytest.approx(closed, rel=0.02)
    assert math.isinf(expected_inverse_square_sigma("uniform"))


def test_uniform_fraction_mixes_in_uniform_sigmas_and_zero_changes_nothing():
    draw = lambda fraction: sample_sigmas(200_000, "logit_normal", 0.8, 0.8, uniform_fraction=fraction,  # noqa: E731
                                          generator=torch.Generator().manual_seed(0))
    assert torch.equal(draw(0.0), sample_sigmas(200_000, "logit_normal", 0.8, 0.8,
                                                generator=torch.Generator().manual_seed(0)))
    logit_normal_share = (draw(0.0) < 0.2).double().mean().item()
    assert logit_normal_share < 0.01  # the data end is almost never trained without the mixture
    # P(sigma < 0.2) of the mixture = 0.3 * 0.2 + 0.7 * (logit-normal's share)
    expected = 0.3 * 0.2 + 0.7 * logit_normal_share
    assert (draw(0.3) < 0.2).double().mean().item() == pytest.approx(expected, abs=0.003)
    assert draw(1.0).min() > 0 and (draw(1.0) < 0.2).double().mean().item() == pytest.approx(0.2, abs=0.003)
    assert math.isinf(expected_inverse_square_sigma("logit_normal", 0.8, 0.8, uniform_fraction=0.1))


@pytest.mark.parametrize("fraction", [-0.1, 1.5, float("nan"), True])
def test_uniform_fraction_outside_zero_one_is_refused(fraction):
    with pytest.raises(ValueError, match="uniform_fraction"):
        sample_sigmas(4, "logit_normal", uniform_fraction=fraction)
