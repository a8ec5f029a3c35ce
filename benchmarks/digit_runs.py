"""What the digit benchmarks share: one denoiser body, one training loop and one sampler per method, runs cached.

Every method trains the same UNet2DModel body (`BODY`, 267k parameters at 28x28) on the bundled training digits
(binarized at grey level 128, unconditional) with the same optimiser, steps, batch and data order per seed; only
the corruption, the loss and the sampler differ:

- ``flow``: binary flow matching with this library (`flow_matching_loss`, any recipe of `FlowLossConfig`), sampled
  with `BinaryFlowPipeline` + `BinaryFlowMatchScheduler` (Euler) or, for velocity models, diffusers'
  `FlowMatchEulerDiscreteScheduler` (rectified flow on analog bits).
- ``uniform_flip``: D3PM uniform-kernel ("flip") diffusion with K = 2: a bit survives with probability 1 - t and is
  otherwise a fair coin; cross-entropy on the clean bit; sampled with diffusers' `DiscreteDDIMScheduler`
  (temperature 1).
- ``dfm_uniform`` / ``dfm_mask``: discrete flow matching with Meta's `flow_matching` package (optional extra
  ``peers``; CC BY-NC, installed, never copied): `MixtureDiscreteProbPath` with kappa_t = t from a uniform source
  (K = 2) or a mask source (K = 3), cross-entropy on the clean bit, t ~ U[0, 1 - 1e-3], sampled with
  `MixtureDiscreteEulerSolver`.

Time enters the body in one convention for all methods: ``timestep = 1000 * noise level`` (sigma for the flows, t
for the uniform flip, 1 - t for Meta's paths, whose t = 1 is data). Inputs are the +-1 signal of the current state
(one channel; the mask method adds a mask channel and shows masked bits as 0). Discrete methods output one logit
per bit (K = 2 logits ``[0, l]``).

A finished run is saved under ``<cache_dir>/<method key>/seed<k>-steps<n>-batch<b>/`` (UNet weights + run.json)
and reused by any benchmark that asks for the same (method, seed, steps, batch).
"""

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import (
    DiscreteDDIMScheduler,
    FlowMatchEulerDiscreteScheduler,
    UNet2DModel,
)
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel

from diffusers_binflow import BinaryFlowMatchScheduler, BinaryFlowPipeline
from diffusers_binflow.bits import bits_to_signal
from diffusers_binflow.diagnostics import output_gradient_norms, per_sigma_bin_stats
from diffusers_binflow.metrics.digits import digit_bits
from diffusers_binflow.training import FlowLossConfig, flow_matching_loss

BODY = dict(block_out_channels=(16, 32, 32), layers_per_block=1, norm_num_groups=8,
            down_block_types=("DownBlock2D",) * 3, up_block_types=("UpBlock2D",) * 3)
LEARNING_RATE, WARMUP_STEPS, MAX_GRAD_NORM, EMA_DECAY = 1e-3, 50, 1.0, 0.999
JIT_LOGIT_MEAN, JIT_LOGIT_STD, JIT_CLAMP = 0.8, 0.8, 0.05  # JiT's t ~ logit-normal(-0.8, 0.8) in sigma = 1 - t
DFM_T_MAX = 1 - 1e-3  # Meta's examples keep t off the singular data end
GRAD_WINDOW = 200  # last steps whose output-gradient norms are recorded
MASK = 2  # the mask token of the mask source


@dataclass(frozen=True)
class Method:
    """One training recipe + sampler. `key` names its cache folder; `name` is its row label."""

    key: str
    name: str
    family: str = "flow"  # flow | uniform_flip | dfm_uniform | dfm_mask
    prediction_type: str = "sample"
    loss_space: str = "x"
    loss_type: str = "mse"
    timestep_sampling: str = "uniform"
    v_clamp: float | None = None
    weighting_max: float | None = None
    sampler: str = "binary_flow"  # binary_flow | flow_match_euler | discrete_ddim | dfm_euler
    solver: str = "euler"  # BinaryFlowMatchScheduler's, for the binary_flow sampler
    trained_as: str | None = None  # the key of a method with the same training (only the sampler differs)

    def loss_config(self) -> FlowLossConfig:
        logit_normal = self.timestep_sampling == "logit_normal"
        logit = dict(logit_mean=JIT_LOGIT_MEAN, logit_std=JIT_LOGIT_STD) if logit_normal else {}
        return FlowLossConfig(prediction_type=self.prediction_type, loss_space=self.loss_space,
                              loss_type=self.loss_type, timestep_sampling=self.timestep_sampling,
                              v_clamp=self.v_clamp, weighting_max=self.weighting_max, **logit)

    @property
    def in_channels(self) -> int:
        return 2 if self.family == "dfm_mask" else 1


W_MAX = 1 / JIT_CLAMP**2  # min(sigma^-2, 400): the x-space form of JiT's v-loss clamp
METHODS = {m.key: m for m in (
    Method("x-mse", "x-pred + x-MSE, uniform"),
    Method("x-bce", "x-pred(logits) + x-BCE, uniform", prediction_type="logits", loss_type="bce"),
    Method("v-loss", "x-pred + v-loss (no clamp), uniform", loss_space="v"),
    Method("jit", "JiT: x-pred + v-loss clamp 0.05, logit-normal", loss_space="v", v_clamp=JIT_CLAMP,
           timestep_sampling="logit_normal"),
    Method("rf", "v-pred + v-loss (rectified flow), uniform", prediction_type="velocity", loss_space="v"),
    Method("x-mse-ln", "x-pred + x-MSE, logit-normal", timestep_sampling="logit_normal"),
    Method("x-mse-w", "x-pred + x-MSE x min(sigma^-2, 400), uniform", weighting_max=W_MAX),
    Method("x-bce-ln", "x-pred(logits) + x-BCE, logit-normal", prediction_type="logits", loss_type="bce",
           timestep_sampling="logit_normal"),
    Method("x-bce-w", "x-pred(logits) + x-BCE x min(sigma^-2, 400), uniform", prediction_type="logits",
           loss_type="bce", weighting_max=W_MAX),
    Method("x-mse-ln-heun", "x-pred + x-MSE, logit-normal; Heun sampler", timestep_sampling="logit_normal",
           solver="heun", trained_as="x-mse-ln"),
    Method("rf-fm-euler", "rectified flow (diffusers FlowMatchEulerDiscreteScheduler)", prediction_type="velocity",
           loss_space="v", sampler="flow_match_euler", trained_as="rf"),
    Method("uniform-flip", "uniform-flip diffusion (diffusers DiscreteDDIMScheduler, T=1)", family="uniform_flip",
           sampler="discrete_ddim"),
    Method("dfm-uniform", "discrete FM, uniform source (Meta flow_matching)", family="dfm_uniform",
           sampler="dfm_euler"),
    Method("dfm-mask", "discrete FM, mask source (Meta flow_matching)", family="dfm_mask", sampler="dfm_euler"),
)}


@dataclass
class Run:
    method: Method
    seed: int
    model: UNet2DModel  # EMA weights, eval mode
    record: dict  # final_loss, diverged, train_seconds, output-gradient norms per sigma bin, ...


def build_body(in_channels: int = 1) -> UNet2DModel:
    return UNet2DModel(sample_size=28, in_channels=in_channels, out_channels=1, **BODY)


# ------------------------------------------------------------------------------------------------------ training

def discrete_loss(method: Method, model, bits: torch.Tensor, generator: torch.Generator):
    """Cross-entropy on the clean bit for the discrete peers. Returns (loss, noise levels, model output)."""
    batch = bits.shape[0]
    if method.family == "uniform_flip":
        t = torch.rand(batch, generator=generator)
        keep = torch.rand(bits.shape, generator=generator) < (1 - t).view(-1, 1, 1, 1)
        state = torch.where(keep, bits, torch.randint(0, 2, bits.shape, generator=generator).float())
        inputs, noise_level = bits_to_signal(state), t
    else:
        from flow_matching.path import MixtureDiscreteProbPath
        from flow_matching.path.scheduler import PolynomialConvexScheduler

        t = torch.rand(batch, generator=generator) * DFM_T_MAX
        clean = bits.long().flatten(1)
        source = torch.full_like(clean, MASK) if method.family == "dfm_mask" else torch.randint_like(clean, 0, 2)
        state = MixtureDiscreteProbPath(PolynomialConvexScheduler(n=1)).sample(x_0=source, x_1=clean, t=t).x_t
        inputs, noise_level = discrete_inputs(method, state.view_as(bits)), 1 - t
    logits = model(inputs, noise_level * 1000, return_dict=False)[0]
    return F.binary_cross_entropy_with_logits(logits, bits), noise_level, logits


def discrete_inputs(method: Method, state: torch.Tensor) -> torch.Tensor:
    """The body's input for a discrete state: the +-1 signal, plus a mask channel (masked bits shown as 0)."""
    if method.family != "dfm_mask":
        return bits_to_signal(state.float())
    masked = (state == MASK).float()
    return torch.cat([bits_to_signal(state.clamp(max=1).float()) * (1 - masked), masked], dim=1)


def method_loss(method: Method, model, bits: torch.Tensor, generator: torch.Generator):
    if method.family == "flow":
        out = flow_matching_loss(model, bits, method.loss_config(), generator=generator)
        return out.loss, out.sigmas, out.model_output
    return discrete_loss(method, model, bits, generator)


def run_dir(cache_dir: Path, method: Method, seed: int, steps: int, batch_size: int) -> Path:
    return Path(cache_dir) / (method.trained_as or method.key) / f"seed{seed}-steps{steps}-batch{batch_size}"


def train(method: Method, seed: int, steps: int, batch_size: int, cache_dir: Path | None = None) -> Run:
    """Train (or load the cached run of) `method` for `steps` Adam steps of `batch_size` training digits.

    A non-finite loss stops the run and marks it diverged (its model is then the last finite EMA weights)."""
    folder = None if cache_dir is None else run_dir(cache_dir, method, seed, steps, batch_size)
    if folder is not None and (folder / "run.json").is_file():
        record = json.loads((folder / "run.json").read_text())
        return Run(method, seed, UNet2DModel.from_pretrained(folder).eval(), record)

    torch.manual_seed(seed)  # the body's initialisation (and Meta's path sampling, which takes no generator)
    model = build_body(method.in_channels)
    data = digit_bits("train")
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE, betas=(0.9, 0.99), weight_decay=0.0)
    lr_schedule = get_scheduler("cosine", optimizer, num_warmup_steps=WARMUP_STEPS, num_training_steps=steps)
    ema = EMAModel(model.parameters(), decay=EMA_DECAY, use_ema_warmup=True, power=0.75)
    losses, grad_sigmas, grad_norms, diverged = [], [], [], False
    start = time.perf_counter()
    for step in range(steps):
        bits = data[torch.randint(len(data), (batch_size,), generator=generator)]
        loss, sigmas, model_output = method_loss(method, model, bits, generator)
        if not torch.isfinite(loss):
            diverged = True
            break
        if step >= steps - GRAD_WINDOW:
            grad_sigmas.append(sigmas.detach())
            grad_norms.append(output_gradient_norms(loss, model_output).detach() * batch_size)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), MAX_GRAD_NORM)
        optimizer.step()
        lr_schedule.step()
        ema.step(model.parameters())
        losses.append(loss.item())
    ema.copy_to(model.parameters())
    record = {
        "method": asdict(method), "seed": seed, "steps": steps, "batch_size": batch_size,
        "steps_done": len(losses), "diverged": diverged,
        "final_loss": sum(losses[-50:]) / max(1, len(losses[-50:])) if losses else None,
        "train_seconds": time.perf_counter() - start,
        "parameters": sum(p.numel() for p in model.parameters()),
        "output_grad_norm_per_sigma_bin": per_sigma_bin_stats(torch.cat(grad_sigmas), torch.cat(grad_norms),
                                                              percentiles=(50, 99)) if grad_norms else None,
    }
    model.eval()
    if folder is not None:
        model.save_pretrained(folder)
        (folder / "run.json").write_text(json.dumps(record, indent=1))
    return Run(method, seed, model, record)


# ------------------------------------------------------------------------------------------------------ sampling

@torch.no_grad()
def generate(run: Run, num_samples: int, nfe: int, seed: int = 0, chunk: int = 500) -> torch.Tensor:
    """`num_samples` binary digits (N, 1, 28, 28) from `run` with at most `nfe` network evaluations each."""
    return torch.cat([_generate(run, min(chunk, num_samples - i), nfe, seed + i)
                      for i in range(0, num_samples, chunk)])


def _generate(run: Run, n: int, nfe: int, seed: int) -> torch.Tensor:
    method, model = run.method, run.model
    generator = torch.Generator().manual_seed(seed)
    if method.sampler in ("binary_flow", "flow_match_euler"):
        scheduler = (FlowMatchEulerDiscreteScheduler() if method.sampler == "flow_match_euler" else
                     BinaryFlowMatchScheduler(prediction_type=method.prediction_type, solver=method.solver))
        pipeline = BinaryFlowPipeline(unet=model, scheduler=scheduler)
        pipeline.set_progress_bar_config(disable=True)
        return pipeline(batch_size=n, num_inference_steps=steps_for(method.solver, nfe), generator=generator,
                        output_type="pt").images
    if method.sampler == "discrete_ddim":
        scheduler = DiscreteDDIMScheduler()
        scheduler.set_timesteps(nfe)
        state = torch.randint(0, 2, (n, 1, 28, 28), generator=generator)
        for step_index in scheduler.timesteps:
            noise_level = 1 - step_index.item() / nfe
            logit = model(bits_to_signal(state.float()), torch.full((n,), noise_level * 1000), return_dict=False)[0]
            logits = torch.stack([torch.zeros_like(logit), logit], dim=-1).flatten(1, 3)  # (n, 784, 2)
            state = scheduler.step(logits, step_index, state.flatten(1), temperature=1.0,
                                   generator=generator).prev_sample.view(n, 1, 28, 28)
        return state.float()
    return _generate_dfm(method, model, n, nfe, seed)


def steps_for(solver: str, nfe: int) -> int:
    """Solver steps whose network evaluations fit in `nfe`: Heun's N steps take 2N - 1."""
    return (nfe + 1) // 2 if solver == "heun" else nfe


def _generate_dfm(method: Method, model, n: int, nfe: int, seed: int) -> torch.Tensor:
    from flow_matching.path import MixtureDiscreteProbPath
    from flow_matching.path.scheduler import PolynomialConvexScheduler
    from flow_matching.solver import MixtureDiscreteEulerSolver
    from flow_matching.utils import ModelWrapper

    vocabulary = 3 if method.family == "dfm_mask" else 2

    class Probabilities(ModelWrapper):  # Meta's solver wants p(x_1 | x_t) over the vocabulary, (n, 784, K)
        def forward(self, x, t, **extras):
            logit = self.model(discrete_inputs(method, x.view(n, 1, 28, 28)), (1 - t) * 1000, return_dict=False)[0]
            logit = logit.flatten(1)
            logits = [torch.zeros_like(logit), logit] + ([torch.full_like(logit, -math.inf)] if vocabulary == 3 else [])
            return torch.stack(logits, dim=-1).softmax(-1)

    torch.manual_seed(seed)  # the solver draws from the global generator
    source = (torch.full((n, 784), MASK) if method.family == "dfm_mask" else torch.randint(0, 2, (n, 784)))
    solver = MixtureDiscreteEulerSolver(model=Probabilities(model), path=MixtureDiscreteProbPath(
        PolynomialConvexScheduler(n=1)), vocabulary_size=vocabulary)
    state = solver.sample(x_init=source, step_size=None, time_grid=torch.linspace(0, 1, nfe + 1))
    return state.view(n, 1, 28, 28).float()

