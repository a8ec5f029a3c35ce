"""Summaries and file output shared by the benchmark scripts."""

import json
import math
import os
import shlex
import sys
from pathlib import Path

import torch


def mean_std(values) -> dict:
    """Mean and (population) standard deviation of the finite values, with how many there were."""
    finite = [v for v in values if v is not None and math.isfinite(v)]
    if not finite:
        return {"mean": None, "std": None, "n": 0}
    t = torch.tensor(finite, dtype=torch.float64)
    return {"mean": t.mean().item(), "std": t.std(unbiased=False).item(), "n": len(finite)}


def fmt(stat: dict, digits: int = 4) -> str:
    if stat["mean"] is None:
        return "n/a"
    return f"{stat['mean']:.{digits}g} ± {stat['std']:.2g}"


def small_sigma_slope(bins: list[dict]) -> float | None:
    """Log-log slope of the p50 output-gradient norm against the bin centre over the first three bins
    (sigma centres 0.05, 0.15, 0.25): about -2 for sigma^-2 growth, about 0 for bounded gradients."""
    points = [(math.log((b["sigma_low"] + b["sigma_high"]) / 2), math.log(b["p50"]))
              for b in bins[:3] if b["p50"] is not None and b["p50"] > 0 and math.isfinite(b["p50"])]
    if len(points) < 2:
        return None
    x, y = torch.tensor(points, dtype=torch.float64).T
    x = x - x.mean()
    return ((x * (y - y.mean())).sum() / (x * x).sum()).item()


def clean_json(obj):
    """`obj` with non-finite floats as None (valid JSON)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: clean_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [clean_json(v) for v in obj]
    return obj


def command_line(argv=None) -> str:
    """The command that ran this script, quoted for a shell."""
    return "python " + shlex.join([sys.argv[0], *(sys.argv[1:] if argv is None else argv)])


def machine() -> str:
    return f"{os.cpu_count()} CPU cores, torch {torch.__version__}"


def write_results(output_dir: Path, name: str, result: dict, markdown: str, plot=None) -> None:
    """`<name>.json` (non-finite floats as null), `<name>.md` and, when `plot(path)` is given, `<name>.png`."""
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / f"{name}.json").write_text(json.dumps(clean_json(result), indent=1))
    (output_dir / f"{name}.md").write_text(markdown + "\n")
    if plot is not None:
        plot(output_dir / f"{name}.png")


def run_jobs(function, jobs: list, workers: int, report) -> list:
    """``function(job)`` for every job, in `workers` spawned processes when more than one (results in order of
    completion); `report(result, done, total)` after each."""
    results = []
    if workers > 1:
        import multiprocessing as mp

        with mp.get_context("spawn").Pool(workers) as pool:
            for result in pool.imap_unordered(function, jobs):
                results.append(result)
                report(result, len(results), len(jobs))
    else:
        for job in jobs:
            results.append(function(job))
            report(results[-1], len(results), len(jobs))
    return results


def pyplot():
    """matplotlib's pyplot on the file-only Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
