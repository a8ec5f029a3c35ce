"""Where a likelihood-residual model's speckle comes from: what the network and the likelihood say about the
isolated pixels a sampler leaves.

    python -m benchmarks.speckle_origin [--method lr-bce-ln] [--seed 0] [--nfe 16] [--num_samples 200]
    python -m benchmarks.speckle_origin --smoke --output_dir /tmp/so      # tiny sizes, seconds (the test runs this)

Samples `--num_samples` digits from the cached run of `--method` (`digit_runs.py`) with `BinaryFlowMatchScheduler`
(Euler, the model's prediction type, no cap), recording at every step the likelihood term
(`flow.likelihood_logits`) and the network's correction. For the isolated ON pixels of the final samples
(`metrics.digits.isolated_pixels`) it reports from which sigma on their estimate stayed positive, and, at the last
evaluations, their mean likelihood logit and mean correction next to the correction on the other ON pixels. A
negative correction there means the network rejects the pixel but the likelihood overrules it.
Writes speckle_origin.json and .md.
"""

import argparse
import collections
from pathlib import Path

import torch

from diffusers_binflow import BinaryFlowMatchScheduler
from diffusers_binflow.flow import likelihood_logits
from diffusers_binflow.metrics.digits import isolated_pixels

from .digit_runs import METHODS, train
from .reporting import command_line, machine, write_results


@torch.no_grad()
def trace(model, num_samples: int, nfe: int, seed: int) -> tuple[torch.Tensor, list[dict]]:
    """The final bits and, per step, sigma, the likelihood logits, the correction and the estimate's sign."""
    scheduler = BinaryFlowMatchScheduler(prediction_type="likelihood_residual")
    scheduler.set_timesteps(nfe)
    generator = torch.Generator().manual_seed(seed)
    sample = torch.randn(num_samples, 1, 28, 28, generator=generator)
    steps = []
    for t in scheduler.timesteps:
        sigma = t / scheduler.config.num_train_timesteps
        correction = model(sample, t, return_dict=False)[0]
        out = scheduler.step(correction, t, sample, generator=generator)
        steps.append({"sigma": float(sigma), "likelihood": likelihood_logits(sample, sigma), "correction": correction,
                      "positive": out.pred_original_sample > 0})
        sample = out.prev_sample
    return (sample > 0).float(), steps


def summarize(bits: torch.Tensor, steps: list[dict]) -> dict:
    isolated = isolated_pixels(bits)
    other_on = (bits == 1) & ~isolated
    positive = torch.stack([s["positive"] for s in steps])  # (steps, N, 1, 28, 28)
    # the first step from which the estimate stays positive to the end
    stays = torch.stack([positive[k:].all(0) for k in range(len(steps))])
    first = stays.float().argmax(0)
    since = collections.Counter(round(steps[k]["sigma"], 3) for k in first[isolated].tolist())
    last = [{"sigma": s["sigma"], "isolated_likelihood": s["likelihood"][isolated].mean().item(),
             "isolated_correction": s["correction"][isolated].mean().item(),
             "other_on_correction": s["correction"][other_on].mean().item()} for s in steps[-3:]]
    return {"isolated_pixels": int(isolated.sum()), "on_pixels": int(bits.sum()),
            "positive_since_sigma": dict(sorted(since.items(), reverse=True)), "last_steps": last}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    residual_flows = sorted(k for k, m in METHODS.items() if m.prediction_type == "likelihood_residual")
    parser.add_argument("--method", choices=residual_flows, default="lr-bce-ln")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--nfe", type=int, default=16)
    parser.add_argument("--num_samples", type=int, default=200)
    parser.add_argument("--cache_dir", type=Path, default=Path("benchmarks/cache"), help="trained runs, reused")
    parser.add_argument("--output_dir", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: 20 steps, NFE 4, 20 samples")
    args = parser.parse_args(argv)
    if args.smoke:
        args.steps, args.batch_size, args.nfe, args.num_samples = 20, 8, 4, 20
    torch.set_num_threads(1)
    run = train(METHODS[args.method], args.seed, args.steps, args.batch_size, args.cache_dir)
    bits, steps = trace(run.model, args.num_samples, args.nfe, seed=10_000 * (args.seed + 1))
    result = {"command": command_line(__spec__.name, argv), "machine": machine(),
              "config": {"method": args.method, "seed": args.seed, "steps": args.steps, "nfe": args.nfe,
                         "num_samples": args.num_samples, "smoke": args.smoke}, **summarize(bits, steps)}
    lines = [f"Command: `{result['command']}`  ", f"Machine: {result['machine']}.  ",
             f"{result['isolated_pixels']} isolated of {result['on_pixels']} ON pixels in {args.num_samples} samples "
             f"(NFE {args.nfe}).", "", "Sigma from which their estimate stays positive: "
             + ", ".join(f"{s}: {n}" for s, n in result["positive_since_sigma"].items()) + ".", "",
             "| sigma | likelihood logit (isolated) | correction (isolated) | correction (other ON pixels) |",
             "|---|---|---|---|"]
    lines += [f"| {s['sigma']:.3f} | {s['isolated_likelihood']:.2f} | {s['isolated_correction']:.2f} | "
              f"{s['other_on_correction']:.2f} |" for s in result["last_steps"]]
    write_results(args.output_dir, "speckle_origin", result, "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
