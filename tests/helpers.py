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
