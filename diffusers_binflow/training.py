"""One training step's loss for a binary flow model, shared by the training scripts and the benchmarks."""

from dataclasses import dataclass

import torch

from .bits import bits_to_signal
from .flow import interpolate
from .losses import binary_flow_loss
from .timestep_sampling import sample_sigmas


@dataclass
class FlowLossConfig:
    """How a batch becomes a loss: the recipe (prediction and loss spaces, sigma sampling, weighting)."""

    prediction_type: str = "sample"
    loss_space: str = "x"
    loss_type: str = "mse"
    timestep_sampling: str = "uniform"
    logit_mean: float = 0.0
    logit_std: float = 1.0
    v_clamp: float | None = None
    weighting: object = None
    bit_scale: float = 1.0
    num_train_timesteps: int = 1000


@dataclass
class FlowLossOutput:
    loss: torch.Tensor  # scalar, what the optimiser sees
    per_sample_loss: torch.Tensor  # (B,), detached
    sigmas: torch.Tensor  # (B,)
    model_output: torch.Tensor  # keeps the graph, for output-gradient diagnostics


def flow_matching_loss(model, bits: torch.Tensor, config: FlowLossConfig, class_labels=None,
                       generator: torch.Generator | None = None) -> FlowLossOutput:
    """Noise `bits` at sampled sigmas, run ``model(x_sigma, sigma * num_train_timesteps[, class_labels])`` and
    compute `binary_flow_loss`. Randomness (sigmas, noise) comes from `generator`, for exact resumption."""
    sigmas = sample_sigmas(bits.shape[0], config.timestep_sampling, config.logit_mean, config.logit_std,
                           generator=generator, device=bits.device)
    noise = torch.randn(bits.shape, generator=generator, device=bits.device)
    noisy = interpolate(bits_to_signal(bits, config.bit_scale), noise, sigmas)
    timesteps = sigmas * config.num_train_timesteps
    kwargs = {} if class_labels is None else {"class_labels": class_labels}
    model_output = model(noisy, timesteps, **kwargs, return_dict=False)[0]
    elementwise = binary_flow_loss(model_output, bits, noisy, sigmas, prediction_type=config.prediction_type,
                                   loss_space=config.loss_space, loss_type=config.loss_type, v_clamp=config.v_clamp,
                                   bit_scale=config.bit_scale, weighting=config.weighting, reduction="none")
    return FlowLossOutput(loss=elementwise.mean(), per_sample_loss=elementwise.detach().flatten(1).mean(1),
                          sigmas=sigmas, model_output=model_output)
