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
