"""Exact sample quality on enumerable 16-bit distributions: total variation against the finite-sample floor.

    python benchmarks/synthetic_tv.py [--steps 3000] [--batch_size 512] [--seeds 3] [--nfes 16]
    python benchmarks/synthetic_tv.py --distributions "random [16, 8] code" --nfes 16 64 --s_churn 0 4
    python benchmarks/synthetic_tv.py --smoke --output_dir /tmp/tv      # tiny sizes, seconds (the test runs this)

Distributions (`diffusers_binflow.synthetic`, all 2^16 probabilities by enumeration): a mixture of 8 noisy
prototypes (product Bernoullis with bit probabilities 0.1 / 0.9), the 4x4 periodic Ising model at temperatures
1.5 (ordered), 2.269 (critical) and 3.5 (disordered), and uniform codewords of a random [16, 8] linear code.
Each recipe trains the toy's 2x256 gated MLP (`alignment_toy.GatedMLP`) with Adam (cosine decay), then samples N
bits with `BinaryFlowMatchScheduler` (Euler, each of --nfes steps, threshold; with each --s_churn, the stochastic
corrector in sigma in [0.05, 0.7], 0 = none). N is the larger of --num_samples and the metrics'
`minimum_samples` (10 samples per effective state). Reported: TV and KL(empirical || exact) next to their floors
(the same statistic for N exact samples, mean of 5 draws) and TV / floor; for the code, validity rate and
codeword coverage too.

Writes synthetic_tv.json and synthetic_tv.md into --output_dir.
"""

import argparse
import time
from pathlib import Path

import torch
from alignment_toy import GatedMLP, generate
from reporting import command_line, fmt, machine, mean_std, write_results

from diffusers_binflow.metrics.distribution import (
    codeword_coverage,
    finite_sample_floor,
    kl_divergence,
    minimum_samples,
    total_variation,
    validity_rate,
)
from diffusers_binflow.synthetic import IsingModel, LinearCode, ProductBernoulliMixture
from diffusers_binflow.training import FlowLossConfig, flow_matching_loss

DIM = 16
RECIPES = {
    "default (x-MSE, logit-normal)": FlowLossConfig(),
    "x-MSE, uniform": FlowLossConfig(timestep_sampling="uniform"),
    "x-BCE, uniform": FlowLossConfig(prediction_type="logits", loss_type="bce", timestep_sampling="uniform"),
}


def distributions() -> dict:
    prototypes = (torch.rand(8, DIM, generator=torch.Generator().manual_seed(0)) < 0.5).double()
    return {
        "mixture of 8 noisy prototypes": ProductBernoulliMixture(torch.ones(8), 0.1 + 0.8 * prototypes),
        "Ising 4x4, T = 1.5": IsingModel(temperature=1.5),
        "Ising 4x4, T = 2.269": IsingModel(temperature=2.269),
        "Ising 4x4, T = 3.5": IsingModel(temperature=3.5),
        "random [16, 8] code": LinearCode.random(n=DIM, k=8, seed=0),
    }


def train(distribution, config: FlowLossConfig, steps: int, batch_size: int, seed: int) -> GatedMLP:
    torch.manual_seed(seed)
    model = GatedMLP(DIM)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    lr_schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        bits = distribution.sample(batch_size, generator=generator).float()
        loss = flow_matching_loss(model, bits, config, generator=generator).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        lr_schedule.step()
    return model.eval()


def corrector(churn: float) -> dict:
    """Scheduler options of the stochastic corrector at strength `churn` (none at 0)."""
    return {"s_churn": churn, "s_tmin": 0.05, "s_tmax": 0.7} if churn else {}


def score(distribution, bits: torch.Tensor, min_samples: int | None) -> dict:
    probabilities = distribution.probabilities()
    scores = {"tv": total_variation(bits, probabilities, min_samples=min_samples),
              "kl": kl_divergence(bits, probabilities, min_samples=min_samples)}
    if isinstance(distribution, LinearCode):
        scores["validity"] = validity_rate(bits, distribution)
        scores["coverage"] = codeword_coverage(bits, distribution, min_samples=min_samples)
    return scores


def markdown(result: dict) -> str:
    cfg = result["config"]
    lines = [
        f"Command: `{result['command']}`  ",
        f"Machine: {result['machine']}; wall time {result['wall_seconds']:.0f} s.  ",
        f"2x256 gated MLP, {cfg['steps']} Adam steps (lr 1e-3, cosine decay) x batch {cfg['batch_size']}, "
        f"{cfg['seeds']} seeds; "
        "Euler (s_churn > 0: with the stochastic corrector in sigma in [0.05, 0.7]). Floors: the same statistic for "
        "N exact samples (mean of 5 draws).",
        "",
        "| distribution | N | recipe | NFE | s_churn | TV | TV floor | TV / floor | KL | KL floor | validity | "
        "coverage (floor) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in result["rows"]:
        code = "validity" in row["scores"]
        lines.append(
            f"| {row['distribution']} | {row['num_samples']} | {row['recipe']} | {row['nfe']} | {row['s_churn']:g} | "
            f"{fmt(row['scores']['tv'], 3)} | "
            f"{row['floor']['tv']:.3f} | {row['tv_over_floor']['mean']:.2f} | {fmt(row['scores']['kl'], 3)} | "
            f"{row['floor']['kl']:.3f} | {fmt(row['scores']['validity'], 3) if code else ''} | "
            + (f"{fmt(row['scores']['coverage'], 3)} ({row['floor']['coverage']:.3f})" if code else "") + " |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--batch_size", type=int, default=512)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--nfes", type=int, nargs="+", default=[16])
    parser.add_argument("--s_churn", type=float, nargs="+", default=[0.0],
                        help="Stochastic corrector strengths (0 = the deterministic Euler sampler).")
    parser.add_argument("--distributions", nargs="+", choices=list(distributions()), default=list(distributions()))
    parser.add_argument("--num_samples", type=int, default=20_000)
    parser.add_argument("--recipes", nargs="+", choices=sorted(RECIPES), default=list(RECIPES))
    parser.add_argument("--output_dir", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--smoke", action="store_true", help="20 steps, 1 seed, 1 recipe, 300 samples")
    args = parser.parse_args(argv)
    min_samples = None
    if args.smoke:
        args.steps, args.batch_size, args.seeds, args.num_samples, args.recipes = 20, 64, 1, 300, args.recipes[:1]
        min_samples = 100  # the smoke run only checks the plumbing, not the estimates
    torch.set_num_threads(1)
    start, rows = time.perf_counter(), []
    for name, distribution in distributions().items():
        if name not in args.distributions:
            continue
        n = args.num_samples if args.smoke else max(args.num_samples, minimum_samples(distribution.probabilities()))
        floor_generator = torch.Generator().manual_seed(123)
        floor = {"tv": finite_sample_floor(distribution, n, "total_variation", generator=floor_generator,
                                           min_samples=min_samples),
                 "kl": finite_sample_floor(distribution, n, "kl_divergence", generator=floor_generator,
                                           min_samples=min_samples)}
        if isinstance(distribution, LinearCode):
            floor["coverage"] = finite_sample_floor(
                distribution, n, lambda bits, _: codeword_coverage(bits, distribution, min_samples=min_samples),
                generator=floor_generator)
        for recipe in args.recipes:
            config = RECIPES[recipe]
            models = [train(distribution, config, args.steps, args.batch_size, seed) for seed in range(args.seeds)]
            for nfe in args.nfes:
                for churn in args.s_churn:
                    per_seed = []
                    for seed, model in enumerate(models):
                        with torch.no_grad():
                            signal = generate(model, config.prediction_type, "bpsk", n, seed=1000 + seed, dim=DIM,
                                              steps=nfe, **corrector(churn))
                        per_seed.append(score(distribution, (signal > 0).float(), min_samples))
                    scores = {k: mean_std([s[k] for s in per_seed]) for k in per_seed[0]}
                    rows.append({"distribution": name, "recipe": recipe, "nfe": nfe, "s_churn": churn,
                                 "num_samples": n, "floor": floor, "scores": scores,
                                 "tv_over_floor": mean_std([s["tv"] / floor["tv"] for s in per_seed]),
                                 "per_seed": per_seed})
                    print(f"[{time.perf_counter() - start:.0f}s] {name} | {recipe} | NFE {nfe} | s_churn {churn:g}: "
                          f"TV {scores['tv']['mean']:.3f} (floor {floor['tv']:.3f})"
                          + (f", validity {scores['validity']['mean']:.3f}" if "validity" in scores else ""),
                          flush=True)
    result = {"command": command_line(argv), "machine": machine(), "wall_seconds": time.perf_counter() - start,
              "config": {"steps": args.steps, "batch_size": args.batch_size, "seeds": args.seeds, "nfes": args.nfes,
                         "s_churn": args.s_churn, "num_samples": args.num_samples, "smoke": args.smoke},
              "rows": rows}
    table = markdown(result)
    write_results(args.output_dir, "synthetic_tv", result, table)
    print(table)


if __name__ == "__main__":
    main()
