"""Exact sample quality on enumerable 16-bit distributions: total variation against the finite-sample floor.

    python -m benchmarks.synthetic_tv [--steps 3000] [--batch_size 512] [--seeds 3] [--nfes 16]
    python -m benchmarks.synthetic_tv --distributions "random [16, 8] code" --nfes 16 64 --s_churn 0 4
    python -m benchmarks.synthetic_tv --recipes "x-BCE, uniform" "uniform flip (DiscreteDDIM)" \
        "discrete FM, uniform source" "discrete FM, mask source"          # against the discrete peers
    python -m benchmarks.synthetic_tv --seeds 1 --first_seed 2 --output_dir /tmp/seed2   # seeds in parallel runs,
    python -m benchmarks.synthetic_tv --combine /tmp/seed*/synthetic_tv.json --output_dir /tmp/all   # then merged
    python -m benchmarks.synthetic_tv --smoke --output_dir /tmp/tv      # tiny sizes, seconds (the test runs this)

Distributions (`diffusers_binflow.synthetic`, all 2^16 probabilities by enumeration): a mixture of 8 noisy
prototypes (product Bernoullis with bit probabilities 0.1 / 0.9), the 4x4 periodic Ising model at temperatures
1.5 (ordered), 2.269 (critical) and 3.5 (disordered), and uniform codewords of a random [16, 8] linear code.
Each recipe trains the toy's 2x256 gated MLP (`alignment_toy.GatedMLP`; `--network transformer`: a small
`alignment_toy.BitTransformer` over the bit positions, to tell network and method apart) with Adam (cosine
decay), then samples N
bits with `BinaryFlowMatchScheduler` (each of --solvers within each of --nfes network evaluations, Heun's N steps
taking 2N - 1, threshold; with each --s_churn, the stochastic corrector in sigma in [0.05, 0.7], 0 = none). N is
the larger of --num_samples and the metrics' `minimum_samples` (10 samples per effective state). Reported: TV and KL(empirical || exact) next to their floors
(the same statistic for N exact samples, mean of 5 draws) and TV / floor; for the code, validity rate and
codeword coverage too. The discrete peers (`--recipes`, see `discrete_peers.py`) train the same MLP (the mask
source's takes a mask channel too) with the same optimiser, steps, batch and data, and sample with their own
samplers at the same NFE. The "exact posterior (sampler oracle)" recipe trains nothing: each solver is fed the
exact ``E[x | x_sigma]`` (`synthetic.exact_posterior_mean`), so its TV is that solver's own error at that NFE, the
least any of our recipes can reach with it. A seed whose training loss turns non-finite stops training there
(`diverged`); a seed whose sampler refuses a non-finite estimate is recorded as failed (scores null, the scheduler's message kept) and
the table says how many seeds failed.

Writes synthetic_tv.json and synthetic_tv.md into --output_dir.
"""

import argparse
import importlib.util
import json
import math
import time
from dataclasses import replace
from pathlib import Path

import torch

from diffusers_binflow.metrics.distribution import (
    codeword_coverage,
    finite_sample_floor,
    kl_divergence,
    minimum_samples,
    total_variation,
    validity_rate,
)
from diffusers_binflow.schedulers.scheduling_binary_flow_match import SOLVERS
from diffusers_binflow.synthetic import IsingModel, LinearCode, ProductBernoulliMixture, exact_posterior_mean
from diffusers_binflow.training import SEQUENCE_RECIPE, FlowLossConfig, flow_matching_loss

from .alignment_toy import NUM_TRAIN_TIMESTEPS, BitTransformer, GatedMLP, generate
from .discrete_peers import input_channels, peer_loss, sample_peer
from .digit_runs import steps_for
from .reporting import command_line, failed_note, fmt, machine, mean_std, sample_or_failure, write_results
from .training_loop import Training, train_loop

DIM = 16
RECIPES = {
    "default (x-MSE, logit-normal)": FlowLossConfig(),
    "x-MSE, uniform": FlowLossConfig(timestep_sampling="uniform"),
    "x-BCE, uniform": FlowLossConfig(prediction_type="logits", loss_type="bce", timestep_sampling="uniform"),
    "x-BCE, logit-normal(0, 0.5)": SEQUENCE_RECIPE,  # the sequence script's default
    # The same with a third of the sigmas uniform, so that both ends still train.
    "x-BCE, logit-normal(0, 0.5) + 1/3 uniform": replace(SEQUENCE_RECIPE, uniform_fraction=1 / 3),
    # Between the two: the code's validity rose without the uniform share, the ordered Ising model's TV fell with it.
    "x-BCE, logit-normal(0, 0.5) + 1/6 uniform": replace(SEQUENCE_RECIPE, uniform_fraction=1 / 6),
}
# The sampler fed the exact posterior mean instead of a network: what each solver alone reaches at each NFE.
ORACLE = "exact posterior (sampler oracle)"
# The discrete peers (`discrete_peers`), same network and budget: name -> family.
PEERS = {
    "uniform flip (DiscreteDDIM)": "uniform_flip",
    "discrete FM, uniform source": "dfm_uniform",
    "discrete FM, mask source": "dfm_mask",
}
NEEDS_META = ("dfm_uniform", "dfm_mask")
NETWORKS = {"mlp": GatedMLP, "transformer": BitTransformer}  # the same for every method of a run
NETWORK_NAMES = {"mlp": "2x256 gated MLP", "transformer": "2-layer bit transformer (width 64)"}


def distributions() -> dict:
    prototypes = (torch.rand(8, DIM, generator=torch.Generator().manual_seed(0)) < 0.5).double()
    return {
        "mixture of 8 noisy prototypes": ProductBernoulliMixture(torch.ones(8), 0.1 + 0.8 * prototypes),
        "Ising 4x4, T = 1.5": IsingModel(temperature=1.5),
        "Ising 4x4, T = 2.269": IsingModel(temperature=2.269),
        "Ising 4x4, T = 3.5": IsingModel(temperature=3.5),
        "random [16, 8] code": LinearCode.random(n=DIM, k=8, seed=0),
    }


class ExactPosterior(torch.nn.Module):
    """A denoiser that returns the exact ``E[x | x_sigma]`` of an enumerable distribution (x-prediction)."""

    def __init__(self, distribution):
        super().__init__()
        self.probabilities = distribution.probabilities()

    def forward(self, sample, timestep, return_dict=False):
        return (exact_posterior_mean(self.probabilities, sample, timestep / NUM_TRAIN_TIMESTEPS),)


def train(distribution, recipe: str, steps: int, batch_size: int, seed: int, network: str = "mlp") -> Training:
    """Adam (lr 1e-3, cosine decay) on the recipe's (or peer's) loss; one generator (seeded `seed`) draws each
    batch, then its loss's noise and sigmas (or corruption). The oracle trains nothing."""
    if recipe == ORACLE:
        return Training(model=ExactPosterior(distribution), losses=[], stopped_at_step=None, train_seconds=0.0)
    if recipe in PEERS:
        family = PEERS[recipe]
        build = lambda: NETWORKS[network](DIM, in_dim=input_channels(family, DIM))  # noqa: E731
        loss = lambda model, bits, generator: peer_loss(family, model, bits, generator)[0]  # noqa: E731
    else:
        build = lambda: NETWORKS[network](DIM)  # noqa: E731
        loss = lambda model, bits, generator: flow_matching_loss(model, bits, RECIPES[recipe],  # noqa: E731
                                                                 generator=generator).loss
    return train_loop(build, loss, lambda generator: distribution.sample(batch_size, generator=generator).float(),
                      steps, seed=seed, cosine_decay=True)


def corrector(churn: float) -> dict:
    """Scheduler options of the stochastic corrector at strength `churn` (none at 0)."""
    return {"s_churn": churn, "s_tmin": 0.05, "s_tmax": 0.7} if churn else {}


def score_names(distribution) -> tuple[str, ...]:
    return ("tv", "kl", "validity", "coverage") if isinstance(distribution, LinearCode) else ("tv", "kl")


def score(distribution, bits: torch.Tensor | None, min_samples: int | None) -> dict:
    """The scores of the samples `bits`; all None when there are none (sampling failed)."""
    if bits is None:
        return dict.fromkeys(score_names(distribution))
    probabilities = distribution.probabilities()
    scores = {"tv": total_variation(bits, probabilities, min_samples=min_samples),
              "kl": kl_divergence(bits, probabilities, min_samples=min_samples)}
    if isinstance(distribution, LinearCode):
        scores["validity"] = validity_rate(bits, distribution)
        scores["coverage"] = codeword_coverage(bits, distribution, min_samples=min_samples)
    return scores


def sample_bits(recipe: str, model, n: int, seed: int, nfe: int, solver: str, churn: float) -> torch.Tensor:
    """`n` samples (n, DIM) of bits: our flows by `solver` within `nfe` evaluations (with the corrector at `churn`),
    a peer by its own sampler."""
    if recipe in PEERS:
        return sample_peer(PEERS[recipe], model, (DIM,), n, nfe, seed)
    prediction_type = "sample" if recipe == ORACLE else RECIPES[recipe].prediction_type
    signal = generate(model, prediction_type, "bpsk", n, seed=seed, dim=DIM, steps=steps_for(nfe, solver=solver),
                      solver=solver, **corrector(churn))
    return (signal > 0).float()


def sample_and_score(distribution, training: Training, recipe: str, n: int, seed: int, nfe: int, solver: str,
                     churn: float, min_samples: int | None) -> dict:
    """One seed's row entry: its scores, whether its training diverged, and the sampler's message if it failed."""
    bits, failed = sample_or_failure(lambda: sample_bits(recipe, training.model, n, 1000 + seed, nfe, solver, churn))
    return {"seed": seed, "diverged": training.diverged, "failed": failed, **score(distribution, bits, min_samples)}


def summarize(row: dict, per_seed: list[dict]) -> dict:
    """`row` (a distribution, recipe, sampler and its floor) with its seeds' entries and their mean +- std."""
    scores = {k: mean_std([s[k] for s in per_seed]) for k in per_seed[0] if k not in ("seed", "diverged", "failed")}
    return {**row, "scores": scores,
            "tv_over_floor": mean_std([None if s["tv"] is None else s["tv"] / row["floor"]["tv"] for s in per_seed]),
            "failed_seeds": sum(s["failed"] is not None for s in per_seed),
            "diverged_seeds": sum(s["diverged"] for s in per_seed), "per_seed": per_seed}


def same_floor(a: dict, b: dict) -> bool:
    """Whether two runs' floors are the same statistics: equal up to float rounding, which differs between machines
    and thread counts (seen: 3.5e-12 relative) although the floor's draws are seeded."""
    return a.keys() == b.keys() and all(math.isclose(a[k], b[k], rel_tol=1e-9) for k in a)


def combine(results: list[dict]) -> dict:
    """One result from runs that differ only in their seeds: each row's seeds joined, its mean +- std recomputed.
    Results written before `--solvers` existed sampled ours with Euler and the peers with their own samplers, and
    are read so."""
    for result in results:
        result["config"].setdefault("solvers", ["euler"])
        for row in result["rows"]:
            row.setdefault("solver", "own" if row["recipe"] in PEERS else "euler")
    settings = [{k: v for k, v in r["config"].items() if k not in ("seeds", "first_seed")} for r in results]
    if any(s != settings[0] for s in settings):
        raise ValueError("Only runs with the same settings (other than their seeds) can be combined.")
    merged = {}
    for result in results:
        for row in result["rows"]:
            key = tuple(row[k] for k in ("distribution", "recipe", "nfe", "solver", "s_churn"))
            if key in merged and not same_floor(merged[key]["row"]["floor"], row["floor"]):
                raise ValueError(f"The runs' floors differ for {key}: not the same settings.")
            merged.setdefault(key, {"row": row, "per_seed": []})["per_seed"].extend(row["per_seed"])
    rows = []
    for key, entry in merged.items():
        seeds = [s["seed"] for s in entry["per_seed"]]
        if len(set(seeds)) != len(seeds):
            raise ValueError(f"Seeds {sorted(seeds)} of {key} repeat: the runs overlap.")
        rows.append(summarize({k: entry["row"][k] for k in ("distribution", "recipe", "nfe", "solver", "s_churn",
                                                           "num_samples", "floor")},
                              sorted(entry["per_seed"], key=lambda s: s["seed"])))
    seeds = sorted({s["seed"] for row in rows for s in row["per_seed"]})
    return {**results[0], "command": " ; ".join(r["command"] for r in results),
            "wall_seconds": sum(r["wall_seconds"] for r in results),
            "config": {**results[0]["config"], "seeds": len(seeds), "first_seed": seeds[0]},
            "skipped": sorted({name for r in results for name in r["skipped"]}), "rows": rows}


def markdown(result: dict) -> str:
    cfg, combined = result["config"], " ; " in result["command"]
    lines = [
        f"Command{' (runs merged with `--combine`)' if combined else ''}: `{result['command']}`  ",
        f"Machine: {result['machine']}; wall time {result['wall_seconds']:.0f} s"
        f"{' (summed over the runs)' if combined else ''}.  ",
        f"{NETWORK_NAMES[cfg.get('network', 'mlp')]} for every method, {cfg['steps']} Adam steps (lr 1e-3, cosine decay) x batch "
        f"{cfg['batch_size']}, {cfg['seeds']} seeds (a row's own count in its seeds column); "
        "our recipes sampled by Euler or Heun (N Heun steps take 2N - 1 of the NFE) (s_churn > 0: with the "
        "stochastic corrector in sigma in [0.05, 0.7]), the "
        "peers by their own samplers (`benchmarks/discrete_peers.py`). Floors: the same statistic for N exact samples "
        "(mean of 5 draws).",
        "",
        "| distribution | N | recipe | NFE | solver | s_churn | seeds | TV | TV floor | TV / floor | KL | KL floor | "
        "validity | coverage (floor) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in result["rows"]:
        code = "validity" in row["scores"]
        tv_over_floor = row["tv_over_floor"]["mean"]
        lines.append(
            f"| {row['distribution']} | {row['num_samples']} | {row['recipe']} | {row['nfe']} | "
            f"{row.get('solver', 'euler')} | {row['s_churn']:g} | {len(row['per_seed'])} | "
            f"{fmt(row['scores']['tv'], 3)}{failed_note(row['failed_seeds'], len(row['per_seed']))} | "
            f"{row['floor']['tv']:.3f} | {'n/a' if tv_over_floor is None else f'{tv_over_floor:.2f}'} | "
            f"{fmt(row['scores']['kl'], 3)} | "
            f"{row['floor']['kl']:.3f} | {fmt(row['scores']['validity'], 3) if code else ''} | "
            + (f"{fmt(row['scores']['coverage'], 3)} ({row['floor']['coverage']:.3f})" if code else "") + " |")
    if result["skipped"]:
        lines.append(f"\nSkipped (Meta's `flow_matching` is not installed): {', '.join(result['skipped'])}.")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--batch_size", type=int, default=512)
    parser.add_argument("--seeds", type=int, help="How many seeds (default 3; with --smoke, 1).")
    parser.add_argument("--first_seed", type=int, default=0,
                        help="Run seeds first_seed, ..., first_seed + seeds - 1 (to run seeds in parallel).")
    parser.add_argument("--combine", nargs="+", type=Path, metavar="JSON",
                        help="Merge the seeds of runs with the same settings (e.g. run in parallel with --first_seed) "
                             "into --output_dir instead of running.")
    parser.add_argument("--nfes", type=int, nargs="+", default=[16])
    parser.add_argument("--solvers", nargs="+", choices=SOLVERS, default=["euler"],
                        help="Our samplers (Heun's N steps take 2N - 1 evaluations: the most that fit in each NFE).")
    parser.add_argument("--s_churn", type=float, nargs="+", default=[0.0],
                        help="Stochastic corrector strengths (0 = the deterministic Euler sampler).")
    available = distributions()  # built once: the Ising models enumerate all 2^16 states
    parser.add_argument("--distributions", nargs="+", choices=list(available), default=list(available))
    parser.add_argument("--num_samples", type=int, default=20_000)
    parser.add_argument("--recipes", nargs="+", choices=[*RECIPES, ORACLE, *PEERS],
                        help="Our recipes and the discrete peers (Meta's need `make peers`) to train and compare, "
                             f"and the {ORACLE!r} (the solver on the exact posterior mean: its own error; "
                             "no training) (default: our recipes; with --smoke, the first).")
    parser.add_argument("--network", choices=list(NETWORKS), default="mlp",
                        help="The denoiser every method trains: the 2x256 gated MLP, or a 2-layer bit transformer.")
    parser.add_argument("--output_dir", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--smoke", action="store_true", help="20 steps, 300 samples")
    args = parser.parse_args(argv)
    if args.combine:
        result = combine([json.loads(path.read_text()) for path in args.combine])
        write_results(args.output_dir, "synthetic_tv", result, markdown(result))
        return
    min_samples = None
    if args.seeds is None:
        args.seeds = 1 if args.smoke else 3
    if args.seeds < 1 or args.first_seed < 0:
        parser.error("--seeds must be at least 1 and --first_seed at least 0.")
    if any(args.s_churn) and set(args.solvers) != {"euler"}:  # refused before training, not after it as a failure
        parser.error("--s_churn above 0 (the stochastic corrector) works with --solvers euler only: run the other "
                     "solvers with --s_churn 0.")
    args.recipes = args.recipes or list(RECIPES)[:1 if args.smoke else None]
    if args.smoke:
        args.steps, args.batch_size, args.num_samples = 20, 64, 300
        min_samples = 100  # the smoke run only checks the plumbing, not the estimates
    have_meta = importlib.util.find_spec("flow_matching") is not None
    skipped = [r for r in args.recipes if PEERS.get(r) in NEEDS_META and not have_meta]
    if skipped:
        print(f"Skipped (Meta's `flow_matching` is not installed; `make peers`): {skipped}", flush=True)
        args.recipes = [r for r in args.recipes if r not in skipped]
    torch.set_num_threads(1)
    seeds = range(args.first_seed, args.first_seed + args.seeds)
    start, rows = time.perf_counter(), []
    for name, distribution in available.items():
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
            trainings = [train(distribution, recipe, args.steps, args.batch_size, seed, args.network)
                         for seed in seeds]
            for nfe in args.nfes:
                # The solvers and the corrector are ours; a peer has its own sampler.
                samplers = [("own", 0.0)] if recipe in PEERS else [(solver, churn) for solver in args.solvers
                                                                     for churn in args.s_churn]
                for solver, churn in samplers:
                    per_seed = [sample_and_score(distribution, training, recipe, n, seed, nfe, solver, churn,
                                                 min_samples) for seed, training in zip(seeds, trainings)]
                    row = summarize({"distribution": name, "recipe": recipe, "nfe": nfe, "solver": solver,
                                     "s_churn": churn, "num_samples": n, "floor": floor}, per_seed)
                    rows.append(row)
                    print(f"[{time.perf_counter() - start:.0f}s] {name} | {recipe} | NFE {nfe} | {solver} | "
                          f"s_churn {churn:g}: TV {fmt(row['scores']['tv'], 3)}"
                          f"{failed_note(row['failed_seeds'], len(per_seed))} (floor {floor['tv']:.3f})"
                          + (f", validity {fmt(row['scores']['validity'], 3)}" if "validity" in row["scores"] else ""),
                          flush=True)
    result = {"command": command_line(__spec__.name, argv), "machine": machine(),
              "wall_seconds": time.perf_counter() - start,
              "config": {"network": args.network, "steps": args.steps, "batch_size": args.batch_size,
                         "seeds": args.seeds, "first_seed": args.first_seed, "nfes": args.nfes,
                         "solvers": args.solvers, "s_churn": args.s_churn, "num_samples": args.num_samples,
                         "smoke": args.smoke},
              "skipped": skipped, "rows": rows}
    table = markdown(result)
    write_results(args.output_dir, "synthetic_tv", result, table)
    print(table)


if __name__ == "__main__":
    main()
