"""Peers at equal budget on binarized digits: sample quality against the number of network evaluations (NFE).

    python -m benchmarks.peers_digits [--steps 1000] [--batch_size 32] [--seeds 1] [--num_samples 500]
    python -m benchmarks.peers_digits --ours --peers jit --steps 2000 --seeds 3   # only the peers, no recipe of ours
    python -m benchmarks.peers_digits --smoke --output_dir /tmp/peers     # tiny sizes, seconds (the test runs this)

Every method trains the same UNet2DModel body with the same optimiser, steps, batch, data order and seed (see
`digit_runs.py`; runs are shared with `alignment_digits.py` through --cache_dir), then generates --num_samples
unconditional digits at each NFE in {1, 2, 4, 8, 16, 32, 64}: ours (the image script's default recipe, and any
other recipe named with --ours), the JiT recipe, rectified flow sampled with diffusers' FlowMatchEulerDiscreteScheduler,
uniform-flip discrete diffusion with diffusers' DiscreteDDIMScheduler (temperature 1), and discrete flow matching
with Meta's `flow_matching` package (uniform and mask sources; ``pip install -e .[peers]``, skipped with a note
when it is missing). Reports the Fréchet distance in our digit classifier's feature space (also as a multiple of
the real-data floor for as many real digits), precision / recall, and seconds per sample (generation wall time on
this machine, one thread). A (method, seed, NFE) whose sampling the scheduler refuses (a non-finite estimate) has
no scores and is counted as failed.

Writes peers_digits.json, .md and .png (FD and seconds per sample against NFE) into --output_dir.
"""

import argparse
import importlib.util
import json
import os
import time
from pathlib import Path

import torch

from diffusers_binflow.metrics import DigitMetrics

from .digit_runs import IMAGE_DEFAULT, METHODS, generate, run_dir, train
from .reporting import command_line, failed_note, machine, mean_std, pyplot, run_jobs, sample_or_failure, write_results

DEFAULT_OURS = (IMAGE_DEFAULT,)
PEERS = ("jit", "rf-fm-euler", "uniform-flip", "dfm-uniform", "dfm-mask")
NEEDS_META = ("dfm-uniform", "dfm-mask")
NFES = (1, 2, 4, 8, 16, 32, 64)
SCORES = ("fd", "precision", "recall", "class_coverage")


def evaluate(job) -> dict:
    """Train (or load) one (method, seed) and score it at every NFE. Scores are cached next to the run (one file
    per sample count), so a rerun with another --ours only evaluates what is new."""
    key, seed, args = job
    torch.set_num_threads(1)
    method = METHODS[key]
    run = train(method, seed, args.steps, args.batch_size, args.cache_dir)
    cache = run_dir(args.cache_dir, method, seed, args.steps, args.batch_size) / f"peers-{key}-n{args.num_samples}.json"
    per_nfe = {int(n): v for n, v in json.loads(cache.read_text()).items()} if cache.is_file() else {}
    metrics = DigitMetrics(num_samples=args.num_samples)
    for nfe in args.nfes:
        if nfe in per_nfe:
            continue
        start = time.perf_counter()
        bits, failed = sample_or_failure(lambda: generate(run, args.num_samples, nfe, seed=10_000 * (seed + 1)))
        seconds = time.perf_counter() - start
        scores = dict.fromkeys(SCORES) if bits is None else metrics(bits)
        per_nfe[nfe] = {**{k: scores[k] for k in SCORES}, "seconds_per_sample": seconds / args.num_samples,
                        "sampling_failed": failed}
        cache.write_text(json.dumps(per_nfe))
    per_nfe = {nfe: per_nfe[nfe] for nfe in args.nfes}
    return {"key": key, "seed": seed, "diverged": run.record["diverged"], "train_seconds": run.record["train_seconds"],
            "parameters": run.record["parameters"], "per_nfe": per_nfe}


def summarize(key: str, runs: list[dict], nfes) -> dict:
    return {
        "key": key, "name": METHODS[key].name, "n_seeds": len(runs), "n_diverged": sum(r["diverged"] for r in runs),
        "train_seconds": mean_std([r["train_seconds"] for r in runs]),
        "per_nfe": {nfe: {**{m: mean_std([r["per_nfe"][nfe][m] for r in runs])
                                for m in (*SCORES, "seconds_per_sample")},
                          # scores cached before failures were recorded have no "sampling_failed"
                          "n_failed": sum(r["per_nfe"][nfe].get("sampling_failed") is not None for r in runs)}
                    for nfe in nfes},
    }


def markdown(result: dict) -> str:
    cfg, floor, nfes = result["config"], result["floor"], result["config"]["nfes"]
    lines = [
        f"Command: `{result['command']}`  ",
        f"Machine: {result['machine']}; wall time {result['wall_seconds']:.0f} s.  ",
        f"{cfg['steps']} steps x batch {cfg['batch_size']}, seeds {cfg['seeds']}, {cfg['parameters']:,}-parameter "
        f"UNet2DModel body for every method; {cfg['num_samples']} samples per (method, NFE). Real-data floor "
        f"({cfg['num_samples']} training digits): FD {floor['fd']:.2f}.",
    ]
    if result["skipped"]:
        lines.append(f"Skipped (Meta's `flow_matching` is not installed): {', '.join(result['skipped'])}.")
    header = "| method | " + " | ".join(f"NFE {n}" for n in nfes) + " |"
    rule = "|---|" + "---|" * len(nfes)
    lines += ["", "FD (multiple of the real-data floor); mean over seeds:", "", header, rule]
    for c in result["methods"]:
        cells = []
        for n in nfes:
            fd = c["per_nfe"][n]["fd"]["mean"]
            cells.append(("n/a" if fd is None else f"{fd:.1f} ({fd / floor['fd']:.1f}x)")
                         + failed_note(c["per_nfe"][n]["n_failed"], c["n_seeds"]))
        lines.append(f"| {c['name']} | " + " | ".join(cells) + " |")
    lines += ["", "Seconds per sample (generation, one thread):", "", header, rule]
    for c in result["methods"]:
        lines.append(f"| {c['name']} | " + " | ".join(
            f"{c['per_nfe'][n]['seconds_per_sample']['mean']:.4f}" for n in nfes) + " |")
    lines += ["", "Precision / recall:", "", header, rule]
    for c in result["methods"]:
        scores = [c["per_nfe"][n] for n in nfes]
        lines.append(f"| {c['name']} | " + " | ".join(
            "n/a" if s["precision"]["mean"] is None else f"{s['precision']['mean']:.2f} / {s['recall']['mean']:.2f}"
            for s in scores) + " |")
    return "\n".join(lines)


def plot(result: dict, path: Path) -> None:
    plt = pyplot()
    nfes = result["config"]["nfes"]
    fig, (fd_ax, time_ax) = plt.subplots(1, 2, figsize=(13, 4.8))
    for i, c in enumerate(result["methods"]):
        style = "-" if c["key"] in result["config"]["ours"] else "--"
        fd_ax.plot(nfes, [c["per_nfe"][n]["fd"]["mean"] for n in nfes], style, marker="o", color=f"C{i}",
                   label=c["name"])
        time_ax.plot(nfes, [c["per_nfe"][n]["seconds_per_sample"]["mean"] for n in nfes], style, marker="o",
                     color=f"C{i}", label=c["name"])
    fd_ax.axhline(result["floor"]["fd"], color="k", linestyle=":", label="real-data floor")
    fd_ax.set(xscale="log", yscale="log", xlabel="NFE", ylabel="FD (lower is better)", title="Quality vs NFE")
    time_ax.set(xscale="log", yscale="log", xlabel="NFE", ylabel="seconds per sample", title="Cost vs NFE")
    for ax in (fd_ax, time_ax):
        ax.set_xticks(nfes, [str(n) for n in nfes])
        ax.grid(True, which="both", alpha=0.3)
    fd_ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--num_samples", type=int, default=500, help="generated digits per (method, NFE), >= 200")
    parser.add_argument("--nfes", type=int, nargs="+", default=list(NFES))
    parser.add_argument("--ours", nargs="*", choices=sorted(METHODS), default=list(DEFAULT_OURS),
                        help="our recipes to compare (default: the library's default recipe; none: only the peers)")
    parser.add_argument("--peers", nargs="+", choices=sorted(METHODS), default=list(PEERS))
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1), help="methods in parallel")
    parser.add_argument("--cache_dir", type=Path, default=Path("benchmarks/cache"), help="trained runs, reused")
    parser.add_argument("--output_dir", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: 20 steps, NFE 1 and 2, 200 samples")
    args = parser.parse_args(argv)
    if args.smoke:
        args.steps, args.batch_size, args.seeds, args.num_samples, args.nfes, args.workers = 20, 8, 1, 200, [1, 2], 1
    have_meta = importlib.util.find_spec("flow_matching") is not None
    skipped = [k for k in args.peers if k in NEEDS_META and not have_meta]
    keys = [*args.ours, *(k for k in args.peers if k not in skipped)]
    if not keys:
        parser.error(f"nothing to run: no recipe of ours, and the peers {skipped} need Meta's flow_matching "
                     "(`make peers`).")
    jobs = [(key, seed, args) for seed in range(args.seeds) for key in keys]
    print(f"{len(keys)} methods x {args.seeds} seed(s) x NFE {args.nfes} ({args.workers} worker(s))"
          + (f"; skipped without flow_matching: {skipped}" if skipped else ""), flush=True)
    start = time.perf_counter()
    runs = run_jobs(evaluate, jobs, args.workers, lambda run, i, total: report(run, i, total, start))
    floor = DigitMetrics(num_samples=args.num_samples).floor(args.num_samples, seed=0)
    result = {
        "command": command_line(__spec__.name, argv), "machine": machine(), "wall_seconds": time.perf_counter() - start,
        "config": {"steps": args.steps, "batch_size": args.batch_size, "seeds": args.seeds,
                   "num_samples": args.num_samples, "nfes": args.nfes, "ours": args.ours,
                   "parameters": runs[0]["parameters"], "smoke": args.smoke},
        "floor": {"fd": floor["fd"], "precision": floor["precision"], "recall": floor["recall"]},
        "skipped": skipped,
        "methods": [summarize(key, [r for r in runs if r["key"] == key], args.nfes) for key in keys],
    }
    table = markdown(result)
    write_results(args.output_dir, "peers_digits", result, table, lambda path: plot(result, path))
    print(table)


def report(run: dict, i: int, total: int, start: float):
    fds = ", ".join(f"{nfe}: " + ("n/a" if v["fd"] is None else f"{v['fd']:.1f}") for nfe, v in run["per_nfe"].items())
    print(f"[{i}/{total} {time.perf_counter() - start:.0f}s] {run['key']} seed {run['seed']}: FD by NFE {fds}",
          flush=True)


if __name__ == "__main__":
    main()
