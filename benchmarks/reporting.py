"""Summaries, recorded command lines, failed seeds and file output: the reporting shared by the benchmark scripts."""

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
    """A `mean_std` as "mean ± std", or "n/a" when it had no finite values."""
    if stat["mean"] is None:
        return "n/a"
    return f"{stat['mean']:.{digits}g} ± {stat['std']:.2g}"


def failed_note(failed: int, total: int) -> str:
    """" (k of n seeds failed)" after a score when k > 0 seeds have none, else nothing."""
    return f" ({failed} of {total} seeds failed)" if failed else ""


def sample_or_failure(sample):
    """``(sample(), None)``, or ``(None, message)`` when sampling raises a `ValueError` (the scheduler's and pipeline's
    refusal of a non-finite estimate), so that one failed seed is recorded instead of ending the run."""
    try:
        return sample(), None
    except ValueError as error:
        print(f"sampling failed: {error}", flush=True)
        return None, str(error)


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


def command_line(module: str, argv=None) -> str:
    """The command that runs benchmark `module` (e.g. "benchmarks.cost") with `argv` (default: this process's
    arguments), quoted for a shell."""
    return "python -m " + shlex.join([module, *(sys.argv[1:] if argv is None else argv)])


def machine() -> str:
    """The machine in words: CPU cores and torch version."""
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
