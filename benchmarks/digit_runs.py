"""What the digit benchmarks share: one denoiser body, one training recipe and one sampler per method, runs cached.

Every method trains the same UNet2DModel body (`BODY`, 267k parameters at 28x28) on the bundled training digits
(binarized at grey level 128, unconditional) with the same optimiser, steps, batch and data order per seed; only
the corruption, the loss and the sampler differ. Training (`training_loop.train_loop`): Adam (betas 0.9 / 0.99),
lr 1e-3 with 50 warm-up steps and cosine decay, gradients clipped at 1, EMA weights (decay 0.999 with warm-up).

- ``flow``: binary flow matching with this library (`flow_matching_loss`, any recipe of `FlowLossConfig`), sampled
  with `BinaryFlowPipeline` + `BinaryFlowMatchScheduler` (Euler) or, for velocity models, diffusers'
  `FlowMatchEulerDiscreteScheduler` (rectified flow on analog bits).
- ``uniform_flip``, ``dfm_uniform``, ``dfm_mask``: the discrete peers of `discrete_peers.py` (uniform-flip
  diffusion with diffusers' `DiscreteDDIMScheduler`; Meta's discrete flow matching from a uniform or a mask source).

Time enters the body in one convention for all methods: ``timestep = 1000 * noise level`` (sigma for the flows, t
for the uniform flip, 1 - t for Meta's paths, whose t = 1 is data). Inputs are the +-1 signal of the current state
(one channel; the mask method adds a mask channel and shows masked bits as 0). Discrete methods output one logit
per bit (K = 2 logits ``[0, l]``).

A finished run is saved under ``<cache_dir>/<method key>/seed<k>-steps<n>-batch<b>/`` (UNet weights + run.json)
and reused by any benchmark that asks for the same (method, seed, steps, batch).
"""

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from diffusers import FlowMatchEulerDiscreteScheduler, UNet2DModel

from diffusers_binflow import BinaryFlowMatchScheduler, BinaryFlowPipeline
from diffusers_binflow.diagnostics import per_sigma_bin_stats
from diffusers_binflow.flow import MAX_LIKELIHOOD_LOGIT
from diffusers_binflow.metrics.digits import digit_bits
from diffusers_binflow.training import (
    IMAGE_SAMPLING_FINAL_LIKELIHOOD_CAP,
    IMAGE_SAMPLING_SOLVER,
    FlowLossConfig,
    flow_matching_loss,
)

from .discrete_peers import input_channels, peer_loss, sample_peer
from .training_loop import OutputGradients, train_loop

BODY = dict(block_out_channels=(16, 32, 32), layers_per_block=1, norm_num_groups=8,
            down_block_types=("DownBlock2D",) * 3, up_block_types=("UpBlock2D",) * 3)
LEARNING_RATE, WARMUP_STEPS, MAX_GRAD_NORM, EMA_DECAY = 1e-3, 50, 1.0, 0.999
JIT_LOGIT_MEAN, JIT_LOGIT_STD, JIT_CLAMP = 0.8, 0.8, 0.05  # JiT's t ~ logit-normal(-0.8, 0.8) in sigma = 1 - t
GRAD_WINDOW = 200  # last steps whose output-gradient norms are recorded


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
    uniform_fraction: float = 0.0  # share of sigmas drawn uniformly instead (FlowLossConfig.uniform_fraction)
    v_clamp: float | None = None
    weighting_max: float | None = None
    self_conditioning: bool = False  # FlowLossConfig's; the body then takes the previous estimate as a 2nd channel
    likelihood_cap: float = MAX_LIKELIHOOD_LOGIT  # FlowLossConfig's (likelihood residual)
    sampling_likelihood_cap: float | None = None  # the sampler's cap on that term; None: the training cap
    sampling_final_likelihood_cap: float | None = None  # its cap at the last step only; None: the same cap
    sampler: str = "binary_flow"  # binary_flow | flow_match_euler | discrete_ddim | dfm_euler
    solver: str = "euler"  # BinaryFlowMatchScheduler's, for the binary_flow sampler
    trained_as: str | None = None  # the key of a method with the same training (only the sampler differs)

    def loss_config(self) -> FlowLossConfig:
        logit_normal = self.timestep_sampling == "logit_normal"
        logit = dict(logit_mean=JIT_LOGIT_MEAN, logit_std=JIT_LOGIT_STD) if logit_normal else {}
        return FlowLossConfig(prediction_type=self.prediction_type, loss_space=self.loss_space,
                              loss_type=self.loss_type, timestep_sampling=self.timestep_sampling,
                              uniform_fraction=self.uniform_fraction, v_clamp=self.v_clamp,
                              weighting_max=self.weighting_max, likelihood_cap=self.likelihood_cap,
                              self_conditioning=self.self_conditioning, **logit)

    @property
    def sampler_likelihood_cap(self) -> float:
        """The cap its sampler puts on a likelihood-residual output's likelihood term."""
        return self.likelihood_cap if self.sampling_likelihood_cap is None else self.sampling_likelihood_cap

    @property
    def in_channels(self) -> int:
        return 2 if self.self_conditioning else input_channels(self.family, 1)


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
    # Data-end candidates (issue 13): sigmas that also cover the data end, and logits exact there by construction.
    Method("x-mse-ln-mix", "x-pred + x-MSE, logit-normal + 20% uniform", timestep_sampling="logit_normal",
           uniform_fraction=0.2),
    Method("lr-bce-ln", "likelihood residual + x-BCE, logit-normal", prediction_type="likelihood_residual",
           loss_type="bce", timestep_sampling="logit_normal"),
    Method("lr-bce-mix", "likelihood residual + x-BCE, logit-normal + 20% uniform",
           prediction_type="likelihood_residual", loss_type="bce", timestep_sampling="logit_normal",
           uniform_fraction=0.2),
    Method("lr2-bce-ln", "likelihood residual capped at 2 nats (trained so) + x-BCE, logit-normal",
           prediction_type="likelihood_residual", loss_type="bce", timestep_sampling="logit_normal",
           likelihood_cap=2.0),
    Method("lr-bce-ln-sc", "likelihood residual + x-BCE, logit-normal, self-conditioning; sampled with the "
           "likelihood capped at 2", prediction_type="likelihood_residual", loss_type="bce",
           timestep_sampling="logit_normal", self_conditioning=True, sampling_likelihood_cap=2.0),
    Method("x-mse-ln-sc", "x-pred + x-MSE, logit-normal, self-conditioning", timestep_sampling="logit_normal",
           self_conditioning=True),
    Method("lr-bce-ln-cap2", "likelihood residual + x-BCE, logit-normal; sampled with the likelihood capped at 2 "
           "(the image default up to the sixteenth stop)", prediction_type="likelihood_residual", loss_type="bce",
           timestep_sampling="logit_normal", sampling_likelihood_cap=2.0, trained_as="lr-bce-ln"),
    # The few-step sampler of the same model (issue 13, sixteenth stop): 1 nat at the last step, the read-out.
    Method("lr-bce-ln-final1", "likelihood residual + x-BCE, logit-normal; sampled with the likelihood capped at 2, "
           "at 1 on the last step", prediction_type="likelihood_residual", loss_type="bce",
           timestep_sampling="logit_normal", sampling_likelihood_cap=2.0, sampling_final_likelihood_cap=1.0,
           trained_as="lr-bce-ln"),
    # The image default's sampler up to the twentieth stop: the model's own flow, and 1 nat at the last step.
    Method("lr-bce-ln-full-final1", "likelihood residual + x-BCE, logit-normal; sampled with the likelihood in "
           "full, capped at 1 on the last step", prediction_type="likelihood_residual",
           loss_type="bce", timestep_sampling="logit_normal",
           sampling_final_likelihood_cap=IMAGE_SAMPLING_FINAL_LIKELIHOOD_CAP, trained_as="lr-bce-ln"),
    # The image default (twenty-first stop): the same, integrated with the multistep solver.
    Method("lr-bce-ln-multistep", "likelihood residual + x-BCE, logit-normal; sampled with the likelihood in full, "
           "capped at 1 on the last step, multistep solver (the image default)",
           prediction_type="likelihood_residual", loss_type="bce", timestep_sampling="logit_normal",
           sampling_final_likelihood_cap=IMAGE_SAMPLING_FINAL_LIKELIHOOD_CAP, solver=IMAGE_SAMPLING_SOLVER,
           trained_as="lr-bce-ln"),
    # JiT's bounded weight (its v-loss clamp in x-space) on the likelihood residual: the image default's training
    # plus the weight that keeps JiT's recipe improving with NFE at 2000 steps (issue 13, seventh stop).
    Method("lr-bce-w-ln", "likelihood residual + x-BCE x min(sigma^-2, 400), logit-normal",
           prediction_type="likelihood_residual", loss_type="bce", timestep_sampling="logit_normal",
           weighting_max=W_MAX),
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

IMAGE_DEFAULT = "lr-bce-ln-multistep"  # the image script's recipe and saved sampler (training.IMAGE_RECIPE)


@dataclass
class Run:
    method: Method
    seed: int
    model: UNet2DModel  # EMA weights, eval mode
    record: dict  # final_loss, diverged, train_seconds, output-gradient norms per sigma bin, ...


def build_body(in_channels: int = 1) -> UNet2DModel:
    return UNet2DModel(sample_size=28, in_channels=in_channels, out_channels=1, **BODY)


# ------------------------------------------------------------------------------------------------------ training

def method_loss(method: Method, model, bits: torch.Tensor, generator: torch.Generator):
    if method.family == "flow":
        out = flow_matching_loss(model, bits, method.loss_config(), generator=generator)
        return out.loss, out.sigmas, out.model_output
    return peer_loss(method.family, model, bits, generator)


def run_dir(cache_dir: Path, method: Method, seed: int, steps: int, batch_size: int) -> Path:
    return Path(cache_dir) / (method.trained_as or method.key) / f"seed{seed}-steps{steps}-batch{batch_size}"


def train(method: Method, seed: int, steps: int, batch_size: int, cache_dir: Path | None = None) -> Run:
    """Train (or load the cached run of) `method` for `steps` Adam steps of `batch_size` training digits.

    A non-finite loss stops the run and marks it diverged (its model is then the last finite EMA weights)."""
    folder = None if cache_dir is None else run_dir(cache_dir, method, seed, steps, batch_size)
    if folder is not None and (folder / "run.json").is_file():
        record = json.loads((folder / "run.json").read_text())
        return Run(method, seed, UNet2DModel.from_pretrained(folder).eval(), record)

    data = digit_bits("train")
    gradients = OutputGradients(steps, GRAD_WINDOW, batch_size)
    # The seed also drives Meta's path sampling, which draws from the global generator.
    training = train_loop(lambda: build_body(method.in_channels),
                          lambda model, bits, generator: method_loss(method, model, bits, generator),
                          lambda generator: data[torch.randint(len(data), (batch_size,), generator=generator)], steps,
                          seed=seed, lr=LEARNING_RATE, betas=(0.9, 0.99), cosine_decay=True, warmup_steps=WARMUP_STEPS,
                          max_grad_norm=MAX_GRAD_NORM, ema_decay=EMA_DECAY, observe=gradients)
    model, losses = training.model, training.losses
    record = {
        "method": asdict(method), "seed": seed, "steps": steps, "batch_size": batch_size,
        "steps_done": len(losses), "diverged": training.diverged,
        "final_loss": sum(losses[-50:]) / max(1, len(losses[-50:])) if losses else None,
        "train_seconds": training.train_seconds,
        "parameters": sum(p.numel() for p in model.parameters()),
        "output_grad_norm_per_sigma_bin": per_sigma_bin_stats(gradients.sigmas, gradients.norms, percentiles=(50, 99))
        if gradients.norm_batches else None,
    }
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
    if method.sampler in ("binary_flow", "flow_match_euler"):
        pipeline = (flow_pipeline(run, FlowMatchEulerDiscreteScheduler()) if method.sampler == "flow_match_euler" else
                    flow_pipeline(run, solver=method.solver))
        return pipeline(batch_size=n, num_inference_steps=steps_for(nfe, solver=method.solver), output_type="pt",
                        generator=torch.Generator().manual_seed(seed)).images
    return sample_peer(method.family, model, (1, 28, 28), n, nfe, seed)


def flow_pipeline(run: Run, scheduler=None, **scheduler_options) -> BinaryFlowPipeline:
    """A `BinaryFlowPipeline` (progress bar off) for a flow run: its body, with `scheduler` or a
    `BinaryFlowMatchScheduler` of the run's prediction type and likelihood caps, and `scheduler_options`."""
    method = run.method
    scheduler = scheduler or BinaryFlowMatchScheduler(
        prediction_type=method.prediction_type,
        **{"likelihood_cap": method.sampler_likelihood_cap,
           "final_likelihood_cap": method.sampling_final_likelihood_cap, **scheduler_options})
    pipeline = BinaryFlowPipeline(unet=run.model, scheduler=scheduler, prediction_type=method.prediction_type,
                                  self_conditioning=method.self_conditioning)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def model_evaluations(steps: int, **scheduler_options) -> int:
    """Network evaluations of `steps` steps of a `BinaryFlowMatchScheduler` with `scheduler_options` (Heun's N steps
    take 2N - 1, a Heun first step one more than Euler's N), counted on the scheduler's own grid."""
    scheduler = BinaryFlowMatchScheduler(**scheduler_options)
    scheduler.set_timesteps(steps)
    return len(scheduler.timesteps)


def steps_for(nfe: int, **scheduler_options) -> int:
    """The most steps whose network evaluations fit in `nfe`."""
    return max(n for n in range(1, nfe + 1) if model_evaluations(n, **scheduler_options) <= nfe)
