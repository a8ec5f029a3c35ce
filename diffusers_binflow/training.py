"""One training step's loss for a binary flow model, and the recipe options, shared by the training scripts and
the benchmarks."""

import argparse
from dataclasses import dataclass, fields

import torch

from .bits import bits_to_signal
from .flow import (
    MAX_LIKELIHOOD_LOGIT,
    PREDICTION_TYPES,
    interpolate,
    predict_x0,
    self_conditioned_input,
)
from .losses import LOSS_SPACES, LOSS_TYPES, binary_flow_loss, inverse_square_weight
from .timestep_sampling import SIGMA_SAMPLERS, sample_sigmas


@dataclass
class FlowLossConfig:
    """How a batch becomes a loss: the recipe (prediction and loss spaces, sigma sampling, weighting).

    The defaults are the plain aligned recipe for any denoiser: an x-prediction trained with the x-space MSE, sigma
    drawn logit-normally with logit(sigma) ~ N(0.8, 0.8) (JiT's tilt towards noise; in the paper's t = 1 - sigma,
    logit(t) ~ N(-0.8, 0.8)), no weighting; on binarized digits it matched the JiT recipe and beat the paper's
    uniform sigma by far. The scripts' defaults depend on the data: `IMAGE_RECIPE` for images, `SEQUENCE_RECIPE` for
    token sequences, logits with cross-entropy under uniform sigma for MIMO bits (BENCHMARKS.md, "The default
    recipe").
    `weighting_max` multiplies each sample's loss by ``min(sigma**-2, weighting_max)`` (`inverse_square_weight`);
    `uniform_fraction` draws that share of the sigmas uniformly instead (`sample_sigmas`), to train the data end.
    `likelihood_cap` caps the likelihood term of a `"likelihood_residual"` output (`flow.likelihood_logits`) in
    training (50: none); sample such a model with at most that cap.
    `self_conditioning` trains a denoiser that also sees its previous estimate (`self_conditioned_input`; Bit
    Diffusion): on a share `self_conditioning_probability` of the batches the estimate is its own, made without
    gradient, on the others zeros.
    """

    prediction_type: str = "sample"
    loss_space: str = "x"
    loss_type: str = "mse"
    timestep_sampling: str = "logit_normal"
    logit_mean: float = 0.8
    logit_std: float = 0.8
    uniform_fraction: float = 0.0
    v_clamp: float | None = None
    weighting_max: float | None = None
    bit_scale: float = 1.0
    likelihood_cap: float = MAX_LIKELIHOOD_LOGIT
    self_conditioning: bool = False
    self_conditioning_probability: float = 0.5  # Bit Diffusion's
    num_train_timesteps: int = 1000

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "FlowLossConfig":
        """The recipe from the options `add_recipe_arguments` declared (others keep their defaults)."""
        return cls(**{f.name: getattr(args, f.name) for f in fields(cls) if hasattr(args, f.name)})


# What the image script trains and samples by default, chosen on binarized digits (BENCHMARKS.md, "The default
# recipe" and "Seventeenth stop"): a likelihood-residual output trained with cross-entropy under the logit-normal
# sigma. The saved scheduler follows the model's own flow (the likelihood term in full) and caps that term at 1 nat at
# the last evaluation only, the one the bits are read from (`BinaryFlowMatchScheduler(final_likelihood_cap=...)`),
# so that the network can veto the isolated pixels a sampler leaves behind. Against a cap of 2 nats at every step
# (the default before) it is the better sampler at 4 and 64 steps and level in between. It integrates with the
# multistep solver (second order at one model call per step; "Twenty-first stop"), which lowered FD against Euler's
# steps at every NFE from 4 to 64 in the mean of three seeds, most at few steps.
IMAGE_RECIPE = FlowLossConfig(prediction_type="likelihood_residual", loss_type="bce")
IMAGE_SAMPLING_FINAL_LIKELIHOOD_CAP = 1.0
IMAGE_SAMPLING_SOLVER = "multistep"
# What the sequence script trains by default, chosen on a+b=c (BENCHMARKS.md, "Issue 14"): per-bit logits with the
# cross-entropy, sigma drawn logit-normally around 0.5, logit(sigma) ~ N(0, 0.5). That is where a token's bits are
# decided from the other positions; uniform sigma spends most of each batch where the answer is already fixed or
# still pure noise, and its valid fraction stayed near 0.3.
SEQUENCE_RECIPE = FlowLossConfig(prediction_type="logits", loss_type="bce", logit_mean=0.0, logit_std=0.5)
# The sampler the sequence script saves (BENCHMARKS.md, "Eighth stop" and "Eleventh stop"): Euler with the
# stochastic corrector at s_churn 64 (gamma = sqrt(2) - 1 inside sigma in [0.05, 0.7] up to 154 steps), which keeps
# improving with steps where the deterministic sampler levels off, on a grid shifted towards the data,
# sigma -> 0.25 sigma / (1 - 0.75 sigma). On the uniform grid the corrector cost validity below 16 steps; the shifted
# grid spends the first steps where tokens are still open and was the better sampler at 4 and 8 steps on a+b=c,
# brackets and Sudoku.
SEQUENCE_SAMPLING_S_CHURN = 64.0
SEQUENCE_SAMPLING_SHIFT = 0.25

RECIPE_OPTIONS = ("prediction_type", "loss_space", "loss_type", "timestep_sampling", "logit_mean", "logit_std",
                  "uniform_fraction", "v_clamp", "weighting_max", "bit_scale", "likelihood_cap",
                  "self_conditioning", "self_conditioning_probability")


def add_recipe_arguments(group, prediction_types=tuple(p for p in PREDICTION_TYPES if p != "epsilon"), **defaults):
    """Declare ``--<option>`` for each of `RECIPE_OPTIONS` on an argparse parser or group. Defaults are
    `FlowLossConfig`'s unless overridden in `defaults` (e.g. ``prediction_type="logits", loss_type="bce"``)."""
    base = {**{f.name: f.default for f in fields(FlowLossConfig)}, **defaults}
    group.add_argument("--prediction_type", default=base["prediction_type"], choices=list(prediction_types))
    group.add_argument("--loss_space", default=base["loss_space"], choices=LOSS_SPACES)
    group.add_argument("--loss_type", default=base["loss_type"], choices=LOSS_TYPES)
    group.add_argument("--timestep_sampling", default=base["timestep_sampling"], choices=SIGMA_SAMPLERS)
    group.add_argument("--logit_mean", type=float, default=base["logit_mean"],
                       help="Mean of logit(sigma) for logit_normal (sigma = 1 is noise).")
    group.add_argument("--logit_std", type=float, default=base["logit_std"], help="Std of logit(sigma).")
    group.add_argument("--uniform_fraction", type=float, default=base["uniform_fraction"],
                       help="Share of the sigmas drawn uniformly instead (a mixture that also trains the data end).")
    group.add_argument("--v_clamp", type=float, default=base["v_clamp"],
                       help="Floor of sigma in the v-loss (JiT: 0.05).")
    group.add_argument("--weighting_max", type=float, default=base["weighting_max"],
                       help="Weight the loss by min(sigma^-2, this) (a bounded, aligned form of JiT's clamp).")
    group.add_argument("--bit_scale", type=float, default=base["bit_scale"])
    group.add_argument("--likelihood_cap", type=float, default=base["likelihood_cap"],
                       help="For --prediction_type likelihood_residual: cap (nats) on the likelihood term in "
                            "training (50 = none); the saved scheduler's too unless --sampling_likelihood_cap.")
    group.add_argument("--self_conditioning", action=argparse.BooleanOptionalAction, default=base["self_conditioning"],
                       help="Self-conditioning (Bit Diffusion): the denoiser takes twice the input features and also "
                            "sees its previous estimate of the clean bits.")
    group.add_argument("--self_conditioning_probability", type=float, default=base["self_conditioning_probability"],
                       help="Share of the batches whose estimate comes from a first, stop-gradient pass (else zeros).")


@dataclass
class FlowLossOutput:
    loss: torch.Tensor  # scalar, what the optimiser sees
    per_sample_loss: torch.Tensor  # (B,), detached
    sigmas: torch.Tensor  # (B,)
    model_output: torch.Tensor  # keeps the graph, for output-gradient diagnostics


def flow_matching_loss(model, bits: torch.Tensor, config: FlowLossConfig, class_labels=None,
                       generator: torch.Generator | None = None, model_kwargs: dict | None = None,
                       self_conditioning_generator: torch.Generator | None = None) -> FlowLossOutput:
    """Noise `bits` at sampled sigmas, run ``model(x_sigma, sigma * num_train_timesteps[, class_labels],
    **model_kwargs)`` and compute `binary_flow_loss`. Randomness (sigmas, noise, the self-conditioning coin) comes
    from `generator`, for exact resumption; `model_kwargs` carries other conditioning (e.g. the channel of a MIMO
    denoiser). With `config.self_conditioning` the model sees ``self_conditioned_input(x_sigma, x_hat)``: with
    probability `self_conditioning_probability` (one coin per batch) ``x_hat`` is the model's own estimate from a
    first pass on zeros, without gradient, else zeros. The coin comes from `self_conditioning_generator` when given:
    in a data-parallel run every process must make the same passes (each forward through a DistributedDataParallel
    or FSDP wrapper is a collective), so the scripts give one that is the same on every process."""
    sigmas = sample_sigmas(bits.shape[0], config.timestep_sampling, config.logit_mean, config.logit_std,
                           generator=generator, device=bits.device, uniform_fraction=config.uniform_fraction)
    noise = torch.randn(bits.shape, generator=generator, device=bits.device)
    noisy = interpolate(bits_to_signal(bits, config.bit_scale), noise, sigmas)
    timesteps = sigmas * config.num_train_timesteps
    kwargs = {} if class_labels is None else {"class_labels": class_labels}
    kwargs.update(model_kwargs or {})
    model_input = noisy
    if config.self_conditioning:
        x_hat = None
        # Drawn only here, so runs without self-conditioning keep their random stream.
        coin = generator if self_conditioning_generator is None else self_conditioning_generator
        if torch.rand((), generator=coin, device=bits.device).item() < config.self_conditioning_probability:
            with torch.no_grad():
                first = model(self_conditioned_input(noisy), timesteps, **kwargs, return_dict=False)[0]
                x_hat = predict_x0(first, noisy, sigmas, config.prediction_type, config.bit_scale,
                                   config.likelihood_cap)
        model_input = self_conditioned_input(noisy, x_hat)
    model_output = model(model_input, timesteps, **kwargs, return_dict=False)[0]
    elementwise = binary_flow_loss(model_output, bits, noisy, sigmas, prediction_type=config.prediction_type,
                                   loss_space=config.loss_space, loss_type=config.loss_type, v_clamp=config.v_clamp,
                                   bit_scale=config.bit_scale, likelihood_cap=config.likelihood_cap, reduction="none",
                                   weighting=None if config.weighting_max is None else
                                   inverse_square_weight(config.weighting_max))
    return FlowLossOutput(loss=elementwise.mean(), per_sample_loss=elementwise.detach().flatten(1).mean(1),
                          sigmas=sigmas, model_output=model_output)
