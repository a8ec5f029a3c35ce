"""The shared training-step loss and recipe options (diffusers_binflow.training)."""

import argparse
from dataclasses import asdict

import pytest
import torch

from diffusers_binflow.bits import bits_to_signal
from diffusers_binflow.flow import interpolate
from diffusers_binflow.losses import binary_flow_loss, inverse_square_weight
from diffusers_binflow.timestep_sampling import sample_sigmas
from diffusers_binflow.training import RECIPE_OPTIONS, FlowLossConfig, add_recipe_arguments, flow_matching_loss


class Linear(torch.nn.Module):
    def __init__(self, dim=6):
        super().__init__()
        self.layer = torch.nn.Linear(dim + 1, dim)

    def forward(self, sample, timestep, return_dict=False):
        return (self.layer(torch.cat([sample, timestep[:, None] / 1000], dim=1)),)


def parse(argv, **defaults):
    parser = argparse.ArgumentParser()
    add_recipe_arguments(parser, **defaults)
    return parser.parse_args(argv)


def test_recipe_arguments_default_to_the_config_defaults():
    assert FlowLossConfig.from_args(parse([])) == FlowLossConfig()
    assert set(RECIPE_OPTIONS) <= set(asdict(FlowLossConfig()))


def test_recipe_arguments_parse_and_override():
    args = parse(["--loss_type", "bce", "--prediction_type", "logits", "--weighting_max", "25",
                  "--timestep_sampling", "logit_normal", "--logit_mean", "0.5"])
    config = FlowLossConfig.from_args(args)
    assert (config.loss_type, config.prediction_type, config.weighting_max) == ("bce", "logits", 25.0)
    assert (config.timestep_sampling, config.logit_mean) == ("logit_normal", 0.5)
    overridden = FlowLossConfig.from_args(parse([], prediction_type="logits", loss_type="bce"))
    assert (overridden.prediction_type, overridden.loss_type) == ("logits", "bce")
    with pytest.raises(SystemExit):
        parse(["--loss_space", "z"])


def test_flow_matching_loss_is_the_weighted_binary_flow_loss_of_its_draws():
    """Same generator draws -> the loss equals binary_flow_loss weighted by min(sigma^-2, w_max), by hand."""
    torch.manual_seed(0)
    model = Linear()
    bits = (torch.rand(32, 6, generator=torch.Generator().manual_seed(1)) < 0.5).float()
    config = FlowLossConfig(weighting_max=25.0, timestep_sampling="logit_normal", logit_mean=0.8, logit_std=0.8)
    out = flow_matching_loss(model, bits, config, generator=torch.Generator().manual_seed(2))

    generator = torch.Generator().manual_seed(2)
    sigmas = sample_sigmas(32, "logit_normal", 0.8, 0.8, generator=generator)
    noisy = interpolate(bits_to_signal(bits), torch.randn(bits.shape, generator=generator), sigmas)
    x_hat = model(noisy, sigmas * 1000)[0]
    expected = binary_flow_loss(x_hat, bits, noisy, sigmas, weighting=inverse_square_weight(25.0))
    torch.testing.assert_close(out.sigmas, sigmas)
    torch.testing.assert_close(out.loss, expected)
    unweighted = flow_matching_loss(model, bits, FlowLossConfig(timestep_sampling="logit_normal", logit_mean=0.8,
                                                                logit_std=0.8), generator=torch.Generator().manual_seed(2))
    assert out.loss > unweighted.loss  # every weight is >= 1 for sigma <= 1
