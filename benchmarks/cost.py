"""Cost of the library against a plain flow-matching loop with the same network, measured in one run.

    python -m benchmarks.cost [--rounds 30] [--batch_size 32] [--sample_batch 64] [--nfe 16]
    python -m benchmarks.cost --smoke --output_dir /tmp/cost     # tiny sizes, seconds (the test runs this)

Training: one optimiser step of ours (`flow_matching_loss` with the image script's default `IMAGE_RECIPE`: sigma
sampling, noising, the network, the x-space cross-entropy of `binary_flow_loss`) against a plain rectified-flow step
written inline (uniform t, x_t = (1 - t) x + t eps, MSE to eps - x), same UNet2DModel body, batch and optimiser.
Sampling: `BinaryFlowPipeline` with `BinaryFlowMatchScheduler` (NFE Euler steps, the default likelihood cap, bits
out) against a plain loop over diffusers' `FlowMatchEulerDiscreteScheduler` (network, `scheduler.step`, threshold).
The two sides alternate round by round, which one goes first swapping every round, so that load on the machine and
caches hit both alike; each ratio is the median over rounds of that round's ours / plain, with its quartiles (the
spread of the paired ratios, a measure of how far the median can be trusted). Also reported: the share of our
training step spent in the loss (`binary_flow_loss`, forward) and of our sampling spent in
`BinaryFlowMatchScheduler.step`. The training side times single optimiser steps, so it keeps its own two step
closures rather than the benchmarks' `train_loop`.

Writes cost.json and cost.md into --output_dir.
"""

import argparse
import statistics
import time
from pathlib import Path

import torch
from diffusers import FlowMatchEulerDiscreteScheduler

from diffusers_binflow import BinaryFlowMatchScheduler, BinaryFlowPipeline
from diffusers_binflow.bits import bits_to_signal
from diffusers_binflow.losses import binary_flow_loss
from diffusers_binflow.metrics.digits import digit_bits
from diffusers_binflow.training import (
    IMAGE_RECIPE,
    IMAGE_SAMPLING_FINAL_LIKELIHOOD_CAP,
    IMAGE_SAMPLING_SOLVER,
    flow_matching_loss,
)

from .digit_runs import build_body
from .reporting import command_line, machine, write_results


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


class Timer:
    """Accumulates the wall time spent inside a wrapped callable."""

    def __init__(self, fn):
        self.fn, self.seconds = fn, 0.0

    def __call__(self, *args, **kwargs):
        start = time.perf_counter()
        try:
            return self.fn(*args, **kwargs)
        finally:
            self.seconds += time.perf_counter() - start


def training_steps(model, data, batch_size: int, generator: torch.Generator):
    """(ours, plain): closures that each run one optimiser step on a fresh batch."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    config = IMAGE_RECIPE  # what the image script trains by default

    def step(loss_fn):
        bits = data[torch.randint(len(data), (batch_size,), generator=generator)]
        loss = loss_fn(bits)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    def ours(bits):
        return flow_matching_loss(model, bits, config, generator=generator).loss

    def plain(bits):
        x = bits_to_signal(bits)
        t = torch.rand(bits.shape[0], generator=generator)
        noise = torch.randn(bits.shape, generator=generator)
        x_t = (1 - t.view(-1, 1, 1, 1)) * x + t.view(-1, 1, 1, 1) * noise
        return torch.nn.functional.mse_loss(model(x_t, t * 1000).sample, noise - x)

    return (lambda: step(ours)), (lambda: step(plain))


def sampling_runs(model, batch: int, nfe: int):
    """(ours, plain, scheduler timer): closures that each generate `batch` binary samples with `nfe` steps."""
    scheduler_timer = Timer(BinaryFlowMatchScheduler.step)

    class TimedScheduler(BinaryFlowMatchScheduler):
        # On the class: every call of the pipeline steps its own copy of the scheduler.
        def step(self, *args, **kwargs):
            return scheduler_timer(self, *args, **kwargs)

    pipeline = BinaryFlowPipeline(unet=model, prediction_type=IMAGE_RECIPE.prediction_type, scheduler=TimedScheduler(
        prediction_type=IMAGE_RECIPE.prediction_type, final_likelihood_cap=IMAGE_SAMPLING_FINAL_LIKELIHOOD_CAP,
        solver=IMAGE_SAMPLING_SOLVER))
    pipeline.set_progress_bar_config(disable=True)
    plain_scheduler = FlowMatchEulerDiscreteScheduler()

    def ours():
        pipeline(batch_size=batch, num_inference_steps=nfe, generator=torch.Generator().manual_seed(0),
                 output_type="pt")

    @torch.no_grad()
    def plain():
        plain_scheduler.set_timesteps(nfe)
        x = torch.randn((batch, 1, 28, 28), generator=torch.Generator().manual_seed(0))
        for t in plain_scheduler.timesteps:
            v = model(x, t.expand(batch)).sample
            x = plain_scheduler.step(v, t, x).prev_sample
        return (x > 0).float()

    return ours, plain, scheduler_timer


def alternate(ours, plain, rounds: int) -> tuple[list[float], list[float]]:
    """Wall times of `rounds` rounds of one call of each (after one untimed warm-up call of each); the side that
    goes first swaps every round."""
    ours(), plain()
    times_ours, times_plain = [], []
    for i in range(rounds):
        if i % 2:
            times_plain.append(timed(plain))
            times_ours.append(timed(ours))
        else:
            times_ours.append(timed(ours))
            times_plain.append(timed(plain))
    return times_ours, times_plain


def paired_ratio(times_ours: list[float], times_plain: list[float]) -> dict:
    """Median and quartiles of the per-round ratios ours / plain."""
    ratios = [a / b for a, b in zip(times_ours, times_plain)]
    low, median, high = statistics.quantiles(ratios, n=4, method="inclusive")
    return {"ratio": median, "ratio_quartiles": [low, high]}


def markdown(result: dict) -> str:
    t, s, cfg = result["training"], result["sampling"], result["config"]
    return "\n".join([
        f"Command: `{result['command']}`  ",
        f"Machine: {result['machine']}; {cfg['threads']} thread(s); {cfg['parameters']:,}-parameter UNet2DModel; "
        f"{cfg['rounds']} rounds, alternating (the side that goes first swapping each round); medians, and the "
        f"quartiles of the per-round ratios.",
        "",
        "| | ours | plain FlowMatchEuler loop | ratio (ours / plain) |",
        "|---|---|---|---|",
        f"| training step (batch {cfg['batch_size']}) | {t['ours_seconds']*1000:.1f} ms | "
        f"{t['plain_seconds']*1000:.1f} ms | {t['ratio']:.3f} ({t['ratio_quartiles'][0]:.3f}-"
        f"{t['ratio_quartiles'][1]:.3f}) |",
        f"| sampling (batch {cfg['sample_batch']}, NFE {cfg['nfe']}) | {s['ours_samples_per_second']:.1f} samples/s | "
        f"{s['plain_samples_per_second']:.1f} samples/s | {s['ratio']:.3f} ({s['ratio_quartiles'][0]:.3f}-"
        f"{s['ratio_quartiles'][1]:.3f}; time) |",
        "",
        f"Share of our training step spent in `binary_flow_loss` (forward): {t['loss_share']:.2%}. "
        f"Share of our sampling spent in `BinaryFlowMatchScheduler.step`: {s['scheduler_share']:.2%}.",
    ])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--sample_batch", type=int, default=64)
    parser.add_argument("--nfe", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--output_dir", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--smoke", action="store_true", help="3 rounds, batch 4, 2 steps")
    args = parser.parse_args(argv)
    if args.rounds < 2:  # the ratio's quartiles need two rounds at least
        parser.error(f"--rounds must be at least 2, got {args.rounds}.")
    if args.smoke:
        args.rounds, args.batch_size, args.sample_batch, args.nfe = 3, 4, 4, 2
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = build_body()
    data = digit_bits("train")

    import diffusers_binflow.training as training_module

    loss_timer = Timer(binary_flow_loss)
    training_module.binary_flow_loss = loss_timer  # count the loss's time inside flow_matching_loss
    ours_step, plain_step = training_steps(model, data, args.batch_size, torch.Generator().manual_seed(0))
    train_ours, train_plain = alternate(ours_step, plain_step, args.rounds)
    loss_share = loss_timer.seconds / (args.rounds + 1) / statistics.mean(train_ours)  # the warm-up call included
    training_module.binary_flow_loss = binary_flow_loss

    model.eval()
    ours_sample, plain_sample, scheduler_timer = sampling_runs(model, args.sample_batch, args.nfe)
    sample_ours, sample_plain = alternate(ours_sample, plain_sample, args.rounds)
    scheduler_share = scheduler_timer.seconds / (args.rounds + 1) / statistics.mean(sample_ours)

    median_train = (statistics.median(train_ours), statistics.median(train_plain))
    median_sample = (statistics.median(sample_ours), statistics.median(sample_plain))
    result = {
        "command": command_line(__spec__.name, argv), "machine": machine(),
        "config": {"rounds": args.rounds, "batch_size": args.batch_size, "sample_batch": args.sample_batch,
                   "nfe": args.nfe, "threads": args.threads, "smoke": args.smoke,
                   "parameters": sum(p.numel() for p in model.parameters())},
        "training": {"ours_seconds": median_train[0], "plain_seconds": median_train[1],
                     **paired_ratio(train_ours, train_plain), "loss_share": loss_share,
                     "ours_all": train_ours, "plain_all": train_plain},
        "sampling": {"ours_seconds": median_sample[0], "plain_seconds": median_sample[1],
                     **paired_ratio(sample_ours, sample_plain),
                     "ours_samples_per_second": args.sample_batch / median_sample[0],
                     "plain_samples_per_second": args.sample_batch / median_sample[1],
                     "scheduler_share": scheduler_share, "ours_all": sample_ours, "plain_all": sample_plain},
    }
    table = markdown(result)
    write_results(args.output_dir, "cost", result, table)
    print(table)


if __name__ == "__main__":
    main()
