"""How much of a digit FD is sampling noise: one trained run, several independent draws of samples, FD of each.

    python -m benchmarks.fd_sampling_noise --seed 1 --steps 2000 --nfe 4 --draws 8
    python -m benchmarks.fd_sampling_noise --smoke --output_dir /tmp/noise     # tiny sizes, seconds (the test runs this)

Loads (or trains) the cached run of `--method` and `--seed` (`digit_runs.py`), draws `--draws` sets of
`--num_samples` digits at `--nfe` with generator seeds 0, 10000, 20000, ... (the benchmarks' seed for training seed
k is 10000 (k + 1), so draw k + 1 is what they score), and reports each set's FD and speckle rate, their mean, std
and range, and the FD of all sets pooled, next to the real-data floors at both sizes. The spread over draws is what
a single FD of that many samples can be trusted to; compare methods on the same draws or with more samples.
Writes fd_sampling_noise.json and .md into --output_dir.
"""

import argparse
import time
from pathlib import Path

import torch

from diffusers_binflow.metrics import DigitMetrics

from .digit_runs import IMAGE_DEFAULT, METHODS, generate, train
from .reporting import command_line, machine, mean_std, write_results

DRAW_SEED_STRIDE = 10_000


def markdown(result: dict) -> str:
    cfg, fd, pooled = result["config"], result["fd"], result["pooled"]
    lines = [f"Command: `{result['command']}`  ",
             f"Machine: {result['machine']}; wall time {result['wall_seconds']:.0f} s.  ",
             f"Run: `{cfg['method']}`, training seed {cfg['seed']}, {cfg['steps']} steps x batch {cfg['batch_size']}; "
             f"NFE {cfg['nfe']}; {cfg['draws']} draws of {cfg['num_samples']} samples.",
             "", "| draw (generator seed) | FD | speckle / real |", "|---|---|---|"]
    lines += [f"| {d['generator_seed']} | {d['fd']:.2f} | {d['speckle_rate'] / result['floor']['speckle_rate']:.1f}x |"
              for d in result["draws"]]
    lines += ["", f"FD over draws: {fd['mean']:.2f} ± {fd['std']:.2f} (range {min(result['fds']):.2f}-"
              f"{max(result['fds']):.2f}); real-data floor at {cfg['num_samples']} samples {result['floor']['fd']:.2f}.",
              f"All {pooled['num_samples']} samples pooled: FD {pooled['fd']:.2f}; real-data floor at that size "
              f"{pooled['floor_fd']:.2f}."]
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    flows = sorted(k for k, m in METHODS.items() if m.sampler == "binary_flow")
    parser.add_argument("--method", choices=flows, default=IMAGE_DEFAULT)
    parser.add_argument("--seed", type=int, default=0, help="the training seed of the cached run")
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--nfe", type=int, default=4)
    parser.add_argument("--draws", type=int, default=8)
    parser.add_argument("--num_samples", type=int, default=500, help="samples per draw (>= 200)")
    parser.add_argument("--cache_dir", type=Path, default=Path("benchmarks/cache"), help="trained runs, reused")
    parser.add_argument("--output_dir", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: 20 steps, NFE 2, 2 draws of 200")
    args = parser.parse_args(argv)
    if args.smoke:
        args.steps, args.batch_size, args.nfe, args.draws, args.num_samples = 20, 8, 2, 2, 200
    if args.draws < 2:
        parser.error(f"--draws must be at least 2 (a spread needs two), got {args.draws}.")
    torch.set_num_threads(1)
    start = time.perf_counter()
    metrics = DigitMetrics(num_samples=args.num_samples)
    pooled_size = args.draws * args.num_samples
    if pooled_size > len(metrics.train_bits):  # the pooled floor draws that many real digits
        parser.error(f"--draws x --num_samples = {pooled_size} exceeds the {len(metrics.train_bits)} training digits "
                     "the pooled floor is drawn from.")
    run = train(METHODS[args.method], args.seed, args.steps, args.batch_size, args.cache_dir)
    draws, samples = [], []
    for k in range(args.draws):
        bits = generate(run, args.num_samples, args.nfe, seed=DRAW_SEED_STRIDE * k)
        scores = metrics(bits)
        samples.append(bits)
        draws.append({"generator_seed": DRAW_SEED_STRIDE * k, "fd": scores["fd"],
                      "speckle_rate": scores["speckle_rate"]})
        print(f"draw {k} (generator seed {DRAW_SEED_STRIDE * k}): FD {scores['fd']:.2f}", flush=True)
    pooled_metrics = DigitMetrics(num_samples=pooled_size)
    fds = [d["fd"] for d in draws]
    result = {"command": command_line(__spec__.name, argv), "machine": machine(),
              "wall_seconds": time.perf_counter() - start,
              "config": {"method": args.method, "seed": args.seed, "steps": args.steps, "batch_size": args.batch_size,
                         "nfe": args.nfe, "draws": args.draws, "num_samples": args.num_samples, "smoke": args.smoke},
              "draws": draws, "fds": fds, "fd": mean_std(fds), "floor": metrics.floor(args.num_samples, seed=0),
              "pooled": {"num_samples": pooled_size, "fd": pooled_metrics(torch.cat(samples))["fd"],
                         "floor_fd": pooled_metrics.floor(pooled_size, seed=0)["fd"]}}
    table = markdown(result)
    write_results(args.output_dir, "fd_sampling_noise", result, table)
    print(table)


if __name__ == "__main__":
    main()
