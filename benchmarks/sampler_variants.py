"""Samplers and data-end candidates on trained digit models: FD against NFE, speckle and the data-end bit error.

    python -m benchmarks.sampler_variants [--methods x-mse-ln] [--seeds 0 1 2] [--nfes 8 16] [--num_samples 500]
    python -m benchmarks.sampler_variants --variants "Euler (default)" "corrector, s_churn 4" --nfes 4 8 16 32 64
    python -m benchmarks.sampler_variants --methods x-mse-ln x-mse-ln-mix lr-bce-ln --seeds 0 --nfes 8 64
    python -m benchmarks.sampler_variants --smoke --output_dir /tmp/sv     # tiny sizes, seconds (the test runs this)

Loads (or trains) the runs of each of `--methods` that the digit benchmarks cache (`digit_runs.py`: same body,
steps and batch; one run per seed), then draws `--num_samples` digits with `BinaryFlowPipeline` under each
`BinaryFlowMatchScheduler` setting in `VARIANTS` and scores them like `peers_digits.py` (FD in our classifier's
feature space, precision, recall, the speckle rate; the same generator seed for every variant of a run). NFE counts
network evaluations (Heun's N steps take 2N - 1, a Heun first step one call more than Euler's N): each variant
runs with the largest N that fits the budget. Each run's data-end bit error (`diagnostics.data_end_bit_errors`: the
share of wrong-sign bits of x_hat on held-out digits noised to sigma 0.05 / 0.1 / 0.2, next to sign(x_sigma)'s)
shows what the recipe does at the data end. Reports mean +- std over the seeds; a seed whose sampling the scheduler
refuses (a non-finite estimate) has no scores and is counted as failed. Writes sampler_variants.json and .md.
"""

import argparse
import time
from pathlib import Path

import torch

from diffusers_binflow.diagnostics import data_end_bit_errors
from diffusers_binflow.flow import MAX_LIKELIHOOD_LOGIT
from diffusers_binflow.metrics import DigitMetrics
from diffusers_binflow.metrics.digits import digit_bits

from .digit_runs import METHODS, flow_pipeline, model_evaluations, steps_for, train
from .reporting import command_line, failed_note, fmt, machine, mean_std, sample_or_failure, write_results

VARIANTS = {  # name -> BinaryFlowMatchScheduler options
    "Euler (default)": {},
    "Heun": {"solver": "heun"},
    "stochastic (ancestral) Euler": {"stochastic_sampling": True},
    # The stochastic corrector (EDM's churn) in the window sigma in [0.05, 0.7]; gamma = s_churn / N per step.
    **{f"corrector, s_churn {c:g}": {"s_churn": float(c), "s_tmin": 0.05, "s_tmax": 0.7} for c in (2, 4, 8, 16)},
    # The grid's timestep shift (sigma -> shift sigma / (1 + (shift - 1) sigma)): > 1 puts more steps near noise.
    **{f"Euler, shift {shift:g}": {"shift": float(shift)} for shift in (0.5, 2)},
    # For likelihood-residual models: cap the likelihood term's log-odds so that the network can veto a bit.
    **{f"likelihood cap {cap:g}": {"likelihood_cap": float(cap)} for cap in (1, 2, 4)},
    "likelihood cap 2, corrector s_churn 8": {"likelihood_cap": 2.0, "s_churn": 8.0, "s_tmin": 0.05, "s_tmax": 0.7},
    # A smaller cap at the last evaluation only, the one the bits are read from (`final_likelihood_cap`).
    "likelihood cap 2, final cap 1": {"likelihood_cap": 2.0, "final_likelihood_cap": 1.0},
    **{f"likelihood in full, final cap {cap:g}": {"final_likelihood_cap": float(cap)} for cap in (0.5, 1)},
    # The saved image sampler on a shifted grid (< 1 puts more steps near the data, > 1 near the noise).
    **{f"likelihood in full, final cap 1, shift {shift:g}": {"final_likelihood_cap": 1.0, "shift": float(shift)}
       for shift in (0.5, 2)},
    **{f"Heun, likelihood in full, final cap {cap:g}": {"solver": "heun", "final_likelihood_cap": float(cap)}
       for cap in (1, 2, 4, 8)},
    # The saved image sampler with its first step, out of pure noise, taken with Heun's method (one call more).
    "likelihood in full, final cap 1, Heun first step": {"final_likelihood_cap": 1.0, "heun_first_step": True},
    # The saved image sampler with the second-order multistep solver (one call per step), also started by Heun.
    "likelihood in full, final cap 1, multistep": {"final_likelihood_cap": 1.0, "solver": "multistep"},
    "likelihood in full, final cap 1, multistep, Heun first step": {"final_likelihood_cap": 1.0, "solver": "multistep",
                                                                   "heun_first_step": True},
}
DATA_END_SIGMAS = (0.05, 0.1, 0.2)
DATA_END_DIGITS = 2000  # held-out digits noised for the data-end bit error
DEFAULT_VARIANTS = ["Euler (default)", "Heun", "stochastic (ancestral) Euler", "corrector, s_churn 4"]
SCORES = ("fd", "precision", "recall", "speckle_rate")


def data_end(run, likelihood_cap: float = MAX_LIKELIHOOD_LOGIT, num_digits: int = DATA_END_DIGITS) -> list[dict]:
    """The run's data-end bit errors on the first `num_digits` held-out digits (fixed noise)."""
    return data_end_bit_errors(run.model, digit_bits("heldout")[:num_digits], run.method.prediction_type,
                               DATA_END_SIGMAS, generator=torch.Generator().manual_seed(0),
                               self_conditioning=run.method.self_conditioning, likelihood_cap=likelihood_cap)


def sample_rows(method, runs, args, metrics) -> list[dict]:
    """One row per (variant, NFE budget) for the runs (seeds) of `method`."""
    rows = []
    for name in args.variants:
        options = VARIANTS[name]
        for nfe in args.nfes:
            steps = steps_for(nfe, **options)
            per_seed = []
            for run in runs:
                pipeline = flow_pipeline(run, **options)
                bits, failed = sample_or_failure(lambda: pipeline(
                    batch_size=args.num_samples, num_inference_steps=steps, output_type="pt",
                    generator=torch.Generator().manual_seed(10_000 * (run.seed + 1))).images)
                scores = dict.fromkeys(SCORES) if bits is None else metrics(bits)
                per_seed.append({"seed": run.seed, "failed": failed, **{k: scores[k] for k in SCORES}})
                if failed is None:
                    print(f"{method.key} | {name}, {steps} steps, seed {run.seed}: FD {scores['fd']:.2f}, speckle "
                          f"{scores['speckle_rate']:.5f}", flush=True)
            rows.append({"method": method.key, "variant": name, "options": options, "nfe_budget": nfe,
                         "steps": steps, "nfe": model_evaluations(steps, **options),
                         "per_seed": per_seed, "failed_seeds": sum(r["failed"] is not None for r in per_seed),
                         **{k: mean_std([r[k] for r in per_seed]) for k in SCORES}})
    return rows


def markdown(result: dict, floor: dict) -> str:
    cfg = result["config"]
    lines = [f"Command: `{result['command']}`  ",
             f"Machine: {result['machine']}; wall time {result['wall_seconds']:.0f} s.  ",
             f"Models: the cached runs of {', '.join(f'`{m}`' for m in cfg['methods'])}, seeds {cfg['seeds']}, "
             f"{cfg['steps']} steps x batch {cfg['batch_size']}; {cfg['num_samples']} samples per (run, row); "
             f"real-data floor FD {floor['fd']:.2f}, real speckle rate {floor['speckle_rate']:.5f}.",
             "", "| method | sampler | NFE | FD (mean ± std over seeds) | FD / floor | per seed | precision / recall "
             "| speckle / real |", "|---|---|---|---|---|---|---|---|"]
    for row in result["rows"]:
        per_seed = " / ".join("failed" if r["fd"] is None else f"{r['fd']:.1f}" for r in row["per_seed"])
        fd = f"{fmt(row['fd'], 3)}{failed_note(row['failed_seeds'], len(row['per_seed']))}"
        if row["fd"]["mean"] is None:  # every seed failed
            lines.append(f"| {row['method']} | {row['variant']} | {row['nfe']} | {fd} | | {per_seed} | | |")
            continue
        lines.append(f"| {row['method']} | {row['variant']} | {row['nfe']} | {fd} | "
                     f"{row['fd']['mean'] / floor['fd']:.1f}x | {per_seed} | "
                     f"{row['precision']['mean']:.2f} / {row['recall']['mean']:.2f} | "
                     f"{row['speckle_rate']['mean'] / floor['speckle_rate']:.1f}x |")
    lines += ["", f"Data-end bit error: share of wrong-sign bits of x_hat on {DATA_END_DIGITS} held-out digits noised "
              "to sigma (mean over seeds); sign(x_sigma) alone gets the last column wrong.", "",
              "| method | " + " | ".join(f"sigma {s:g}" for s in DATA_END_SIGMAS) + " | sign(x_sigma), sigma "
              f"{DATA_END_SIGMAS[-1]:g} |", "|---" * (len(DATA_END_SIGMAS) + 2) + "|"]
    for key, errors in result["data_end"].items():
        lines.append(f"| {key} | " + " | ".join(f"{e['model_bit_error']['mean']:.5f}" for e in errors)
                     + f" | {errors[-1]['likelihood_bit_error']['mean']:.5f} |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    trained_flows = sorted(k for k, m in METHODS.items() if m.sampler == "binary_flow" and not m.trained_as)
    parser.add_argument("--methods", nargs="+", choices=trained_flows, default=["x-mse-ln"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--num_samples", type=int, default=500)
    parser.add_argument("--nfes", type=int, nargs="+", default=[8, 16])
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=DEFAULT_VARIANTS)
    parser.add_argument("--cache_dir", type=Path, default=Path("benchmarks/cache"), help="trained runs, reused")
    parser.add_argument("--output_dir", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--smoke", action="store_true",
                        help="tiny sizes: 20 steps, NFE 3, 200 samples, the data-end error on 200 digits")
    args = parser.parse_args(argv)
    if args.smoke:
        args.steps, args.batch_size, args.num_samples, args.nfes, args.seeds = 20, 8, 200, [3], [0]
    torch.set_num_threads(1)
    start = time.perf_counter()
    metrics = DigitMetrics(num_samples=args.num_samples)
    rows, errors = [], {}
    for key in args.methods:
        method = METHODS[key]
        runs = [train(method, seed, args.steps, args.batch_size, args.cache_dir) for seed in args.seeds]
        # A likelihood-residual model is also scored under each cap a variant samples it with.
        residual = method.prediction_type == "likelihood_residual"
        own = method.sampler_likelihood_cap
        caps = sorted({cap for v in args.variants
                       if residual and (cap := VARIANTS[v].get("likelihood_cap", own)) != own})
        for cap in [own, *caps]:
            per_seed = [data_end(run, cap, 200 if args.smoke else DATA_END_DIGITS) for run in runs]
            label = key if cap == own else f"{key}, likelihood cap {cap:g}"
            errors[label] = [{"sigma": sigma, **{k: mean_std([seed[i][k] for seed in per_seed])
                                                 for k in ("model_bit_error", "likelihood_bit_error")}}
                             for i, sigma in enumerate(DATA_END_SIGMAS)]
        rows += sample_rows(method, runs, args, metrics)
    floor = metrics.floor(args.num_samples, seed=0)
    result = {"command": command_line(__spec__.name, argv), "machine": machine(),
              "wall_seconds": time.perf_counter() - start,
              "config": {"methods": args.methods, "seeds": args.seeds, "steps": args.steps,
                         "batch_size": args.batch_size, "num_samples": args.num_samples, "nfes": args.nfes,
                         "variants": args.variants, "smoke": args.smoke},
              "floor_fd": floor["fd"], "floor_speckle_rate": floor["speckle_rate"], "rows": rows, "data_end": errors}
    table = markdown(result, floor)
    write_results(args.output_dir, "sampler_variants", result, table)
    print(table)


if __name__ == "__main__":
    main()
