import pytest
import torch

from diffusers_binflow.bits import bits_to_signal
from diffusers_binflow.flow import (
    MAX_LIKELIHOOD_LOGIT,
    check_prediction_type,
    expand_sigma,
    interpolate,
    likelihood_logits,
    model_output_from_x0,
    predict_velocity,
    predict_x0,
    self_conditioned_input,
)


@pytest.fixture
def path():
    g = torch.Generator().manual_seed(0)
    clean = torch.randn(3, 2, 4, generator=g)
    noise = torch.randn(3, 2, 4, generator=g)
    sigma = torch.tensor([0.9, 0.5, 0.1])
    return clean, noise, sigma, interpolate(clean, noise, sigma)


def test_interpolate_ends_are_data_and_noise(path):
    clean, noise, _, _ = path
    assert torch.equal(interpolate(clean, noise, 0.0), clean)
    assert torch.equal(interpolate(clean, noise, 1.0), noise)


@pytest.mark.parametrize("prediction_type", ["sample", "velocity", "epsilon"])
def test_exact_outputs_of_every_prediction_type_recover_x_and_the_velocity(path, prediction_type):
    clean, noise, sigma, sample = path
    exact_output = {"sample": clean, "velocity": noise - clean, "epsilon": noise}[prediction_type]
    torch.testing.assert_close(predict_x0(exact_output, sample, sigma, prediction_type), clean)
    torch.testing.assert_close(predict_velocity(exact_output, sample, sigma, prediction_type), noise - clean)


def test_logits_map_through_scaled_tanh():
    logits = torch.tensor([[-3.0, 0.0, 3.0]])
    x_hat = predict_x0(logits, torch.zeros_like(logits), 0.5, "logits", bit_scale=2.0)
    torch.testing.assert_close(x_hat, 2.0 * (2 * torch.sigmoid(logits) - 1))


def test_flow_prediction_is_diffusers_name_for_the_velocity(path):
    clean, noise, sigma, sample = path
    assert check_prediction_type("flow_prediction") == "velocity"
    for convert in (predict_x0, predict_velocity):
        assert torch.equal(convert(noise - clean, sample, sigma, "flow_prediction"),
                           convert(noise - clean, sample, sigma, "velocity"))
    assert torch.equal(model_output_from_x0(clean, sample, sigma, "flow_prediction"),
                       model_output_from_x0(clean, sample, sigma, "velocity"))


def test_unknown_prediction_type_is_refused():
    with pytest.raises(ValueError, match="prediction_type"):
        predict_x0(torch.zeros(1), torch.zeros(1), 0.5, "x0")


def test_sigma_must_be_scalar_or_one_per_sample():
    with pytest.raises(ValueError, match="one value per sample"):
        expand_sigma(torch.ones(4), torch.zeros(3, 2))


@pytest.mark.parametrize("bit_scale", [1.0, 2.0])
def test_likelihood_logits_are_the_log_odds_of_the_two_path_gaussians(bit_scale):
    sample = torch.linspace(-1, 1, 9)  # inside the cap for these sigmas
    for sigma in (0.3, 0.6, 0.9):
        normal = torch.distributions.Normal
        mean = (1 - sigma) * bit_scale
        exact = normal(mean, sigma).log_prob(sample) - normal(-mean, sigma).log_prob(sample)
        torch.testing.assert_close(likelihood_logits(sample, sigma, bit_scale), exact)


def test_likelihood_logits_are_capped_and_finite_at_the_data_end():
    sample = torch.tensor([-0.5, 0.0, 0.5])
    for sigma in (1e-3, 1e-30, torch.finfo(torch.float32).tiny):
        logits = likelihood_logits(sample, sigma)
        assert torch.equal(logits, torch.tensor([-MAX_LIKELIHOOD_LOGIT, 0.0, MAX_LIKELIHOOD_LOGIT]))


def test_likelihood_residual_is_exact_at_the_data_end_whatever_a_bounded_output_says():
    g = torch.Generator().manual_seed(0)
    bits = (torch.rand(64, 16, generator=g) < 0.5).float()
    clean = bits_to_signal(bits)
    sample = interpolate(clean, torch.randn(clean.shape, generator=g), 0.1)
    wrong = -10 * clean  # a residual that pushes every bit the wrong way by 10 nats
    x_hat = predict_x0(wrong, sample, 0.1, "likelihood_residual")
    assert torch.equal(torch.sign(x_hat), torch.sign(clean))
    # far from the data end the likelihood is weak and the residual decides
    noisy = interpolate(clean, torch.randn(clean.shape, generator=g), 0.95)
    assert torch.equal(torch.sign(predict_x0(wrong, noisy, 0.95, "likelihood_residual")), -torch.sign(clean))


@pytest.mark.parametrize("prediction_type", ["logits", "likelihood_residual"])
def test_model_output_from_x0_inverts_predict_x0_for_logit_predictions(path, prediction_type):
    clean, noise, _, _ = path
    sigma = torch.tensor([0.9, 0.7, 0.5])  # logits of a few nats, where tanh is not saturated and the map inverts
    sample = interpolate(clean, noise, sigma)
    output = torch.randn(sample.shape, generator=torch.Generator().manual_seed(1))
    x0 = predict_x0(output, sample, sigma, prediction_type, bit_scale=2.0)
    torch.testing.assert_close(model_output_from_x0(x0, sample, sigma, prediction_type, bit_scale=2.0), output,
                               atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("shape, dim", [((2, 3, 4, 4), 1), ((2, 5, 4), -1), ((2, 6), -1)],
                         ids=["images", "sequences", "mimo"])
def test_self_conditioned_input_appends_the_estimate_or_zeros_on_the_feature_axis(shape, dim):
    g = torch.Generator().manual_seed(0)
    sample, x_hat = torch.randn(shape, generator=g), torch.randn(shape, generator=g)
    first = self_conditioned_input(sample)
    assert first.shape[dim] == 2 * shape[dim]
    assert torch.equal(first, torch.cat([sample, torch.zeros_like(sample)], dim))
    assert torch.equal(self_conditioned_input(sample, x_hat), torch.cat([sample, x_hat], dim))
    with pytest.raises(ValueError, match="must match"):
        self_conditioned_input(sample, x_hat[:1])


def test_a_likelihood_cap_bounds_the_likelihood_term_so_the_residual_can_veto():
    sample = torch.tensor([[-0.9, -0.1, 0.1, 0.9]])
    capped = likelihood_logits(sample, 0.05, likelihood_cap=2.0)
    assert torch.equal(capped, torch.tensor([[-2.0, -2.0, 2.0, 2.0]]))
    veto = torch.full_like(sample, -3.0)  # the network rejects every bit
    assert (predict_x0(veto, sample, 0.05, "likelihood_residual", likelihood_cap=2.0) < 0).all()
    assert torch.equal(predict_x0(veto, sample, 0.05, "likelihood_residual") > 0, sample > 0)  # uncapped: exact
    # the cap never raises the built-in bound, and it leaves the other prediction types alone
    assert likelihood_logits(sample, 1e-4, likelihood_cap=1e6).abs().max() == MAX_LIKELIHOOD_LOGIT
    assert torch.equal(predict_x0(veto, sample, 0.05, "logits", likelihood_cap=2.0), predict_x0(veto, sample, 0.05,
                                                                                                 "logits"))
