"""One training step's loss for a binary flow model, and the recipe options, shared by the training scripts and
the benchmarks."""

import argparse
from dataclasses import dataclass, fields

import torch

from .bits import bits_to_signal
from .flow import PREDICTION_TYPES, interpolate
from .losses import LOSS_SPACES, LOSS_TYPES, binary_flow_loss, inverse_square_weight
from .timestep_sampling import SIGMA_SAMPLERS, sample_sigmas


@dataclass
class FlowLossConfig:
    """How a batch becomes a loss: the recipe (prediction and loss spaces, sigma sampling, weighting).

    The defaults are the library's recipe, chosen by measurement (BENCHMARKS.md, "The default recipe"): an
    x-prediction trained with the aligned x-space MSE, sigma drawn logit-normally with logit(sigma) ~ N(0.8, 0.8)
    (JiT's tilt towards noise; in the paper's t = 1 - sigma, logit(t) ~ N(-0.8, 0.8)), no weighting. On binarized
    digits this matched the JiT recipe and beat the paper's uniform sigma by far, with bounded gradients.
    `weighting_max` multiplies each sample's loss by ``min(sigma**-2, weighting_max)`` (`inverse_square_weight`).
    """

    prediction_type: str = "sample"
    loss_space: str = "x"
    loss_type: str = "mse"
    timestep_sampling: str = "logit_normal"
    logit_mean: float = 0.8
    logit_std: float = 0.8
    v_clamp: float | None = None
    weighting_max: float | None = None
    bit_scale: float = 1.0
    num_train_timesteps: int = 1000

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "FlowLossConfig":
        """The recipe from the options `add_recipe_arguments` declared (others keep their defaults)."""
        return cls(**{f.name: getattr(args, f.name) for f in fields(cls) if hasattr(args, f.name)})


RECIPE_OPTIONS = ("prediction_type", "loss_space", "loss_type", "timestep_sampling", "logit_mean", "logit_std",
                  "v_clamp", "weighting_max", "bit_scale")


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
    group.add_argument("--v_clamp", type=float, default=base["v_clamp"],
                       help="Floor of sigma in the v-loss (JiT: 0.05).")
    group.add_argument("--weighting_max", type=float, default=base["weighting_max"],
                       help="Weight the loss by min(sigma^-2, this) (a bounded, aligned form of JiT's clamp).")
    group.add_argument("--bit_scale", type=float, default=base["bit_scale"])


@dataclass
class FlowLossOutput:
    loss: torch.Tensor  # scalar, what the optimiser sees
    per_sample_loss: torch.Tensor  # (B,), detached
    sigmas: torch.Tensor  # (B,)
    model_output: torch.Tensor  # keeps the graph, for output-gradient diagnostics


def flow_matching_loss(model, bits: torch.Tensor, config: FlowLossConfig, class_labels=None,
                       generator: torch.Generator | None = None, model_kwargs: dict | None = None) -> FlowLossOutput:
    """Noise `bits` at sampled sigmas, run ``model(x_sigma, sigma * num_train_timesteps[, class_labels],
    **model_kwargs)`` and compute `binary_flow_loss`. Randomness (sigmas, noise) comes from `generator`, for exact
    resumption; `model_kwargs` carries other conditioning (e.g. the channel of a MIMO denoiser)."""
    sigmas = sample_sigmas(bits.shape[0], config.timestep_sampling, config.logit_mean, config.logit_std,
                           generator=generator, device=bits.device)
    noise = torch.randn(bits.shape, generator=generator, device=bits.device)
    noisy = interpolate(bits_to_signal(bits, config.bit_scale), noise, sigmas)
    timesteps = sigmas * config.num_train_timesteps
    kwargs = {} if class_labels is None else {"class_labels": class_labels}
    kwargs.update(model_kwargs or {})
    model_output = model(noisy, timesteps, **kwargs, return_dict=False)[0]
    elementwise = binary_flow_loss(model_output, bits, noisy, sigmas, prediction_type=config.prediction_type,
                                   loss_space=config.loss_space, loss_type=config.loss_type, v_clamp=config.v_clamp,
                                   bit_scale=config.bit_scale, reduction="none",
                                   weighting=None if config.weighting_max is None else
                                   inverse_square_weight(config.weighting_max))
    return FlowLossOutput(loss=elementwise.mean(), per_sample_loss=elementwise.detach().flatten(1).mean(1),
                          sigmas=sigmas, model_output=model_output)
