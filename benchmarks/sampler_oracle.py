"""How exact is the sampler itself? Feed it the exact posterior mean of known binary distributions.

    python -m benchmarks.sampler_oracle [--num_samples 20000] [--output_dir benchmarks/results]

Prints and records (JSON + Markdown): the largest bit-marginal error on a 16-bit product Bernoulli, the
prototype frequencies of a 4-prototype mixture (each solver, several step counts), and the largest
difference between our velocity/Euler trajectory and diffusers' FlowMatchEulerDiscreteScheduler.
"""

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from diffusers import FlowMatchEulerDiscreteScheduler

from diffusers_binflow import BinaryFlowMatchScheduler
from diffusers_binflow.schedulers.scheduling_binary_flow_match import SOLVERS
from diffusers_binflow.synthetic import ProductBernoulliMixture

from .reporting import write_results


def integrate(scheduler, model, noise):
    sample = noise
    for i, t in enumerate(scheduler.timesteps):
        sample = scheduler.step(model(sample, scheduler.sigmas[i].item()), t, sample).prev_sample
    return sample


def oracle_bits(mixture, solver, steps, num_samples, seed):
    scheduler = BinaryFlowMatchScheduler(solver=solver)
    scheduler.set_timesteps(steps)
    noise = torch.randn(num_samples, mixture.dim, generator=torch.Generator().manual_seed(seed))
    return (integrate(scheduler, mixture.posterior_mean, noise) + 1) / 2


def marginal_error(num_samples, solver, steps):
    probs = torch.linspace(0.05, 0.95, 16)
    bits = oracle_bits(ProductBernoulliMixture([1.0], probs[None]), solver, steps, num_samples, seed=0)
    return (bits.mean(0) - probs).abs().max().item()


def prototype_frequencies(num_samples, solver, steps):
    prototypes = (torch.rand(4, 16, generator=torch.Generator().manual_seed(3)) < 0.5).float()
    weights = [0.1, 0.2, 0.3, 0.4]
    bits = oracle_bits(ProductBernoulliMixture(weights, prototypes), solver, steps, num_samples, seed=1)
    matches = (bits[:, None, :] == prototypes[None]).all(-1)
    return {"target": weights, "measured": matches.float().mean(0).tolist(), "valid": matches.any(1).float().mean().item()}


def flow_match_euler_gap(steps=50):
    sigmas = np.linspace(1.0, 0.02, steps).tolist()
    ours = BinaryFlowMatchScheduler(prediction_type="velocity", final_step="none")
    theirs = FlowMatchEulerDiscreteScheduler()
    ours.set_timesteps(sigmas=sigmas)
    theirs.set_timesteps(sigmas=sigmas)
    a = b = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    gap = 0.0
    for t_ours, t_theirs, sigma in zip(ours.timesteps, theirs.timesteps, ours.sigmas):
        a = ours.step(torch.cos(3 * sigma) * a + torch.sin(a), t_ours, a).prev_sample
        b = theirs.step(torch.cos(3 * sigma) * b + torch.sin(b), t_theirs, b).prev_sample
        gap = max(gap, (a - b).abs().max().item())
    return gap


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num_samples", type=int, default=20000)
    parser.add_argument("--output_dir", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args(argv)
    start = time.perf_counter()
    rows = []
    for solver in SOLVERS:
        for steps in (8, 16, 64):
            rows.append({"solver": solver, "steps": steps,
                         "max_marginal_error": marginal_error(args.num_samples, solver, steps),
                         "prototypes": prototype_frequencies(args.num_samples, solver, steps)})
    result = {"num_samples": args.num_samples, "oracle": rows, "flow_match_euler_max_abs_gap": flow_match_euler_gap(),
              "marginal_standard_error_max": (0.25 / args.num_samples) ** 0.5,
              "wall_seconds": round(time.perf_counter() - start, 1)}

    lines = [f"Exact-posterior oracle through BinaryFlowMatchScheduler ({args.num_samples} samples).", "",
             "| solver | steps | max marginal error | prototype freq. (target 0.1/0.2/0.3/0.4) | valid |",
             "|---|---|---|---|---|"]
    for r in rows:
        freqs = "/".join(f"{f:.3f}" for f in r["prototypes"]["measured"])
        lines.append(f"| {r['solver']} | {r['steps']} | {r['max_marginal_error']:.4f} | {freqs} | "
                     f"{r['prototypes']['valid']:.4f} |")
    lines += ["", f"Standard error of one marginal at p = 0.5: {result['marginal_standard_error_max']:.4f}.",
              f"Velocity/Euler trajectory vs FlowMatchEulerDiscreteScheduler, 50 steps: max |difference| = "
              f"{result['flow_match_euler_max_abs_gap']:.2e}.", f"Wall time: {result['wall_seconds']} s."]
    report = "\n".join(lines)
    print(report)
    write_results(args.output_dir, "sampler_oracle", result, report)


if __name__ == "__main__":
    main()
