import json
import math

import numpy as np
import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler

from diffusers_binflow import BinaryFlowMatchScheduler, BinaryFlowMatchSchedulerOutput
from diffusers_binflow.synthetic import ProductBernoulliMixture
from tests.helpers import run_sampler


def dummy_sample(seed=0, shape=(4, 3, 8, 8)):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def smooth_velocity(sample, sigma):
    """dx/dsigma = cos(3 sigma) x: from x(1), x(0) = x(1) exp(-sin(3) / 3)."""
    return math.cos(3 * sigma) * sample


# ----------------------------------------------------------------------------------------------- the grid


def test_default_grid_is_uniform_in_sigma_from_one_to_zero():
    scheduler = BinaryFlowMatchScheduler(num_train_timesteps=1000)
    scheduler.set_timesteps(4)
    torch.testing.assert_close(scheduler.sigmas, torch.tensor([1.0, 0.75, 0.5, 0.25, 0.0]))
    torch.testing.assert_close(scheduler.timesteps, torch.tensor([1000.0, 750.0, 500.0, 250.0]))
    assert scheduler.timesteps.dtype == torch.float32


def test_shift_matches_flow_match_euler_and_keeps_the_ends():
    ours, theirs = BinaryFlowMatchScheduler(shift=3.0), FlowMatchEulerDiscreteScheduler(shift=3.0)
    sigmas = [1.0, 0.8, 0.5, 0.2, 0.05]
    ours.set_timesteps(sigmas=sigmas)
    theirs.set_timesteps(sigmas=sigmas)
    torch.testing.assert_close(ours.sigmas, theirs.sigmas)
    assert ours.sigmas[0] == 1 and ours.sigmas[-1] == 0
    assert (ours.sigmas[1:-1] > torch.tensor(sigmas[1:])).all()  # shift > 1 spends more steps near noise


def test_custom_sigmas_get_a_terminal_zero_unless_they_have_one():
    scheduler = BinaryFlowMatchScheduler()
    scheduler.set_timesteps(sigmas=[1.0, 0.5])
    assert scheduler.sigmas.tolist() == [1.0, 0.5, 0.0] and scheduler.num_inference_steps == 2
    scheduler.set_timesteps(sigmas=[1.0, 0.5, 0.0])
    assert scheduler.sigmas.tolist() == [1.0, 0.5, 0.0]
    scheduler.set_timesteps(timesteps=[1000.0, 500.0])
    assert scheduler.sigmas.tolist() == [1.0, 0.5, 0.0]


def test_heun_grid_evaluates_interior_sigmas_twice():
    scheduler = BinaryFlowMatchScheduler(solver="heun")
    scheduler.set_timesteps(3)
    assert scheduler.order == 2
    assert scheduler.timesteps.tolist() == pytest.approx([1000.0, 2000 / 3, 2000 / 3, 1000 / 3, 1000 / 3])
    assert scheduler.sigmas[-1] == 0 and len(scheduler.sigmas) == len(scheduler.timesteps) + 1


@pytest.mark.parametrize("steps, timesteps", [(3, [1000.0, 2000 / 3, 2000 / 3, 1000 / 3]), (2, [1000.0, 500.0, 500.0]),
                                              (1, [1000.0])])
def test_heun_first_step_evaluates_only_the_first_landing_twice(steps, timesteps):
    scheduler = BinaryFlowMatchScheduler(heun_first_step=True)
    scheduler.set_timesteps(steps)
    assert scheduler.num_inference_steps == steps and scheduler.order == 1
    assert scheduler.timesteps.tolist() == pytest.approx(timesteps)  # N + 1 model calls; one for the final step alone


def test_heun_first_step_is_heuns_step_then_euler_steps():
    scheduler = BinaryFlowMatchScheduler(prediction_type="velocity", heun_first_step=True, final_step="none")
    scheduler.set_timesteps(4)
    start = dummy_sample(shape=(64,))
    # By hand: Heun from sigma 1 to 0.75 (the mean of the slopes at the start and at the Euler landing), then Euler.
    predictor = start - 0.25 * smooth_velocity(start, 1.0)
    expected = start - 0.25 * (smooth_velocity(start, 1.0) + smooth_velocity(predictor, 0.75)) / 2
    for sigma in (0.75, 0.5, 0.25):
        expected = expected - 0.25 * smooth_velocity(expected, sigma)
    torch.testing.assert_close(run_sampler(scheduler, smooth_velocity, start), expected)
    euler = BinaryFlowMatchScheduler(prediction_type="velocity", final_step="none")
    euler.set_timesteps(4)
    assert not torch.allclose(run_sampler(euler, smooth_velocity, start), expected)  # the first step differs
    # Under Heun's solver every step is a Heun step already.
    heun, heun_first = (BinaryFlowMatchScheduler(prediction_type="velocity", solver="heun", heun_first_step=first)
                        for first in (False, True))
    for scheduler in (heun, heun_first):
        scheduler.set_timesteps(4)
    assert torch.equal(run_sampler(heun_first, smooth_velocity, start), run_sampler(heun, smooth_velocity, start))


def multistep_by_hand(start, sigmas, previous=None):
    """Euler steps plus the multistep term ``b (s' log(s / s') - (s - s'))``, b the slope of x_hat in sigma through
    the previous step's estimate `previous` (sigma, x_hat); the step into sigma = 0 returns x_hat."""
    sample = start
    for sigma, sigma_next in zip(sigmas, sigmas[1:]):
        x_hat = sample - sigma * smooth_velocity(sample, sigma)
        if sigma_next == 0:
            return x_hat
        step = (sigma_next / sigma) * sample + (1 - sigma_next / sigma) * x_hat
        if previous is not None:
            slope = (x_hat - previous[1]) / (sigma - previous[0])
            step = step + slope * (sigma_next * math.log(sigma / sigma_next) - (sigma - sigma_next))
        previous, sample = (sigma, x_hat), step


def test_multistep_is_euler_first_then_extrapolates_the_estimate_linearly_in_sigma():
    scheduler = BinaryFlowMatchScheduler(prediction_type="velocity", solver="multistep", final_step="none")
    scheduler.set_timesteps(4)
    assert scheduler.timesteps.tolist() == [1000.0, 750.0, 500.0, 250.0] and scheduler.order == 1  # N calls
    start = dummy_sample(shape=(64,))
    expected = multistep_by_hand(start, [1.0, 0.75, 0.5, 0.25, 0.0])
    torch.testing.assert_close(run_sampler(scheduler, smooth_velocity, start), expected)
    euler = BinaryFlowMatchScheduler(prediction_type="velocity", final_step="none")
    euler.set_timesteps(4)
    assert not torch.allclose(run_sampler(euler, smooth_velocity, start), expected)
    # A second run of the same scheduler starts afresh: no estimate is carried over from the first.
    scheduler.set_timesteps(4)
    torch.testing.assert_close(run_sampler(scheduler, smooth_velocity, start), expected)


def test_heun_first_step_starts_the_multistep_solver():
    """The Heun step out of sigma = 1 is the multistep solver's starter: the next step extrapolates from the estimate
    at the start of that Heun step (not from the corrector's, on the predicted state)."""
    scheduler = BinaryFlowMatchScheduler(prediction_type="velocity", solver="multistep", heun_first_step=True,
                                         final_step="none")
    scheduler.set_timesteps(4)
    assert scheduler.timesteps.tolist() == [1000.0, 750.0, 750.0, 500.0, 250.0]  # N + 1 calls
    start = dummy_sample(shape=(64,))
    predictor = start - 0.25 * smooth_velocity(start, 1.0)
    after_heun = start - 0.25 * (smooth_velocity(start, 1.0) + smooth_velocity(predictor, 0.75)) / 2
    first_estimate = start - smooth_velocity(start, 1.0)  # x_hat at sigma = 1 (velocity prediction)
    expected = multistep_by_hand(after_heun, [0.75, 0.5, 0.25, 0.0], previous=(1.0, first_estimate))
    torch.testing.assert_close(run_sampler(scheduler, smooth_velocity, start), expected)


def test_set_timesteps_moves_the_grid_to_the_device():
    scheduler = BinaryFlowMatchScheduler()
    scheduler.set_timesteps(3, device="cpu")
    assert scheduler.sigmas.device.type == "cpu" and scheduler.timesteps.device.type == "cpu"


# ------------------------------------------------------------------------------------------- the step


def test_the_corrector_raises_only_the_interior_sigmas_of_its_window_by_an_amount_scaled_with_the_steps():
    grids = {}
    for steps in (8, 16):
        scheduler = BinaryFlowMatchScheduler(s_churn=1.6, s_tmin=0.2, s_tmax=0.7)
        scheduler.set_timesteps(steps)
        grid, raised = scheduler.grid_sigmas, scheduler.sigmas
        inside = (grid >= 0.2) & (grid <= 0.7)
        gamma = 1.6 / steps
        assert torch.allclose(raised[inside], grid[inside] + gamma * grid[inside] * (1 - grid[inside]))
        assert torch.equal(raised[~inside], grid[~inside]) and raised[0] == 1 and raised[-1] == 0
        assert torch.allclose(scheduler.timesteps, raised[:-1] * 1000)  # the model sees the raised sigma
        grids[steps] = (raised[inside] - grid[inside]).sum().item()
    # gamma = s_churn / N: twice the steps, each raised by half as much (about the same noise in total).
    assert grids[16] == pytest.approx(grids[8], rel=0.15)


def test_renoise_carries_a_path_point_to_the_noisier_path_exactly():
    from diffusers_binflow.flow import interpolate, renoise

    g = torch.Generator().manual_seed(0)
    clean = torch.sign(torch.randn(400_000, generator=g))
    carried = renoise(interpolate(clean, torch.randn(clean.shape, generator=g), 0.3),
                      torch.randn(clean.shape, generator=g), 0.3, 0.45)
    residual = carried - 0.55 * clean  # what is left must be N(0, 0.45^2)
    assert abs(residual.mean()) < 3e-3 and abs(residual.std() - 0.45) < 3e-3


@pytest.mark.parametrize("kwargs, message", [
    ({"s_churn": -1.0}, "`s_churn` must be a finite number >= 0"),
    ({"s_churn": float("nan")}, "`s_churn` must be a finite number >= 0"),
    ({"s_churn": 1.0, "s_tmin": 0.8, "s_tmax": 0.2}, "0 <= s_tmin <= s_tmax <= 1"),
    ({"s_churn": 1.0, "s_noise": 0.0}, "`s_noise` must be a finite positive number"),
    ({"s_churn": 1.0, "solver": "heun"}, "works with solver='euler'"),
    ({"s_churn": 1.0, "solver": "multistep"}, "works with solver='euler'"),
    ({"s_churn": 1.0, "stochastic_sampling": True}, "stochastic_sampling=False"),
])
def test_bad_corrector_settings_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        BinaryFlowMatchScheduler(**kwargs)


def test_step_into_sigma_zero_returns_the_prediction_itself():
    scheduler = BinaryFlowMatchScheduler(final_step="none")
    scheduler.set_timesteps(2)
    sample, prediction = dummy_sample(0), dummy_sample(1)
    scheduler.step(prediction, scheduler.timesteps[0], sample)
    out = scheduler.step(prediction, scheduler.timesteps[1], sample)
    assert torch.equal(out.prev_sample, prediction) and torch.equal(out.pred_original_sample, prediction)


def test_interior_euler_step_follows_the_implied_velocity():
    scheduler = BinaryFlowMatchScheduler()
    scheduler.set_timesteps(4)
    sample, x_hat = dummy_sample(0), dummy_sample(1)
    out = scheduler.step(x_hat, scheduler.timesteps[0], sample)
    velocity = (sample - x_hat) / 1.0
    torch.testing.assert_close(out.prev_sample, sample - 0.25 * velocity)


@pytest.mark.parametrize("prediction_type", ["sample", "logits", "velocity"])
def test_threshold_final_step_outputs_plus_minus_bit_scale(prediction_type):
    scheduler = BinaryFlowMatchScheduler(prediction_type=prediction_type, bit_scale=0.5)
    scheduler.set_timesteps(3)
    sample = run_sampler(scheduler, lambda x, s: torch.tanh(3 * x), dummy_sample(0))
    assert set(sample.unique().tolist()) == {-0.5, 0.5}


def test_bernoulli_final_step_draws_bits_with_the_predicted_probability():
    scheduler = BinaryFlowMatchScheduler(prediction_type="logits", final_step="bernoulli")
    scheduler.set_timesteps(1)
    logits = torch.tensor([-2.0, 0.0, 1.0, 3.0]).repeat(20000, 1)
    bits = (scheduler.step(logits, scheduler.timesteps[0], torch.zeros_like(logits)).prev_sample + 1) / 2
    assert set(bits.unique().tolist()) == {0.0, 1.0}
    torch.testing.assert_close(bits.mean(0), torch.sigmoid(logits[0]), atol=0.015, rtol=0)


def bernoulli_final_step(x_hat, generator):
    scheduler = BinaryFlowMatchScheduler(final_step="bernoulli")
    scheduler.set_timesteps(1)
    return scheduler.step(x_hat, scheduler.timesteps[0], x_hat, generator=generator).prev_sample


def test_bernoulli_final_step_is_determined_by_the_generator_and_per_item_generators():
    x_hat = torch.zeros(3, 1, 8, 8)  # p = 0.5 everywhere: the draw is all randomness
    first = bernoulli_final_step(x_hat, torch.Generator().manual_seed(1))
    assert torch.equal(first, bernoulli_final_step(x_hat, torch.Generator().manual_seed(1)))
    batched = bernoulli_final_step(x_hat, [torch.Generator().manual_seed(s) for s in (5, 6, 7)])
    single = bernoulli_final_step(x_hat[:1], torch.Generator().manual_seed(6))
    assert torch.equal(batched[1:2], single) and not torch.equal(batched[0], batched[1])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_step_keeps_the_dtype_and_shape(dtype):
    scheduler = BinaryFlowMatchScheduler(final_step="none")
    scheduler.set_timesteps(3)
    sample = dummy_sample().to(dtype)
    for t in scheduler.timesteps:
        out = scheduler.step(torch.tanh(sample), t, sample)
        assert out.prev_sample.dtype == dtype and out.prev_sample.shape == sample.shape
        sample = out.prev_sample


def test_dict_and_tuple_outputs_are_equal():
    outputs = []
    for return_dict in (True, False):
        scheduler = BinaryFlowMatchScheduler()
        scheduler.set_timesteps(5)
        out = scheduler.step(0.1 * dummy_sample(), scheduler.timesteps[0], dummy_sample(), return_dict=return_dict)
        outputs.append(out.to_tuple() if return_dict else out)
    assert isinstance(outputs[0], tuple) and len(outputs[0]) == len(outputs[1]) == 2
    for a, b in zip(*outputs):
        assert torch.equal(a, b)


def test_output_is_a_base_output_with_prev_and_original_sample():
    scheduler = BinaryFlowMatchScheduler()
    scheduler.set_timesteps(2)
    out = scheduler.step(dummy_sample(), scheduler.timesteps[0], dummy_sample())
    assert isinstance(out, BinaryFlowMatchSchedulerOutput)
    assert out.prev_sample.shape == out.pred_original_sample.shape


def test_flow_prediction_is_diffusers_name_for_the_velocity():
    alias, velocity = (BinaryFlowMatchScheduler(prediction_type=name, final_step="none")
                       for name in ("flow_prediction", "velocity"))
    assert alias.config.prediction_type == "velocity"
    for scheduler in (alias, velocity):
        scheduler.set_timesteps(2)
    out = [s.step(0.3 * dummy_sample(1), s.timesteps[0], dummy_sample()).prev_sample for s in (alias, velocity)]
    assert torch.equal(*out)


def test_scale_noise_broadcasts_one_timestep_over_the_batch_like_flow_match_euler():
    ours, theirs = BinaryFlowMatchScheduler(), FlowMatchEulerDiscreteScheduler()
    for scheduler in (ours, theirs):
        scheduler.set_timesteps(sigmas=[1.0, 0.5, 0.25])
    sample, noise = dummy_sample(0), dummy_sample(1)  # a batch of 4
    expected = theirs.scale_noise(sample, torch.tensor([250.0]), noise)
    for timestep in (torch.tensor([250.0]), torch.tensor(250.0), 250.0, torch.full((4,), 250.0)):
        torch.testing.assert_close(ours.scale_noise(sample, timestep, noise), expected)
        torch.testing.assert_close(ours.add_noise(sample, noise, timestep), expected)


def test_set_begin_index_starts_part_way():
    full, partial = BinaryFlowMatchScheduler(final_step="none"), BinaryFlowMatchScheduler(final_step="none")
    for s in (full, partial):
        s.set_timesteps(4)
    partial.set_begin_index(2)
    sample = dummy_sample()
    full._step_index = 2
    a = full.step(0.3 * sample, full.timesteps[2], sample).prev_sample
    b = partial.step(0.3 * sample, partial.timesteps[2], sample).prev_sample
    assert torch.equal(a, b) and partial.step_index == 3


# ---------------------------------------------------------------------------- accuracy of the solvers


def solver_error(solver: str, steps: int) -> float:
    scheduler = BinaryFlowMatchScheduler(prediction_type="velocity", solver=solver, final_step="none")
    scheduler.set_timesteps(steps)
    start = dummy_sample(shape=(64,)).double()
    end = run_sampler(scheduler, smooth_velocity, start.float()).double()
    return (end - start * math.exp(-math.sin(3) / 3)).abs().max().item()


# The multistep solver is second order; on this field its measured slopes over these grids are 2.2-2.3.
@pytest.mark.parametrize("solver, lowest, highest",
                         [("euler", 0.85, 1.15), ("heun", 1.85, 2.15), ("multistep", 1.85, 3)])
def test_measured_order_of_convergence(solver, lowest, highest):
    errors = [solver_error(solver, n) for n in (32, 64, 128, 256)]
    slopes = [math.log2(a / b) for a, b in zip(errors, errors[1:])]
    assert all(lowest < s < highest for s in slopes), (errors, slopes)


def test_heun_is_far_more_accurate_than_euler_at_equal_steps():
    assert solver_error("heun", 16) < solver_error("euler", 16) / 20


def test_multistep_is_more_accurate_than_euler_at_equal_model_calls():
    assert solver_error("multistep", 16) < solver_error("euler", 16) / 4  # 0.034 against 0.158


def test_velocity_euler_trajectory_equals_flow_match_euler_discrete():
    sigmas = np.linspace(1.0, 0.02, 50).tolist()
    ours = BinaryFlowMatchScheduler(prediction_type="velocity", solver="euler", final_step="none")
    theirs = FlowMatchEulerDiscreteScheduler()
    ours.set_timesteps(sigmas=sigmas)
    theirs.set_timesteps(sigmas=sigmas)
    torch.testing.assert_close(ours.timesteps, theirs.timesteps, rtol=0, atol=0)
    a = b = dummy_sample()
    worst = 0.0
    for t_ours, t_theirs, sigma in zip(ours.timesteps, theirs.timesteps, ours.sigmas):
        a = ours.step(smooth_velocity(a, sigma.item()) + torch.sin(a), t_ours, a).prev_sample
        b = theirs.step(smooth_velocity(b, sigma.item()) + torch.sin(b), t_theirs, b).prev_sample
        worst = max(worst, (a - b).abs().max().item())
    assert worst <= 1e-6, worst


def test_stochastic_velocity_trajectory_equals_flow_match_euler_stochastic_sampling():
    ours = BinaryFlowMatchScheduler(prediction_type="velocity", final_step="none", stochastic_sampling=True)
    theirs = FlowMatchEulerDiscreteScheduler(stochastic_sampling=True)
    sigmas = [1.0, 0.6, 0.3, 0.1]
    ours.set_timesteps(sigmas=sigmas)
    theirs.set_timesteps(sigmas=sigmas)
    g_ours, g_theirs = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    a = b = dummy_sample()
    for t_ours, t_theirs in zip(ours.timesteps, theirs.timesteps):
        a = ours.step(torch.sin(a), t_ours, a, generator=g_ours).prev_sample
        b = theirs.step(torch.sin(b), t_theirs, b, generator=g_theirs).prev_sample
    torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


def test_stochastic_step_lands_on_the_path_around_the_prediction():
    scheduler = BinaryFlowMatchScheduler(stochastic_sampling=True)
    scheduler.set_timesteps(sigmas=[1.0, 0.25])
    x_hat = torch.full((20000, 4), 0.6)
    prev = scheduler.step(x_hat, scheduler.timesteps[0], torch.randn(20000, 4), generator=torch.Generator().manual_seed(0))
    assert prev.prev_sample.mean().item() == pytest.approx(0.75 * 0.6, abs=0.01)
    assert prev.prev_sample.std().item() == pytest.approx(0.25, abs=0.01)


# ------------------------------------------------------------------------- exact-posterior oracles


def test_product_bernoulli_oracle_reproduces_every_marginal():
    probs = torch.linspace(0.05, 0.95, 16)
    oracle = ProductBernoulliMixture([1.0], probs[None]).posterior_mean
    scheduler = BinaryFlowMatchScheduler(num_train_timesteps=1000)
    scheduler.set_timesteps(64)
    signal = run_sampler(scheduler, oracle, dummy_sample(shape=(20000, 16)))
    assert set(signal.unique().tolist()) == {-1.0, 1.0}
    marginals = ((signal + 1) / 2).mean(0)
    standard_error = (probs * (1 - probs) / 20000).sqrt()
    assert ((marginals - probs).abs() < 4 * standard_error + 0.005).all(), (marginals - probs).abs().max()


def test_prototype_mixture_oracle_outputs_only_prototypes_at_their_frequencies():
    g = torch.Generator().manual_seed(3)
    prototypes = (torch.rand(4, 16, generator=g) < 0.5).float()
    weights = torch.tensor([0.1, 0.2, 0.3, 0.4])
    oracle = ProductBernoulliMixture(weights, prototypes).posterior_mean
    scheduler = BinaryFlowMatchScheduler()
    scheduler.set_timesteps(64)
    bits = (run_sampler(scheduler, oracle, dummy_sample(shape=(20000, 16))) + 1) / 2
    matches = (bits[:, None, :] == prototypes[None]).all(-1)  # (N, K)
    assert matches.any(1).all(), "every output must be one of the prototypes"
    frequencies = matches.float().mean(0)
    assert ((frequencies - weights).abs() < 4 * (weights * (1 - weights) / 20000).sqrt()).all(), frequencies


def test_heun_oracle_also_reproduces_the_prototype_frequencies():
    prototypes = torch.tensor([[1.0, 1.0, 0.0, 0.0], [0.0, 1.0, 1.0, 0.0]])
    weights = torch.tensor([0.25, 0.75])
    scheduler = BinaryFlowMatchScheduler(solver="heun")
    scheduler.set_timesteps(16)
    oracle = ProductBernoulliMixture(weights, prototypes).posterior_mean
    bits = (run_sampler(scheduler, oracle, dummy_sample(shape=(8000, 4))) + 1) / 2
    share_of_second = (bits == prototypes[1]).all(-1).float().mean()
    assert (bits[:, None] == prototypes[None]).all(-1).any(1).all()
    assert abs(share_of_second - 0.75) < 4 * (0.75 * 0.25 / 8000) ** 0.5


def test_the_corrector_keeps_the_prototype_frequencies_of_the_exact_posterior():
    """Churn re-noises along the path; with the exact posterior mean the samples keep the data distribution."""
    g = torch.Generator().manual_seed(3)
    prototypes = (torch.rand(4, 16, generator=g) < 0.5).float()
    weights = torch.tensor([0.1, 0.2, 0.3, 0.4])
    oracle = ProductBernoulliMixture(weights, prototypes).posterior_mean
    scheduler = BinaryFlowMatchScheduler(s_churn=8.0, s_tmin=0.05, s_tmax=0.9)
    scheduler.set_timesteps(32)
    bits = (run_sampler(scheduler, oracle, dummy_sample(shape=(20000, 16)), generator=g) + 1) / 2
    matches = (bits[:, None, :] == prototypes[None]).all(-1)
    assert matches.any(1).all(), "every output must be one of the prototypes"
    frequencies = matches.float().mean(0)
    assert ((frequencies - weights).abs() < 4 * (weights * (1 - weights) / 20000).sqrt()).all(), frequencies


# ------------------------------------------------------------------------------- the diffusers API


@pytest.mark.parametrize("solver", [{"solver": "heun"}, {"heun_first_step": True}])
def test_save_and_load_config_gives_identical_steps(solver, tmp_path):
    scheduler = BinaryFlowMatchScheduler(prediction_type="logits", bit_scale=0.7, shift=2.0, **solver)
    scheduler.save_config(tmp_path)
    loaded = BinaryFlowMatchScheduler.from_pretrained(tmp_path)
    for s in (scheduler, loaded):
        s.set_timesteps(6)
    assert {k: v for k, v in loaded.config.items() if k != "_use_default_values"} == {
        k: v for k, v in scheduler.config.items() if k != "_use_default_values"
    }
    a = b = dummy_sample()
    for t in scheduler.timesteps:
        a = scheduler.step(a.sin(), t, a).prev_sample
        b = loaded.step(b.sin(), t, b).prev_sample
    assert torch.equal(a, b)


def test_swaps_with_flow_match_euler_via_from_config_both_ways():
    theirs = FlowMatchEulerDiscreteScheduler(shift=5.0, num_train_timesteps=500)
    ours = BinaryFlowMatchScheduler.from_config(theirs.config)
    assert ours.config.shift == 5.0 and ours.config.num_train_timesteps == 500
    assert ours.config.prediction_type == "sample"  # our own default, not carried from elsewhere
    back = FlowMatchEulerDiscreteScheduler.from_config(BinaryFlowMatchScheduler(shift=2.0).config)
    assert back.config.shift == 2.0 and back.config.num_train_timesteps == 1000
    assert [c.__name__ for c in ours.compatibles] == ["FlowMatchEulerDiscreteScheduler"]


def test_untouched_defaults_do_not_leak_across_a_swap():
    ours = BinaryFlowMatchScheduler.from_config(FlowMatchEulerDiscreteScheduler().config)
    assert ours.config.shift == 1.0 and "use_dynamic_shifting" not in ours.config


def test_public_api_for_pipelines_and_training_scripts():
    scheduler = BinaryFlowMatchScheduler()
    sample, noise = dummy_sample(0), dummy_sample(1)
    assert scheduler.init_noise_sigma == 1.0
    assert scheduler.scale_model_input(sample, 500.0) is sample
    assert len(scheduler) == 1000
    timesteps = torch.tensor([0.0, 250.0, 500.0, 1000.0])
    expected = (1 - timesteps / 1000).view(-1, 1, 1, 1) * sample + (timesteps / 1000).view(-1, 1, 1, 1) * noise
    torch.testing.assert_close(scheduler.add_noise(sample, noise, timesteps), expected)
    torch.testing.assert_close(scheduler.scale_noise(sample, timesteps, noise), expected)
    bits = (sample > 0).float()
    assert torch.equal(scheduler.signal_to_bits(scheduler.bits_to_signal(bits)), bits)


def test_training_grid_exists_before_set_timesteps_like_flow_match_euler():
    ours, theirs = BinaryFlowMatchScheduler(shift=3.0), FlowMatchEulerDiscreteScheduler(shift=3.0)
    torch.testing.assert_close(ours.timesteps, theirs.timesteps)


def test_config_attributes_warn_and_missing_attributes_raise():
    scheduler = BinaryFlowMatchScheduler()
    with pytest.warns(FutureWarning):
        assert scheduler.bit_scale == 1.0
    with pytest.raises(AttributeError, match="no attribute 'does_not_exist'"):
        scheduler.does_not_exist


# ---------------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"prediction_type": "x0"}, "prediction_type"),
        ({"solver": "rk4"}, "solver"),
        ({"final_step": "round"}, "final_step"),
        ({"bit_scale": 0.0}, "bit_scale"),
        ({"bit_scale": float("nan")}, "`bit_scale` must be a finite positive number"),
        ({"bit_scale": float("inf")}, "`bit_scale` must be a finite positive number"),
        ({"shift": float("nan")}, "`shift` must be a finite positive number"),
        ({"shift": float("inf")}, "`shift` must be a finite positive number"),
        ({"num_train_timesteps": 0}, "num_train_timesteps"),
        ({"solver": "heun", "stochastic_sampling": True}, "solver='euler' only"),
        ({"solver": "multistep", "stochastic_sampling": True}, "solver='euler' only"),
        ({"heun_first_step": True, "stochastic_sampling": True}, "heun_first_step=True is for the deterministic"),
        ({"heun_first_step": True, "s_churn": 4.0}, "heun_first_step=True is for the deterministic samplers"),
        ({"likelihood_cap": 0.0}, "`likelihood_cap` must be a finite positive number"),
    ],
)
def test_bad_config_is_refused_by_name(kwargs, message):
    with pytest.raises(ValueError, match=message):
        BinaryFlowMatchScheduler(**kwargs)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"num_inference_steps": 0}, "positive integer"),
        ({"num_inference_steps": -3}, "positive integer"),
        ({"sigmas": [1.2, 0.5]}, r"in \[0, 1\]"),
        ({"sigmas": [1.0, float("nan")]}, r"in \[0, 1\]"),
        ({"sigmas": [0.5, 0.8]}, "strictly decreasing"),
        ({"sigmas": [1.0, 0.5, 0.5]}, "strictly decreasing"),
        ({"sigmas": [1.0, 0.5], "num_inference_steps": 5}, "disagrees"),
        ({"sigmas": [1.0], "timesteps": [1000.0]}, "not both"),
    ],
)
def test_bad_grid_is_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        BinaryFlowMatchScheduler().set_timesteps(**kwargs)


@pytest.mark.parametrize("begin_index", [-1, 3, 1.0, True])
def test_set_begin_index_outside_the_grid_is_refused(begin_index):
    scheduler = BinaryFlowMatchScheduler()
    scheduler.set_timesteps(3)
    with pytest.raises(ValueError, match=r"`begin_index` must be an index into `timesteps`, in \[0, 3\)"):
        scheduler.set_begin_index(begin_index)


@pytest.mark.parametrize("prediction_type, bad", [("sample", float("nan")), ("velocity", float("nan")),
                                                  ("velocity", float("inf")), ("logits", float("nan"))])
def test_a_non_finite_prediction_is_refused_naming_the_step(prediction_type, bad):
    scheduler = BinaryFlowMatchScheduler(prediction_type=prediction_type)
    scheduler.set_timesteps(4)
    sample = dummy_sample()
    scheduler.step(torch.zeros_like(sample), scheduler.timesteps[0], sample)
    output = torch.zeros_like(sample)
    output[1, 0, 2, 3] = bad
    with pytest.raises(ValueError, match=r"step 1 \(sigma = 0.75\) holds NaN or inf"):
        scheduler.step(output, scheduler.timesteps[1], sample)


def test_step_before_set_timesteps_is_refused():
    with pytest.raises(ValueError, match="set_timesteps"):
        BinaryFlowMatchScheduler().step(dummy_sample(), 1000.0, dummy_sample())


def test_step_with_mismatched_shapes_is_refused():
    scheduler = BinaryFlowMatchScheduler()
    scheduler.set_timesteps(2)
    with pytest.raises(ValueError, match="shape"):
        scheduler.step(dummy_sample(shape=(4, 3, 8, 4)), scheduler.timesteps[0], dummy_sample())


def test_integer_or_unknown_timesteps_and_extra_steps_are_refused():
    scheduler = BinaryFlowMatchScheduler()
    scheduler.set_timesteps(1)
    with pytest.raises(ValueError, match="Integer timesteps"):
        scheduler.step(dummy_sample(), 0, dummy_sample())
    with pytest.raises(ValueError, match="not in the schedule"):
        scheduler.step(dummy_sample(), 123.0, dummy_sample())
    scheduler.step(dummy_sample(), scheduler.timesteps[0], dummy_sample())
    with pytest.raises(ValueError, match="All steps have been taken"):
        scheduler.step(dummy_sample(), scheduler.timesteps[0], dummy_sample())


def test_the_likelihood_cap_is_a_sampler_setting_saved_in_the_config_and_old_configs_read_no_cap(tmp_path):
    """A residual that rejects every bit: with the full likelihood the step keeps the state's signs at the data end;
    with a cap of 2 nats the network's veto wins. A config saved before the option existed reads no cap."""
    state = torch.tensor([[-0.9, -0.2, 0.2, 0.9]])
    veto = torch.full_like(state, -3.0)

    def x_hat(scheduler):  # the estimate at the last step, sigma = 0.1
        scheduler.set_timesteps(10)
        scheduler.set_begin_index(9)
        return scheduler.step(veto, scheduler.timesteps[9], state).pred_original_sample

    full = BinaryFlowMatchScheduler(prediction_type="likelihood_residual")
    capped = BinaryFlowMatchScheduler(prediction_type="likelihood_residual", likelihood_cap=2.0)
    assert torch.equal(x_hat(full) > 0, state > 0) and (x_hat(capped) < 0).all()
    capped.save_config(tmp_path)
    assert BinaryFlowMatchScheduler.from_pretrained(tmp_path).config.likelihood_cap == 2.0
    config = json.loads((tmp_path / "scheduler_config.json").read_text())
    del config["likelihood_cap"]
    (tmp_path / "scheduler_config.json").write_text(json.dumps(config))
    assert torch.equal(x_hat(BinaryFlowMatchScheduler.from_pretrained(tmp_path)), x_hat(full))


def test_the_final_likelihood_cap_applies_to_the_last_evaluation_only_and_old_configs_read_none(tmp_path):
    """A residual of -1.5 nats everywhere against a state whose likelihood is large: under a cap of 2 the likelihood
    wins at every step; with `final_likelihood_cap=1` the step into sigma = 0 (Euler's and Heun's) reads the veto,
    every earlier step is unchanged. A config saved before the option existed reads None (the same cap throughout)."""
    state = torch.tensor([[0.6, 0.9]])  # likelihood log-odds >= 2.4 from sigma 0.5 down
    veto = torch.full_like(state, -1.5)

    def estimates(scheduler):  # x_hat of every step, with the state held fixed
        scheduler.set_timesteps(4)
        return [scheduler.step(veto, t, state).pred_original_sample for t in scheduler.timesteps]

    for solver in ("euler", "heun"):
        capped = BinaryFlowMatchScheduler(prediction_type="likelihood_residual", likelihood_cap=2.0, solver=solver)
        final = BinaryFlowMatchScheduler.from_config(capped.config, final_likelihood_cap=1.0)
        before, after = estimates(capped), estimates(final)
        assert len(before) == (4 if solver == "euler" else 7)
        assert (before[-1] > 0).all() and (after[-1] < 0).all()
        # Every step but the last reads the same (at sigma 1 the likelihood is 0 whatever the cap).
        assert all(torch.equal(a, b) for a, b in zip(before[:-1], after[:-1])) and (after[-2] > 0).all()

    final.save_config(tmp_path)
    assert BinaryFlowMatchScheduler.from_pretrained(tmp_path).config.final_likelihood_cap == 1.0
    config = json.loads((tmp_path / "scheduler_config.json").read_text())
    del config["final_likelihood_cap"]
    (tmp_path / "scheduler_config.json").write_text(json.dumps(config))
    old = BinaryFlowMatchScheduler.from_pretrained(tmp_path)
    assert old.config.final_likelihood_cap is None and torch.equal(estimates(old)[-1], estimates(capped)[-1])
    with pytest.raises(ValueError, match="`final_likelihood_cap` must be a finite positive number"):
        BinaryFlowMatchScheduler(final_likelihood_cap=0.0)
