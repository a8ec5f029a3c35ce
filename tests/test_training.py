"""The shared training-step loss and recipe options (diffusers_binflow.training)."""

import argparse
from dataclasses import asdict

import pytest
import torch

from diffusers_binflow.bits import bits_to_signal
from diffusers_binflow.flow import interpolate, self_conditioned_input
from diffusers_binflow.losses import binary_flow_loss, inverse_square_weight
from diffusers_binflow.timestep_sampling import sample_sigmas
from diffusers_binflow.training import RECIPE_OPTIONS, FlowLossConfig, add_recipe_arguments, flow_matching_loss


class Linear(torch.nn.Module):
    def __init__(self, dim=6, in_features=None):
        super().__init__()
        self.layer = torch.nn.Linear((in_features or dim) + 1, dim)

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


# ------------------------------------------------------------------------------------------- self-conditioning


def self_conditioned_setup(seed=0):
    torch.manual_seed(seed)
    bits = (torch.rand(16, 6, generator=torch.Generator().manual_seed(1)) < 0.5).float()
    return Linear(6, in_features=12), bits


def test_self_conditioning_with_probability_0_is_the_plain_loss_of_the_model_given_zeros():
    model, bits = self_conditioned_setup()
    config = FlowLossConfig(prediction_type="logits", loss_type="bce")
    self_conditioned = flow_matching_loss(model, bits, FlowLossConfig(**{**asdict(config), "self_conditioning": True,
                                                                         "self_conditioning_probability": 0.0}),
                                          generator=torch.Generator().manual_seed(2))
    given_zeros = flow_matching_loss(lambda x, t, return_dict=False: model(self_conditioned_input(x), t), bits,
                                     config, generator=torch.Generator().manual_seed(2))
    assert torch.equal(self_conditioned.loss, given_zeros.loss)


def test_self_conditioning_with_probability_1_conditions_on_a_stop_gradient_estimate_in_signal_space():
    model, bits = self_conditioned_setup()
    config = FlowLossConfig(prediction_type="logits", loss_type="bce", self_conditioning=True,
                            self_conditioning_probability=1.0)
    flow_matching_loss(model, bits, config, generator=torch.Generator().manual_seed(2)).loss.backward()
    grads = [p.grad.clone() for p in model.parameters()]

    def by_hand(detach: bool):
        model.zero_grad()
        generator = torch.Generator().manual_seed(2)
        sigmas = sample_sigmas(16, "logit_normal", 0.8, 0.8, generator=generator)
        noisy = interpolate(bits_to_signal(bits), torch.randn(bits.shape, generator=generator), sigmas)
        torch.rand((), generator=generator)  # the coin
        x_hat = torch.tanh(model(self_conditioned_input(noisy), sigmas * 1000)[0] / 2)  # logits -> signal
        x_hat = x_hat.detach() if detach else x_hat
        logits = model(self_conditioned_input(noisy, x_hat), sigmas * 1000)[0]
        binary_flow_loss(logits, bits, noisy, sigmas, prediction_type="logits", loss_type="bce").backward()
        return [p.grad.clone() for p in model.parameters()]

    for got, expected in zip(grads, by_hand(detach=True)):
        torch.testing.assert_close(got, expected)
    assert any(not torch.allclose(got, through) for got, through in zip(grads, by_hand(detach=False))), \
        "a gradient through the first pass would differ"


def counting_passes(model):
    """`model` as a callable that records each call, and the record: how many passes the loss made."""
    calls = []

    def counted(x, t, return_dict=False):
        calls.append(1)
        return model(x, t)
    return counted, calls


def test_the_self_conditioning_coin_comes_from_the_generator():
    model, bits = self_conditioned_setup()
    counted, calls = counting_passes(model)
    config = FlowLossConfig(self_conditioning=True)

    def run(seed):
        calls.clear()
        loss = flow_matching_loss(counted, bits, config, generator=torch.Generator().manual_seed(seed)).loss
        return loss, len(calls)

    passes = {seed: run(seed) for seed in range(12)}
    assert {count for _, count in passes.values()} == {1, 2}, "both sides of the coin come up"
    for seed, (loss, count) in passes.items():
        again, count_again = run(seed)
        assert torch.equal(loss, again) and count == count_again


def test_a_self_conditioning_generator_alone_decides_the_coin():
    # What data-parallel runs rely on: processes with different micro-batch generators make the same passes.
    model, bits = self_conditioned_setup()
    counted, calls = counting_passes(model)
    config = FlowLossConfig(self_conditioning=True)

    def passes(seed, coin_seed):
        calls.clear()
        flow_matching_loss(counted, bits, config, generator=torch.Generator().manual_seed(seed),
                           self_conditioning_generator=torch.Generator().manual_seed(coin_seed))
        return len(calls)

    by_coin = {coin_seed: {passes(seed, coin_seed) for seed in range(4)} for coin_seed in range(12)}
    assert all(len(counts) == 1 for counts in by_coin.values()), by_coin
    assert set.union(*by_coin.values()) == {1, 2}, "both sides of the coin come up"
