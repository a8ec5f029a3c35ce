import torch
from diffusers.callbacks import PipelineCallback


class StopAfterFirstStep(PipelineCallback):
    """A diffusers callback object that interrupts the pipeline at its first step and counts its calls."""

    tensor_inputs = ["latents"]

    def callback_fn(self, pipeline, step_index, timestep, callback_kwargs):
        pipeline._interrupt = True
        self.steps = getattr(self, "steps", 0) + 1
        return callback_kwargs


def run_sampler(scheduler, model, noise, **step_kwargs):
    """Integrate with `scheduler` from `noise`, calling ``model(sample, sigma)`` at each step."""
    sample = noise
    for i, t in enumerate(scheduler.timesteps):
        sample = scheduler.step(model(sample, scheduler.sigmas[i].item()), t, sample, **step_kwargs).prev_sample
    return sample


def numbers(obj):
    """Every number (not bool) in a JSON-like structure, depth first."""
    if isinstance(obj, (bool, str)) or obj is None:
        return
    if isinstance(obj, (int, float)):
        yield obj
    elif isinstance(obj, dict):
        for value in obj.values():
            yield from numbers(value)
    elif isinstance(obj, list):
        for value in obj:
            yield from numbers(value)


def record_calls(module) -> list:
    """The (input sample, output) of every forward call of `module` from now on, recorded by a hook."""
    calls = []
    module.register_forward_hook(lambda _, args, output: calls.append((args[0].clone(), output[0].clone())))
    return calls


def assert_each_step_saw_the_previous_estimate(calls, dim: int):
    """A self-conditioned logits denoiser's calls: the second half of each input along `dim` is zeros at the first
    step and, after it, the previous step's estimate x_hat = tanh(logits / 2) (signal space, bit_scale 1)."""
    assert len(calls) > 1
    for k, (model_input, _) in enumerate(calls):
        _, condition = model_input.chunk(2, dim=dim)
        expected = torch.zeros_like(condition) if k == 0 else torch.tanh(calls[k - 1][1] / 2)
        assert torch.equal(condition, expected), f"step {k}"
