"""Alignment grid on binarized digits: which prediction / loss / sigma-sampling recipe trains best at a CPU budget?

    python -m benchmarks.alignment_digits [--steps 1000] [--batch_size 32] [--seeds 3] [--num_samples 500]
    python -m benchmarks.alignment_digits --smoke --output_dir /tmp/digits   # tiny sizes, seconds (the test runs this)

Every cell trains the same 267k-parameter UNet2DModel body with the same optimiser, steps, batch, data order and
seeds (see `digit_runs.py`), then samples `--num_samples` unconditional digits with `BinaryFlowPipeline` (Euler,
`--nfe` steps, bits by threshold) and scores them with `DigitMetrics` (Fréchet distance in our classifier's feature
space against the held-out digits, precision / recall, class coverage, speckle, pixel-marginal error, nearest-
neighbour Hamming distance to the training set). The real-data floor is the same metrics for as many real training
digits. Cells: the paper's x-losses (MSE, BCE), the misaligned x-prediction + unclamped v-loss, the JiT recipe,
rectified flow, and the aligned variants that separate JiT's two heuristics: x-MSE under logit-normal sigma,
x-MSE weighted min(sigma^-2, 400) under uniform sigma (the x-space form of JiT's clamp), x-BCE under logit-normal.

Recorded per cell (mean +- std over seeds): the metrics, the divergence count (a non-finite loss) and the per-sample
output-gradient norm per sigma bin over the last 200 steps (p50 / p99, averaged over seeds; plotted). A run whose
sampling the scheduler refuses (a non-finite estimate) has no metrics and is counted as failed.
Writes alignment_digits.json, .md and .png into --output_dir; trained runs are cached in --cache_dir.
"""

import argparse
import json
import os
import time
from pathlib import Path

import torch

from diffusers_binflow.metrics import DigitMetrics

from .digit_runs import METHODS, generate, run_dir, train
from .reporting import (
    command_line,
    failed_note,
    fmt,
    machine,
    mean_std,
    pyplot,
    run_jobs,
    sample_or_failure,
    small_sigma_slope,
    write_results,
)

GRID = ("x-mse", "x-bce", "v-loss", "jit", "rf", "x-mse-ln", "x-mse-w", "x-bce-ln")
SMOKE_GRID = ("x-mse", "v-loss")
REPORTED = ("fd", "precision", "recall", "class_coverage", "pixel_marginal_error", "speckle_rate", "nn_hamming_mean")


def evaluate(job) -> dict:
    """Train (or load) one (method, seed) and score its samples; the scores are cached next to the run."""
    key, seed, args = job
    torch.set_num_threads(1)
    run = train(METHODS[key], seed, args.steps, args.batch_size, args.cache_dir)
    cache = run_dir(args.cache_dir, METHODS[key], seed, args.steps, args.batch_size) / (
        f"alignment-n{args.num_samples}-nfe{args.nfe}.json")
    if cache.is_file():
        scored = json.loads(cache.read_text())
    else:
        start = time.perf_counter()
        bits, failed = sample_or_failure(lambda: generate(run, args.num_samples, args.nfe, seed=10_000 * (seed + 1)))
        metrics = dict.fromkeys(REPORTED) if bits is None else DigitMetrics(num_samples=args.num_samples)(bits)
        scored = {"sample_seconds": time.perf_counter() - start, "sampling_failed": failed, "metrics": metrics}
        cache.write_text(json.dumps(scored))
    return {**run.record, "key": key, **scored}


def summarize(key: str, runs: list[dict]) -> dict:
    bins = None
    if runs[0]["output_grad_norm_per_sigma_bin"] is not None:
        per_seed = [r["output_grad_norm_per_sigma_bin"] for r in runs if r["output_grad_norm_per_sigma_bin"]]
        bins = [{**b, **{q: mean_std([s[i][q] for s in per_seed])["mean"] for q in ("p50", "p99")}}
                for i, b in enumerate(per_seed[0])]
    return {
        "key": key, "name": METHODS[key].name, "n_seeds": len(runs),
        "n_diverged": sum(r["diverged"] for r in runs),
        "n_failed": sum(r.get("sampling_failed") is not None for r in runs),  # scores cached before it: no key
        "metrics": {m: mean_std([r["metrics"][m] for r in runs]) for m in REPORTED},
        "final_loss": mean_std([r["final_loss"] for r in runs]),
        "output_grad_norm_per_sigma_bin": bins,
        "output_grad_p50_loglog_slope_small_sigma": None if bins is None else small_sigma_slope(bins),
        "train_seconds": mean_std([r["train_seconds"] for r in runs]),
        "runs": [{k: v for k, v in r.items() if k != "output_grad_norm_per_sigma_bin"} for r in runs],
    }


def markdown(result: dict) -> str:
    cfg, floor = result["config"], result["floor"]
    lines = [
        f"Command: `{result['command']}`  ",
        f"Machine: {result['machine']}; wall time {result['wall_seconds']:.0f} s.  ",
        f"{cfg['steps']} steps x batch {cfg['batch_size']}, seeds per cell: {cfg['seeds']}"
        f"{' at most (only runs already trained; the diverged column counts them)' if cfg.get('cached_only') else ''}, "
        f"{cfg['parameters']:,}-"
        f"parameter UNet2DModel; {cfg['num_samples']} samples per run at NFE {cfg['nfe']} (Euler). Real-data floor "
        f"({cfg['num_samples']} training digits): FD {floor['fd']:.2f}, precision {floor['precision']:.3f}, recall "
        f"{floor['recall']:.3f}, speckle {floor['speckle_rate']:.4f}.",
        "",
        "| recipe | diverged | FD | FD / floor | precision | recall | class coverage | speckle | pixel-marginal err "
        "| grad slope (small sigma) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c in sorted(result["cells"], key=lambda c: c["metrics"]["fd"]["mean"] or float("inf")):
        m, fd = c["metrics"], c["metrics"]["fd"]["mean"]
        slope = c["output_grad_p50_loglog_slope_small_sigma"]
        multiple = "n/a" if fd is None else f"{fd / floor['fd']:.1f}x"
        lines.append(
            f"| {c['name']} | {c['n_diverged']}/{c['n_seeds']} | "
            f"{fmt(m['fd'], 3)}{failed_note(c['n_failed'], c['n_seeds'])} | "
            f"{multiple} | {fmt(m['precision'], 3)} | {fmt(m['recall'], 3)} "
            f"| {fmt(m['class_coverage'], 2)} | {fmt(m['speckle_rate'], 2)} | {fmt(m['pixel_marginal_error'], 2)} | "
            f"{'n/a' if slope is None else f'{slope:+.2f}'} |")
    lines += ["", "Grad slope: log-log slope of the median per-sample |d loss / d output| over the three smallest "
              "sigma bins (about -2 means sigma^-2 growth at the data end, about 0 bounded)."]
    return "\n".join(lines)


def plot(result: dict, path: Path) -> None:
    plt = pyplot()
    cells = sorted(result["cells"], key=lambda c: c["metrics"]["fd"]["mean"] or float("inf"))
    fig, (grad_ax, fd_ax) = plt.subplots(1, 2, figsize=(14, 5.2))
    for i, c in enumerate(cells):
        bins = [b for b in c["output_grad_norm_per_sigma_bin"] or [] if b["p50"] and b["p99"]]
        centres = [(b["sigma_low"] + b["sigma_high"]) / 2 for b in bins]
        grad_ax.plot(centres, [b["p50"] for b in bins], "-o", color=f"C{i}", markersize=3, label=c["name"])
        grad_ax.plot(centres, [b["p99"] for b in bins], ":", color=f"C{i}")
    grad_ax.set(yscale="log", xlabel="sigma bin centre (1 = noise, 0 = data)",
                ylabel="|d loss / d output| per sample (p50 solid, p99 dotted)", title="Output-gradient norm")
    grad_ax.grid(True, which="both", alpha=0.3)
    grad_ax.legend(fontsize=7)
    means = [c["metrics"]["fd"]["mean"] or 0 for c in cells]
    fd_ax.barh(range(len(cells)), means, xerr=[c["metrics"]["fd"]["std"] or 0 for c in cells],
               color=[f"C{i}" for i in range(len(cells))])
    fd_ax.axvline(result["floor"]["fd"], color="k", linestyle="--", label="real-data floor")
    fd_ax.set_yticks(range(len(cells)), [c["name"] for c in cells], fontsize=7)
    fd_ax.invert_yaxis()
    fd_ax.set(xscale="log", xlabel=f"FD ({result['config']['num_samples']} samples, NFE {result['config']['nfe']})",
              title="Sample quality (lower is better)")
    fd_ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--num_samples", type=int, default=500, help="generated digits per run (>= 200)")
    parser.add_argument("--nfe", type=int, default=16)
    parser.add_argument("--methods", nargs="+", choices=sorted(METHODS), default=None, help=f"default: {GRID}")
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1), help="runs in parallel")
    parser.add_argument("--cache_dir", type=Path, default=Path("benchmarks/cache"), help="trained runs, reused")
    parser.add_argument("--output_dir", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--cached_only", action="store_true",
                        help="report only the runs already trained in --cache_dir (cells may have fewer seeds)")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: 20 steps, 1 seed, 2 recipes, 200 samples")
    args = parser.parse_args(argv)
    if args.smoke:
        args.steps, args.batch_size, args.seeds, args.num_samples, args.nfe, args.workers = 20, 8, 1, 200, 2, 1
    keys = args.methods or (SMOKE_GRID if args.smoke else GRID)
    jobs = [(key, seed, args) for seed in range(args.seeds) for key in keys]  # seed 0 of every cell first
    if args.cached_only:  # summarise what earlier (possibly interrupted) runs finished, train nothing
        jobs = [job for job in jobs if (run_dir(args.cache_dir, METHODS[job[0]], job[1], args.steps,
                                                args.batch_size) / "run.json").is_file()]
        keys = [key for key in keys if any(job[0] == key for job in jobs)]
    print(f"{len(keys)} cells x {args.seeds} seeds = {len(jobs)} runs of {args.steps} steps "
          f"(batch {args.batch_size}, {args.workers} worker(s))", flush=True)
    start = time.perf_counter()
    runs = run_jobs(evaluate, jobs, args.workers, lambda run, i, total: report(run, i, total, start))
    floor = DigitMetrics(num_samples=args.num_samples).floor(args.num_samples, seed=0)
    result = {
        "command": command_line(__spec__.name, argv), "machine": machine(), "wall_seconds": time.perf_counter() - start,
        "config": {"steps": args.steps, "batch_size": args.batch_size, "seeds": args.seeds, "nfe": args.nfe,
                   "num_samples": args.num_samples, "parameters": runs[0]["parameters"], "smoke": args.smoke,
                   "cached_only": args.cached_only},
        "floor": {m: floor[m] for m in REPORTED},
        "cells": [summarize(key, sorted([r for r in runs if r["key"] == key], key=lambda r: r["seed"]))
                  for key in keys],
    }
    table = markdown(result)
    write_results(args.output_dir, "alignment_digits", result, table, lambda path: plot(result, path))
    print(table)


def report(run: dict, i: int, total: int, start: float):
    fd = run["metrics"]["fd"]
    print(f"[{i}/{total} {time.perf_counter() - start:.0f}s] {run['key']} seed {run['seed']}: "
          f"FD {'n/a' if fd is None else f'{fd:.2f}'}, diverged {run['diverged']}, train {run['train_seconds']:.0f} s",
          flush=True)


if __name__ == "__main__":
    main()
