"""The binary flow path and the conversions between what a network predicts and what the ODE needs.

Convention (diffusers'): ``sigma`` in [0, 1], ``sigma = 1`` is pure noise and ``sigma = 0`` is data,

    x_sigma = (1 - sigma) * x + sigma * eps,        eps ~ N(0, I),        x = bit_scale * (2b - 1),

and model timesteps are ``sigma * num_train_timesteps``. The paper (arXiv 2602.10420) writes ``t = 1 - sigma``.
Along the path ``dx_sigma / dsigma = eps - x`` (diffusers' flow-matching "velocity"), so a prediction ``x_hat`` of
the clean signal implies the velocity ``v_hat = (x_sigma - x_hat) / sigma``.

What a network may predict (``prediction_type``):

- ``"sample"``: ``x_hat`` itself;
- ``"logits"``: per-bit logits ``l`` with ``x_hat = bit_scale * tanh(l / 2)`` (i.e. ``2 * sigmoid(l) - 1``, scaled);
- ``"likelihood_residual"``: a correction ``r`` to each bit's log-odds given ``x_sigma`` alone, so the logits are
  ``likelihood_logits(x_sigma, sigma) + r``, the likelihood term capped at +-``likelihood_cap`` nats. With the
  default cap (50, i.e. none) the data end is exact by construction, whatever the network does; a small cap lets
  the network veto a bit its spatial prior rejects (a sampler's off-manifold mistakes);
- ``"velocity"``: ``v = eps - x``, so ``x_hat = x_sigma - sigma * v`` (diffusers calls it ``"flow_prediction"``);
- ``"epsilon"``: ``eps``, so ``x_hat = (x_sigma - sigma * eps) / (1 - sigma)``.
"""

import torch

from .utils import check_choice


PREDICTION_TYPES = ("sample", "logits", "likelihood_residual", "velocity", "epsilon")
# diffusers' names for the same targets (its multistep schedulers call the flow-matching velocity "flow_prediction").
PREDICTION_TYPE_ALIASES = {"flow_prediction": "velocity"}
# Predictions that live in the signal (x) space: the paper's "x-prediction".
X_PREDICTION_TYPES = ("sample", "logits", "likelihood_residual")
# Predictions read as per-bit logits (`bit_logits`), which the cross-entropy loss needs.
LOGIT_PREDICTION_TYPES = ("logits", "likelihood_residual")

# An epsilon prediction says nothing about x at sigma = 1; its x_hat divides by (1 - sigma), floored here.
MIN_SIGNAL_FRACTION = 1e-3
# Likelihood log-odds are capped at most here: sigmoid(50) is 1 in float32, and the cap keeps x_sigma / sigma^2
# finite (an unbounded term would make the cross-entropy inf - inf = NaN as sigma -> 0).
MAX_LIKELIHOOD_LOGIT = 50.0


def check_prediction_type(prediction_type: str) -> str:
    """Return `prediction_type` under its name here (diffusers' `"flow_prediction"` is `"velocity"`), or raise."""
    prediction_type = PREDICTION_TYPE_ALIASES.get(prediction_type, prediction_type)
    check_choice("prediction_type", prediction_type, PREDICTION_TYPES)
    return prediction_type


def expand_sigma(sigma, like: torch.Tensor) -> torch.Tensor:
    """Return `sigma` (a float, a 0-d tensor or one value per sample, shape (B,)) shaped to broadcast against `like`."""
    sigma = torch.as_tensor(sigma, device=like.device, dtype=like.dtype)
    if sigma.ndim == 0 or (sigma.ndim == like.ndim and sigma.shape[1:] == (1,) * (like.ndim - 1)):
        return sigma
    if sigma.ndim != 1 or sigma.shape[0] != like.shape[0]:
        raise ValueError(
            f"`sigmas` must be a scalar or hold one value per sample (shape ({like.shape[0]},)), got {tuple(sigma.shape)}."
        )
    return sigma.view(-1, *([1] * (like.ndim - 1)))


def interpolate(clean: torch.Tensor, noise: torch.Tensor, sigma) -> torch.Tensor:
    """The point of the path at `sigma`: ``(1 - sigma) * clean + sigma * noise``."""
    sigma = expand_sigma(sigma, clean)
    return (1 - sigma) * clean + sigma * noise


def renoise(sample: torch.Tensor, noise: torch.Tensor, sigma, sigma_up) -> torch.Tensor:
    """Carry a path point at `sigma` to the path at the noisier `sigma_up` with fresh `noise` (the path's forward
    kernel): ``a * sample + sqrt(sigma_up**2 - (a * sigma)**2) * noise`` with ``a = (1 - sigma_up) / (1 - sigma)``,
    which scales the clean component to ``1 - sigma_up`` and tops the noise up to a standard deviation of
    `sigma_up`."""
    sigma, sigma_up = expand_sigma(sigma, sample), expand_sigma(sigma_up, sample)
    scale = (1 - sigma_up) / (1 - sigma)
    return scale * sample + (sigma_up**2 - (scale * sigma) ** 2).clamp(min=0).sqrt() * noise


def likelihood_logits(sample: torch.Tensor, sigma, bit_scale: float = 1.0,
                      likelihood_cap: float = MAX_LIKELIHOOD_LOGIT) -> torch.Tensor:
    """Each bit's log-odds given its own coordinate of ``x_sigma`` alone (equal priors): the path's two Gaussians,
    means ``+-(1 - sigma) * bit_scale`` and std ``sigma``, give ``2 * bit_scale * (1 - sigma) * x_sigma / sigma**2``,
    capped at +-`likelihood_cap` (at most `MAX_LIKELIHOOD_LOGIT`). `sigma` must be positive."""
    cap = min(likelihood_cap, MAX_LIKELIHOOD_LOGIT)
    sigma = expand_sigma(sigma, sample)
    logits = 2 * bit_scale * (1 - sigma) * sample / sigma**2
    return logits.nan_to_num(posinf=cap, neginf=-cap).clamp(-cap, cap)


def bit_logits(model_output: torch.Tensor, sample: torch.Tensor, sigma, prediction_type: str,
               bit_scale: float = 1.0, likelihood_cap: float = MAX_LIKELIHOOD_LOGIT) -> torch.Tensor:
    """The per-bit logits of a logit prediction (`LOGIT_PREDICTION_TYPES`): the output itself, or the likelihood
    log-odds (capped at `likelihood_cap`) plus the output's correction."""
    prediction_type = check_prediction_type(prediction_type)
    if prediction_type not in LOGIT_PREDICTION_TYPES:
        raise ValueError(f"prediction_type={prediction_type!r} has no per-bit logits; use one of "
                         f"{LOGIT_PREDICTION_TYPES}.")
    if prediction_type == "logits":
        return model_output
    return likelihood_logits(sample, sigma, bit_scale, likelihood_cap) + model_output


def predict_x0(
    model_output: torch.Tensor, sample: torch.Tensor, sigma, prediction_type: str, bit_scale: float = 1.0,
    likelihood_cap: float = MAX_LIKELIHOOD_LOGIT,
) -> torch.Tensor:
    """The clean-signal estimate ``x_hat`` implied by `model_output` for the noisy `sample` at `sigma`
    (`likelihood_cap`: see `likelihood_logits`; only `"likelihood_residual"` reads it)."""
    prediction_type = check_prediction_type(prediction_type)
    if prediction_type == "sample":
        return model_output
    if prediction_type in LOGIT_PREDICTION_TYPES:
        logits = bit_logits(model_output, sample, sigma, prediction_type, bit_scale, likelihood_cap)
        return bit_scale * torch.tanh(logits / 2)
    sigma = expand_sigma(sigma, sample)
    if prediction_type == "velocity":
        return sample - sigma * model_output
    return (sample - sigma * model_output) / (1 - sigma).clamp_min(MIN_SIGNAL_FRACTION)  # epsilon


def velocity_from_x0(sample: torch.Tensor, x0: torch.Tensor, sigma) -> torch.Tensor:
    """The velocity ``(x_sigma - x_hat) / sigma`` implied by an estimate `x0`; `sigma` must be positive."""
    return (sample - x0) / expand_sigma(sigma, sample)


def predict_velocity(
    model_output: torch.Tensor, sample: torch.Tensor, sigma, prediction_type: str, bit_scale: float = 1.0,
    likelihood_cap: float = MAX_LIKELIHOOD_LOGIT,
) -> torch.Tensor:
    """The ODE derivative ``dx_sigma / dsigma`` implied by `model_output` at a positive `sigma`."""
    if check_prediction_type(prediction_type) == "velocity":
        return model_output
    x0 = predict_x0(model_output, sample, sigma, prediction_type, bit_scale, likelihood_cap)
    return velocity_from_x0(sample, x0, sigma)


def model_output_from_x0(
    x0: torch.Tensor, sample: torch.Tensor, sigma, prediction_type: str, bit_scale: float = 1.0,
    likelihood_cap: float = MAX_LIKELIHOOD_LOGIT,
) -> torch.Tensor:
    """The output of `prediction_type` that implies the estimate `x0` (the inverse of `predict_x0`; sigma > 0).

    Logits are capped where ``x0`` reaches +-bit_scale (a guided estimate may overshoot it).
    """
    prediction_type = check_prediction_type(prediction_type)
    if prediction_type == "sample":
        return x0
    if prediction_type in LOGIT_PREDICTION_TYPES:
        limit = 1 - torch.finfo(torch.float32).eps
        logits = 2 * torch.atanh((x0 / bit_scale).clamp(-limit, limit))
        if prediction_type == "logits":
            return logits
        return logits - likelihood_logits(sample, sigma, bit_scale, likelihood_cap)
    sigma = expand_sigma(sigma, sample)
    if prediction_type == "velocity":
        return (sample - x0) / sigma
    return (sample - (1 - sigma) * x0) / sigma  # epsilon


def self_conditioned_input(sample: torch.Tensor, x_hat_prev: torch.Tensor | None = None) -> torch.Tensor:
    """The input of a self-conditioned denoiser (Bit Diffusion, Chen et al. 2022): the noisy `sample` with the
    previous estimate of the clean signal, `x_hat_prev` (`predict_x0`'s, in signal space; zeros when there is none),
    appended on the feature axis: dim 1 of images (B, C, H, W), the last dim of sequences (B, L, num_bits) and of
    MIMO bits (B, num_bits). Such a denoiser takes twice the features it outputs."""
    if x_hat_prev is None:
        x_hat_prev = torch.zeros_like(sample)
    elif x_hat_prev.shape != sample.shape:
        raise ValueError(f"The previous estimate has shape {tuple(x_hat_prev.shape)}, the sample "
                         f"{tuple(sample.shape)}: they must match.")
    return torch.cat([sample, x_hat_prev.to(sample.dtype)], dim=1 if sample.ndim == 4 else -1)


def check_finite_estimate(x0: torch.Tensor, step_index: int, sigma) -> None:
    """Raise a `ValueError` naming the step unless the estimate `x0` is finite (a NaN would threshold to bit 0)."""
    if not torch.isfinite(x0).all():
        raise ValueError(
            f"The model's prediction at step {step_index} (sigma = {float(sigma):.4g}) holds NaN or inf: the model "
            "(or its weights) produced non-finite values, or the input to that step was non-finite. No bits are "
            "read off a non-finite prediction."
        )
