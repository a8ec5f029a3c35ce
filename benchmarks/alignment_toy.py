"""Alignment grid on the paper's toy: which prediction/loss pairs train robustly on 16-d binary vs Gaussian data?

    python -m benchmarks.alignment_toy [--steps 5000] [--batch_size 1000] [--seeds 3] [--output_dir benchmarks/results]
    python -m benchmarks.alignment_toy --smoke --output_dir /tmp/toy     # tiny sizes, seconds (the test runs this)

Data: 16-dimensional BPSK (uniform independent bits, signal +-1) and 16-dimensional standard Gaussian data; both
have mean 0 and identity covariance, so they differ only in being discrete. Same network (a 2x256 gated MLP with
a sigma embedding), Adam, steps, batch and seeds for every cell of recipes x sigma samplers:

- x-pred + x-MSE, x-pred(logits) + x-BCE (BPSK only), x-pred + v-loss (no clamp), x-pred + v-loss clamped at 0.05
  (under logit-normal sigma: the JiT recipe), v-pred + v-loss (rectified flow), each under uniform sigma and
  JiT's logit-normal sigma (``logit_mean=0.8, logit_std=0.8`` of logit(sigma); sigma = 1 is noise).

Recorded per cell (mean +- std over seeds): the final training loss (EMA over the last 200 steps; each recipe's
own loss, so not comparable across recipes), an x-space MSE of the final model on a fixed evaluation set under
uniform sigma (comparable across recipes), the divergence rate (any step whose loss is not finite or > 1e6;
training stops at a non-finite loss, and sampling is then scored as failed if the scheduler refuses the model's
non-finite estimate), the norm of d(per-sample loss)/d(network output) per sigma bin (10 bins;
p50 and p99 over the last 1000 steps, pooled over seeds; the library's `output_gradient_norms` times the batch
size) and sample quality from `BinaryFlowMatchScheduler` (Euler, 16 steps): for BPSK (threshold) the largest
|marginal - 0.5|, the largest |correlation| between bits and the total variation between the 2^16-state
histogram and uniform; for Gaussian (``final_step="none"``) the mean error (L2) and covariance error (Frobenius).
Each is reported next to its finite-sample floor (the same statistic on as many true samples).

Writes alignment_toy.json, alignment_toy.md and alignment_toy.png into --output_dir and prints the tables.
"""

import argparse
import json
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from diffusers.models.embeddings import get_timestep_embedding
from torch import nn

from diffusers_binflow import BinaryFlowMatchScheduler
from diffusers_binflow.diagnostics import per_sigma_bin_stats
from diffusers_binflow.flow import interpolate, predict_x0
from diffusers_binflow.losses import implied_weight
from diffusers_binflow.timestep_sampling import sample_sigmas
from diffusers_binflow.training import FlowLossConfig, flow_matching_loss

from .reporting import (
    clean_json,
    command_line,
    fmt,
    machine,
    mean_std,
    pyplot,
    run_jobs,
    sample_or_failure,
    small_sigma_slope,
    write_results,
)
from .training_loop import OutputGradients, train_loop

DIM = 16
NUM_TRAIN_TIMESTEPS = 1000
JIT_LOGIT_MEAN, JIT_LOGIT_STD, JIT_CLAMP = 0.8, 0.8, 0.05
DIVERGENCE_LOSS = 1e6
EMA_SPAN = 200
GRAD_WINDOW = 1000
NUM_BINS = 10
SAMPLING_STEPS = 16
DATASETS = ("bpsk", "gaussian")
SAMPLERS = ("uniform", "logit_normal")


@dataclass(frozen=True)
class Recipe:
    name: str
    prediction_type: str
    loss_space: str
    loss_type: str = "mse"
    v_clamp: float | None = None
    binary_only: bool = False


RECIPES = (
    Recipe("x-pred + x-MSE", "sample", "x"),
    Recipe("x-pred(logits) + x-BCE", "logits", "x", loss_type="bce", binary_only=True),
    Recipe("x-pred + v-loss", "sample", "v"),
    Recipe("x-pred + v-loss clamp 0.05", "sample", "v", v_clamp=JIT_CLAMP),
    Recipe("v-pred + v-loss", "velocity", "v"),
)
SMOKE_RECIPES = ("x-pred + x-MSE", "x-pred + v-loss")


def cell_label(recipe: Recipe, sampler: str) -> str:
    if recipe.v_clamp == JIT_CLAMP and recipe.loss_space == "v" and sampler == "logit_normal":
        return "JiT (x-pred + v-loss clamp 0.05 + logit-normal)"
    return f"{recipe.name}, {sampler.replace('_', '-')} sigma"


class GatedMLP(nn.Module):
    """The toy denoiser: two gated layers of width 256 (``value * silu(gate)``) conditioned on a sinusoidal
    embedding of the timestep (sigma * 1000), then a linear read-out. Called like a diffusers model."""

    def __init__(self, dim: int = DIM, width: int = 256, depth: int = 2, embedding_dim: int = 32,
                 in_dim: int | None = None):
        super().__init__()
        self.embedding_dim = embedding_dim
        self.time_mlp = nn.Sequential(nn.Linear(embedding_dim, embedding_dim), nn.SiLU())
        self.layers = nn.ModuleList(  # `in_dim` (default `dim`) input features, `dim` outputs
            nn.Linear(((in_dim or dim) if i == 0 else width) + embedding_dim, 2 * width) for i in range(depth)
        )
        self.out = nn.Linear(width, dim)

    def forward(self, sample: torch.Tensor, timestep, return_dict: bool = False):
        timestep = torch.as_tensor(timestep, dtype=sample.dtype, device=sample.device)
        if timestep.ndim == 0:
            timestep = timestep.expand(sample.shape[0])
        emb = self.time_mlp(get_timestep_embedding(timestep, self.embedding_dim, flip_sin_to_cos=True,
                                                   downscale_freq_shift=0))
        h = sample
        for layer in self.layers:
            value, gate = layer(torch.cat([h, emb], dim=1)).chunk(2, dim=1)
            h = value * nn.functional.silu(gate)
        out = self.out(h)
        return (out,) if not return_dict else {"sample": out}


class BitTransformer(nn.Module):
    """A small transformer denoiser over bit positions, called like `GatedMLP`: each of the `dim` bits is a token
    whose features are its input channels (the flat input holds ``in_dim // dim`` channels of `dim` values, e.g. the
    signal then a mask), lifted to `width` with a learned position and the timestep embedding added, mixed by a
    `depth`-layer `nn.TransformerEncoder` (full attention) and read out as one value per bit. It tells the network
    apart from the method: the MLP sees all bits at once through dense layers, this one through attention."""

    def __init__(self, dim: int = DIM, width: int = 64, depth: int = 2, heads: int = 4, in_dim: int | None = None):
        super().__init__()
        self.dim, self.channels, self.width = dim, (in_dim or dim) // dim, width
        self.lift = nn.Linear(self.channels, width)
        self.position = nn.Parameter(torch.randn(dim, width) * 0.02)
        self.time_mlp = nn.Sequential(nn.Linear(width, width), nn.SiLU(), nn.Linear(width, width))
        layer = nn.TransformerEncoderLayer(width, heads, dim_feedforward=4 * width, dropout=0.0, batch_first=True,
                                           norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.out = nn.Linear(width, 1)

    def forward(self, sample: torch.Tensor, timestep, return_dict: bool = False):
        timestep = torch.as_tensor(timestep, dtype=sample.dtype, device=sample.device)
        if timestep.ndim == 0:
            timestep = timestep.expand(sample.shape[0])
        emb = self.time_mlp(get_timestep_embedding(timestep, self.width, flip_sin_to_cos=True, downscale_freq_shift=0))
        tokens = sample.view(-1, self.channels, self.dim).transpose(1, 2)  # (N, dim, channels)
        h = self.encoder(self.lift(tokens) + self.position + emb[:, None])
        out = self.out(h).squeeze(-1)
        return (out,) if not return_dict else {"sample": out}


# ---------------------------------------------------------------------------------------------------- data


def sample_data(dataset: str, n: int, generator: torch.Generator) -> torch.Tensor:
    """BPSK: bits in {0, 1} (the library maps them to +-1); Gaussian: the signal itself, N(0, I)."""
    if dataset == "bpsk":
        return (torch.rand(n, DIM, generator=generator) < 0.5).float()
    return torch.randn(n, DIM, generator=generator)


def signal_of(dataset: str, data: torch.Tensor) -> torch.Tensor:
    return 2 * data - 1 if dataset == "bpsk" else data


def loss_config(recipe: Recipe, sampler: str) -> FlowLossConfig:
    return FlowLossConfig(prediction_type=recipe.prediction_type, loss_space=recipe.loss_space,
                          loss_type=recipe.loss_type, timestep_sampling=sampler, logit_mean=JIT_LOGIT_MEAN,
                          logit_std=JIT_LOGIT_STD, v_clamp=recipe.v_clamp, num_train_timesteps=NUM_TRAIN_TIMESTEPS)


def gaussian_flow_loss(model, clean: torch.Tensor, config: FlowLossConfig, generator: torch.Generator):
    """`flow_matching_loss` for real-valued data (no bits): the same path, sigma sampler and loss definitions.

    The x-loss is ``(x_hat - x)**2``; the v-loss is the same x-error times the library's implied weight of an
    x-prediction v-loss (``min(sigma, v_clamp)**-2``), which equals ``(v_hat - v)**2`` for every prediction
    type since ``v_hat - v = (x - x_hat) / sigma``. Returns (loss, sigmas, model_output).
    """
    sigmas = sample_sigmas(clean.shape[0], config.timestep_sampling, config.logit_mean, config.logit_std,
                           generator=generator)
    noise = torch.randn(clean.shape, generator=generator)
    noisy = interpolate(clean, noise, sigmas)
    model_output = model(noisy, sigmas * config.num_train_timesteps, return_dict=False)[0]
    elementwise = (predict_x0(model_output, noisy, sigmas, config.prediction_type) - clean) ** 2
    if config.loss_space == "v":
        elementwise = elementwise * implied_weight("sample", "v", sigmas, config.v_clamp)[:, None]
    return elementwise.mean(), sigmas, model_output


# ------------------------------------------------------------------------------------------------- quality


@torch.no_grad()
def generate(model, prediction_type: str, dataset: str, n: int, seed: int, dim: int = DIM,
             steps: int = SAMPLING_STEPS, solver: str = "euler", **scheduler_options) -> torch.Tensor:
    """`n` samples (N, dim) by `solver` (`steps` steps) from sigma = 1: +-1 for "bpsk" (threshold), the final
    signal for "gaussian". `scheduler_options` go to `BinaryFlowMatchScheduler` (e.g. the corrector's ``s_churn``)."""
    final_step = "threshold" if dataset == "bpsk" else "none"
    scheduler = BinaryFlowMatchScheduler(prediction_type=prediction_type, solver=solver, final_step=final_step,
                                         num_train_timesteps=NUM_TRAIN_TIMESTEPS, **scheduler_options)
    scheduler.set_timesteps(steps)
    generator = torch.Generator().manual_seed(seed)
    sample = torch.randn(n, dim, generator=generator)
    for t in scheduler.timesteps:
        sample = scheduler.step(model(sample, t, return_dict=False)[0], t, sample, generator=generator).prev_sample
    return sample


def quality(dataset: str, signal: torch.Tensor | None) -> dict:
    """Sample statistics against the truth (uniform independent bits, or N(0, I)); NaN without finite samples."""
    if signal is None or not torch.isfinite(signal).all():
        return {k: math.nan for k in (("max_marginal_error", "max_abs_correlation", "tv_uniform")
                                      if dataset == "bpsk" else ("mean_error", "cov_error"))}
    if dataset == "bpsk":
        bits = (signal > 0).float()
        states = (bits.long() * (2 ** torch.arange(DIM))).sum(1)
        hist = torch.bincount(states, minlength=2**DIM).double() / bits.shape[0]
        corr = torch.nan_to_num(torch.corrcoef(bits.T), nan=1.0) - torch.eye(DIM)  # constant bit: correlation 1
        return {"max_marginal_error": (bits.mean(0) - 0.5).abs().max().item(),
                "max_abs_correlation": corr.abs().max().item(),
                "tv_uniform": 0.5 * (hist - 2.0**-DIM).abs().sum().item()}
    x = signal.double()
    return {"mean_error": x.mean(0).norm().item(),
            "cov_error": (torch.cov(x.T) - torch.eye(DIM, dtype=x.dtype)).norm().item()}


@torch.no_grad()
def eval_x_mse(model, prediction_type: str, dataset: str, n: int) -> float:
    """x-space MSE of the model's x_hat on a fixed set (data, noise, uniform sigma from seed 1234)."""
    generator = torch.Generator().manual_seed(1234)
    clean = signal_of(dataset, sample_data(dataset, n, generator))
    sigmas = sample_sigmas(n, "uniform", generator=generator)
    noisy = interpolate(clean, torch.randn(clean.shape, generator=generator), sigmas)
    x_hat = predict_x0(model(noisy, sigmas * NUM_TRAIN_TIMESTEPS, return_dict=False)[0], noisy, sigmas,
                       prediction_type)
    return ((x_hat - clean) ** 2).mean().item()


# ---------------------------------------------------------------------------------------------------- runs


def toy_loss(dataset: str, config: FlowLossConfig):
    """The loss of `train_loop` for `dataset`: (loss, sigmas, model_output) of the library's loss on bits, or of
    `gaussian_flow_loss` on Gaussian data."""
    if dataset == "bpsk":
        def loss(model, bits, generator):
            out = flow_matching_loss(model, bits, config, generator=generator)
            return out.loss, out.sigmas, out.model_output

        return loss
    return lambda model, data, generator: gaussian_flow_loss(model, data, config, generator)


def ema_of(losses: list[float], steps: int) -> float:
    """The bias-corrected exponential moving average (span min(EMA_SPAN, steps)) of `losses`, at their end."""
    decay = 1 - 1 / min(EMA_SPAN, steps)
    ema = weight = 0.0
    for value in losses:
        ema = decay * ema + (1 - decay) * value
        weight = decay * weight + (1 - decay)
    return ema / weight if weight > 0 else math.nan


def train_one(dataset: str, recipe: Recipe, sampler: str, seed: int, args) -> dict:
    gradients = OutputGradients(args.steps, GRAD_WINDOW, args.batch_size)
    training = train_loop(GatedMLP, toy_loss(dataset, loss_config(recipe, sampler)),
                          lambda generator: sample_data(dataset, args.batch_size, generator), args.steps, seed=seed,
                          data_seed=10_000 + seed, noise_seed=20_000 + seed, lr=args.lr, observe=gradients)
    model, stopped_at = training.model, training.stopped_at_step
    huge = [step for step, value in enumerate(training.losses) if value > DIVERGENCE_LOSS]
    first_divergence = huge[0] if huge else stopped_at
    finite_model = stopped_at is None and all(torch.isfinite(p).all() for p in model.parameters())
    samples, sampling_failed = sample_or_failure(
        lambda: generate(model, recipe.prediction_type, dataset, args.num_samples, seed=30_000 + seed))
    return {
        "dataset": dataset, "recipe": recipe.name, "sampler": sampler, "seed": seed,
        "diverged": first_divergence is not None, "first_divergence_step": first_divergence,
        "stopped_at_step": stopped_at, "max_loss": max([0.0, *training.losses]),
        "final_loss": ema_of(training.losses, args.steps) if stopped_at is None else math.nan,
        "eval_x_mse": eval_x_mse(model, recipe.prediction_type, dataset, args.num_samples) if finite_model
        else math.nan,
        "quality": quality(dataset, samples), "sampling_failed": sampling_failed,
        "train_seconds": training.train_seconds,
        "_grad_sigmas": gradients.sigmas,
        "_grad_norms": gradients.norms,
    }


def summarize_cell(dataset: str, recipe: Recipe, sampler: str, runs: list[dict]) -> dict:
    sigmas = torch.cat([r["_grad_sigmas"] for r in runs])
    norms = torch.cat([r["_grad_norms"] for r in runs])
    keep = torch.isfinite(norms)
    bins = per_sigma_bin_stats(sigmas[keep], norms[keep], num_bins=NUM_BINS, percentiles=(50, 99))
    for b in bins:  # drop the mean: only percentiles are asked for, and a spike would dominate it
        b.pop("mean")
    return {
        "dataset": dataset, "recipe": recipe.name, "sampler": sampler, "label": cell_label(recipe, sampler),
        **{k: v for k, v in asdict(recipe).items() if k != "name"},
        "n_seeds": len(runs), "n_diverged": sum(r["diverged"] for r in runs),
        "divergence_rate": sum(r["diverged"] for r in runs) / len(runs),
        "final_loss": mean_std([r["final_loss"] for r in runs]),
        "eval_x_mse": mean_std([r["eval_x_mse"] for r in runs]),
        "quality": {k: mean_std([r["quality"][k] for r in runs]) for k in runs[0]["quality"]},
        "output_grad_norm_per_sigma_bin": bins,
        "output_grad_p50_loglog_slope_small_sigma": small_sigma_slope(bins),
        "seconds_per_run": sum(r["train_seconds"] for r in runs) / len(runs),
        "runs": [{k: v for k, v in r.items() if not k.startswith("_")} for r in runs],
    }


def floors(num_samples: int) -> dict:
    generator = torch.Generator().manual_seed(777)
    return {d: quality(d, signal_of(d, sample_data(d, num_samples, generator))) for d in DATASETS}


# ------------------------------------------------------------------------------------------------- outputs


def markdown(result: dict) -> str:
    cfg = result["config"]
    lines = [
        "# Alignment grid on the paper's toy (16-d BPSK vs 16-d Gaussian)", "",
        f"Command: `{result['command']}`  ",
        f"{cfg['steps']} Adam steps (lr {cfg['lr']}), batch {cfg['batch_size']}, {cfg['seeds']} seeds per cell, "
        f"2x256 gated MLP; {cfg['num_samples']} samples per run (Euler, {SAMPLING_STEPS} steps). "
        f"Wall time {result['wall_seconds']:.0f} s on {result['machine']}."
        + ("" if result["complete"] else
           f" **Partial: {result['cells_finished']} of {result['cells_total']} cells finished so far.**"), "",
        ("Final loss: EMA (span 200) of each recipe's own training loss (not comparable across recipes). "
         "eval x-MSE: x-space MSE of x_hat on a fixed set under uniform sigma. Diverged: seeds with a loss that is "
         "not finite or > 1e6. Gradient: norm of d(per-sample loss)/d(output), p50 (p99) in the sigma bins "
         "[0, 0.1) and [0.9, 1], last 1000 steps pooled over seeds; slope: log-log slope of p50 over the bins "
         "centred at sigma 0.05, 0.15, 0.25 (-2 = sigma^-2 growth)."), "",
    ]
    for dataset in DATASETS:
        cells = [c for c in result["cells"] if c["dataset"] == dataset]
        if not cells:
            continue
        floor = result["floors"][dataset]
        if dataset == "bpsk":
            qkeys, qnames = ("max_marginal_error", "max_abs_correlation", "tv_uniform"), \
                ("max abs(marginal-0.5)", "max abs(corr)", "TV vs uniform")
        else:
            qkeys, qnames = ("mean_error", "cov_error"), ("mean error", "cov error (Frob.)")
        lines += [f"## {dataset.upper() if dataset == 'bpsk' else 'Gaussian'}", "",
                  "| recipe | sigma | diverged | final loss | eval x-MSE | " + " | ".join(qnames)
                  + " | grad p50 (p99), sigma<0.1 | grad p50 (p99), sigma>0.9 | slope |",
                  "|---|---|---|---|---|" + "---|" * len(qkeys) + "---|---|---|"]
        for c in cells:
            low, high = c["output_grad_norm_per_sigma_bin"][0], c["output_grad_norm_per_sigma_bin"][-1]
            grad = lambda b: "n/a" if b["p50"] is None else f"{b['p50']:.3g} ({b['p99']:.3g})"
            slope = c["output_grad_p50_loglog_slope_small_sigma"]
            name = "JiT: x-pred + v-loss clamp 0.05" if c["label"].startswith("JiT") else c["recipe"]
            lines.append(
                f"| {name} | {c['sampler'].replace('_', '-')} | {c['n_diverged']}/{c['n_seeds']} | "
                f"{fmt(c['final_loss'])} | {fmt(c['eval_x_mse'])} | "
                + " | ".join(fmt(c["quality"][k], 3) for k in qkeys)
                + f" | {grad(low)} | {grad(high)} | {'n/a' if slope is None else f'{slope:.2f}'} |")
        lines.append("| *true samples (floor)* | | | | | " + " | ".join(f"{floor[k]:.3g}" for k in qkeys)
                     + " | | | |")
        lines.append("")
    return "\n".join(lines)


def plot(result: dict, path: Path) -> None:
    plt = pyplot()
    fig, axes = plt.subplots(1, len(DATASETS), figsize=(13, 4.8), sharey=True)
    for ax, dataset in zip(axes, DATASETS):
        for c in [c for c in result["cells"] if c["dataset"] == dataset]:
            bins = [b for b in c["output_grad_norm_per_sigma_bin"] if b["p50"] is not None and b["p50"] > 0]
            if not bins:
                continue
            color = f"C{[r.name for r in RECIPES].index(c['recipe'])}"  # one colour per recipe in both panels
            style = "-" if c["sampler"] == "uniform" else "--"
            ax.plot([(b["sigma_low"] + b["sigma_high"]) / 2 for b in bins], [b["p50"] for b in bins], style,
                    color=color, marker="o", markersize=3, label=c["label"])
        ax.set_yscale("log")
        ax.set_xlabel("sigma bin centre (1 = noise, 0 = data)")
        ax.set_title(f"{'BPSK (+-1 bits)' if dataset == 'bpsk' else 'Gaussian'}, 16-d")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("p50 of |d loss / d output| per sample")
    handles, labels = axes[0].get_legend_handles_labels()  # BPSK has every recipe
    fig.legend(handles, labels, loc="lower center", ncol=3, fontsize=7, frameon=False)
    fig.tight_layout(rect=(0, 0.17, 1, 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------------- main


def cells_to_run(args):
    names = args.recipes or ([*SMOKE_RECIPES] if args.smoke else [r.name for r in RECIPES])
    unknown = set(names) - {r.name for r in RECIPES}
    if unknown:
        raise SystemExit(f"Unknown recipe(s) {sorted(unknown)}; choose from {[r.name for r in RECIPES]}.")
    samplers = ["uniform"] if args.smoke else list(SAMPLERS)
    return [(d, r, s) for d in args.datasets for r in RECIPES if r.name in names for s in samplers
            if not (r.binary_only and d != "bpsk")]


def _worker(job):
    dataset, recipe, sampler, seed, args = job
    torch.set_num_threads(1)
    import warnings

    warnings.filterwarnings("ignore", message=".*misaligned.*")
    return train_one(dataset, recipe, sampler, seed, args)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=5000)
    parser.add_argument("--batch_size", type=int, default=1000)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--num_samples", type=int, default=10_000, help="generated (and true) samples per run")
    parser.add_argument("--datasets", nargs="+", choices=DATASETS, default=list(DATASETS))
    parser.add_argument("--recipes", nargs="+", default=None, help="subset of recipe names (default: all)")
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1),
                        help="runs in parallel, one thread each")
    parser.add_argument("--output_dir", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: 30 steps, batch 64, 1 seed, 2 recipes")
    parser.add_argument("--render_only", action="store_true",
                        help="rewrite the Markdown and PNG from an existing alignment_toy.json in --output_dir")
    args = parser.parse_args(argv)
    if args.render_only:
        result = json.loads((args.output_dir / "alignment_toy.json").read_text())
        write_results(args.output_dir, "alignment_toy", result, markdown(result), lambda path: plot(result, path))
        print(markdown(result))
        return
    if args.smoke:
        args.steps, args.batch_size, args.seeds, args.num_samples, args.workers = 30, 64, 1, 2000, 1

    start = time.perf_counter()
    cells = cells_to_run(args)
    jobs = [(d, r, s, seed, args) for d, r, s in cells for seed in range(args.seeds)]
    print(f"{len(cells)} cells x {args.seeds} seeds = {len(jobs)} runs of {args.steps} steps "
          f"(batch {args.batch_size}, {args.workers} worker(s))", flush=True)
    results, done = {}, []

    def record(run, i, total):
        results[(run["dataset"], run["recipe"], run["sampler"], run["seed"])] = run
        report_run(i, total, run, start)
        for d, r, s in cells:  # rewrite the outputs whenever a cell has all its seeds, so a long run shows progress
            if (d, r.name, s) not in done and all((d, r.name, s, k) in results for k in range(args.seeds)):
                done.append((d, r.name, s))
                if len(done) < len(cells):
                    write_outputs(args, argv, start, cells, results, quiet=True)

    run_jobs(_worker, jobs, args.workers, record)
    write_outputs(args, argv, start, cells, results)


def write_outputs(args, argv, start, cells, results, quiet=False):
    """Summarise the finished cells (all seeds done) into JSON, Markdown and PNG; `complete` says if all are."""
    finished = [(d, r, s) for d, r, s in cells if all((d, r.name, s, k) in results for k in range(args.seeds))]
    summary = [summarize_cell(d, r, s, [results[(d, r.name, s, seed)] for seed in range(args.seeds)])
               for d, r, s in finished]
    result = clean_json({
        "command": command_line(__spec__.name, argv),
        "complete": len(finished) == len(cells), "cells_finished": len(finished), "cells_total": len(cells),
        "config": {"steps": args.steps, "batch_size": args.batch_size, "seeds": args.seeds, "lr": args.lr,
                   "num_samples": args.num_samples, "workers": args.workers, "smoke": args.smoke,
                   "dim": DIM, "network": "2x256 gated MLP", "optimizer": "Adam",
                   "logit_normal": {"logit_mean": JIT_LOGIT_MEAN, "logit_std": JIT_LOGIT_STD},
                   "divergence_loss": DIVERGENCE_LOSS, "ema_span": EMA_SPAN, "grad_window": GRAD_WINDOW,
                   "num_bins": NUM_BINS, "sampling_steps": SAMPLING_STEPS},
        "machine": machine(),
        "wall_seconds": time.perf_counter() - start,
        "floors": floors(args.num_samples),
        "cells": summary,
    })
    table = markdown(result)
    write_results(args.output_dir, "alignment_toy", result, table, lambda path: plot(result, path))
    if not quiet:
        print(table)
        print(f"wrote {args.output_dir}/alignment_toy.{{json,md,png}} in {result['wall_seconds']:.1f} s")


def report_run(i, total, run, start):
    print(f"[{i}/{total} {time.perf_counter() - start:.0f}s] {run['dataset']} | {run['recipe']} | {run['sampler']} "
          f"| seed {run['seed']}: loss {run['final_loss']:.4g}, diverged {run['diverged']}, "
          f"{run['train_seconds']:.1f} s", flush=True)


if __name__ == "__main__":
    main()
