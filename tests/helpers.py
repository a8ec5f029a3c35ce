def run_sampler(scheduler, model, noise, **step_kwargs):
    """Integrate with `scheduler` from `noise`, calling ``model(sample, sigma)`` at each step."""
    sample = noise
    for i, t in enumerate(scheduler.timesteps):
        sample = scheduler.step(model(sample, scheduler.sigmas[i].item()), t, sample, **step_kwargs).prev_sample
    return sample
