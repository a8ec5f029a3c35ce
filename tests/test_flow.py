import pytest
import torch

from diffusers_binflow.flow import (
    check_prediction_type,
    expand_sigma,
    interpolate,
    model_output_from_x0,
    predict_velocity,
    predict_x0,
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
