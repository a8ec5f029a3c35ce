"""Sampler variants on one trained digit model: does a different integration of the same network lower FD?

    python benchmarks/sampler_variants.py [--method x-mse-ln] [--seeds 0 1 2] [--nfes 8 16] [--num_samples 500]
    python benchmarks/sampler_variants.py --variants "Euler (default)" "corrector, s_churn 4" --nfes 4 8 16 32 64
    python benchmarks/sampler_variants.py --smoke --output_dir /tmp/sv     # tiny sizes, seconds (the test runs this)

Loads (or trains) the runs of `--method` that the digit benchmarks cache (`digit_runs.py`: same body, steps and
batch; one run per seed), then draws `--num_samples` digits with `BinaryFlowPipeline` under each
`BinaryFlowMatchScheduler` setting in `VARIANTS` and scores them like `peers_digits.py` (FD in our classifier's
feature space, precision, recall; the same generator seed for every variant of a run). NFE counts network
evaluations: Heun with N steps takes 2N - 1, so it runs with the largest N that fits the budget. Reports mean +- std
over the seeds. Writes sampler_variants.json and .md.
"""

import argparse
import time
from pathlib import Path

import torch
from digit_runs import METHODS, steps_for, train
from reporting import command_line, fmt, machine, mean_std, write_results

from diffusers_binflow import BinaryFlowMatchScheduler, BinaryFlowPipeline
from diffusers_binflow.metrics import DigitMetrics

VARIANTS = {  # name -> BinaryFlowMatchScheduler options
    "Euler (default)": {},
    "Heun": {"solver": "heun"},
    "stochastic (ancestral) Euler": {"stochastic_sampling": True},
    # The stochastic corrector (EDM's churn) in the window sigma in [0.05, 0.7]; gamma = s_churn / N per step.
    **{f"corrector, s_churn {c:g}": {"s_churn": float(c), "s_tmin": 0.05, "s_tmax": 0.7} for c in (2, 4, 8, 16)},
}
DEFAULT_VARIANTS = ["Euler (default)", "Heun", "stochastic (ancestral) Euler", "corrector, s_churn 4"]
SCORES = ("fd", "precision", "recall", "speckle_rate")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    trained_flows = sorted(k for k, m in METHODS.items() if m.sampler == "binary_flow" and not m.trained_as)
    parser.add_argument("--method", choices=trained_flows, default="x-mse-ln")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--num_samples", type=int, default=500)
    parser.add_argument("--nfes", type=int, nargs="+", default=[8, 16])
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=DEFAULT_VARIANTS)
    parser.add_argument("--cache_dir", type=Path, default=Path("benchmarks/cache"), help="trained runs, reused")
    parser.add_argument("--output_dir", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: 20 steps, NFE 3, 200 samples")
    args = parser.parse_args(argv)
    if args.smoke:
        args.steps, args.batch_size, args.num_samples, args.nfes, args.seeds = 20, 8, 200, [3], [0]
    torch.set_num_threads(1)
    start = time.perf_counter()
    method = METHODS[args.method]
    metrics = DigitMetrics(num_samples=args.num_samples)
    runs = [train(method, seed, args.steps, args.batch_size, args.cache_dir) for seed in args.seeds]
    rows = []
    for name in args.variants:
        options = VARIANTS[name]
        for nfe in args.nfes:
            steps = steps_for(options.get("solver", "euler"), nfe)
            per_seed = []
            for run in runs:
                scheduler = BinaryFlowMatchScheduler(prediction_type=method.prediction_type, **options)
                pipeline = BinaryFlowPipeline(unet=run.model, scheduler=scheduler)
                pipeline.set_progress_bar_config(disable=True)
                bits = pipeline(batch_size=args.num_samples, num_inference_steps=steps, output_type="pt",
                                generator=torch.Generator().manual_seed(10_000 * (run.seed + 1))).images
                scores = metrics(bits)
                per_seed.append({"seed": run.seed, **{k: scores[k] for k in SCORES}})
                print(f"{name}, {steps} steps, seed {run.seed}: FD {scores['fd']:.2f}, speckle "
                      f"{scores['speckle_rate']:.5f}", flush=True)
            rows.append({"variant": name, "options": options, "nfe_budget": nfe, "steps": steps,
                         "nfe": 2 * steps - 1 if options.get("solver") == "heun" else steps, "per_seed": per_seed,
                         **{k: mean_std([r[k] for r in per_seed]) for k in SCORES}})
    floor = metrics.floor(args.num_samples, seed=0)
    result = {"command": command_line(argv), "machine": machine(), "wall_seconds": time.perf_counter() - start,
              "config": {"method": args.method, "seeds": args.seeds, "steps": args.steps,
                         "batch_size": args.batch_size, "num_samples": args.num_samples, "nfes": args.nfes,
                         "variants": args.variants, "smoke": args.smoke},
              "floor_fd": floor["fd"], "rows": rows}
    lines = [f"Command: `{result['command']}`  ",
             f"Machine: {result['machine']}; wall time {result['wall_seconds']:.0f} s.  ",
             f"Model: the cached `{args.method}` runs ({method.name}), seeds {args.seeds}, {args.steps} steps x batch "
             f"{args.batch_size}; {args.num_samples} samples per (run, row); real-data floor FD {floor['fd']:.2f}, "
             f"real speckle rate {floor['speckle_rate']:.5f}.",
             "", "| sampler | NFE | FD (mean ± std over seeds) | FD / floor | per seed | precision / recall | speckle / real |",
             "|---|---|---|---|---|---|---|"]
    for row in rows:
        per_seed = " / ".join(f"{r['fd']:.1f}" for r in row["per_seed"])
        lines.append(f"| {row['variant']} | {row['nfe']} | {fmt(row['fd'], 3)} | "
                     f"{row['fd']['mean'] / floor['fd']:.1f}x | {per_seed} | "
                     f"{row['precision']['mean']:.2f} / {row['recall']['mean']:.2f} | "
                     f"{row['speckle_rate']['mean'] / floor['speckle_rate']:.1f}x |")
    write_results(args.output_dir, "sampler_variants", result, "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
