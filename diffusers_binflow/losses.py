"""Training losses for binary flow matching, in the space the network predicts in or in velocity space.

With ``x_sigma = (1 - sigma) * x + sigma * eps`` (sigma = 1 is noise; the paper's t = 1 - sigma), an x-prediction
``x_hat`` implies ``v_hat - v = (x - x_hat) / sigma``. A velocity loss on an x-prediction is therefore the x-space
MSE weighted by ``1 / sigma**2``, singular at the data end; the paper's fix is to compute the loss where the
network predicts (MSE on ``x_hat``, or cross-entropy on per-bit logits), whose gradients stay bounded for every
sigma. Any bounded heuristic is an aligned loss with a bounded weight: a v-loss whose divisor is clamped at
``c`` equals the x-loss weighted by ``min(sigma**-2, c**-2)``.
"""

import warnings
from collections.abc import Callable

import torch
import torch.nn.functional as F

from .bits import bits_to_signal, check_binary
from .flow import (
    LOGIT_PREDICTION_TYPES,
    MAX_LIKELIHOOD_LOGIT,
    X_PREDICTION_TYPES,
    bit_logits,
    check_prediction_type,
    expand_sigma,
    predict_x0,
)
from .utils import check_choice, check_positive


LOSS_SPACES = ("x", "v")
LOSS_TYPES = ("mse", "bce")
REDUCTIONS = ("mean", "sum", "none")

# Weight of each (prediction space, loss space) pair on the squared error in the prediction's own space, as a
# formula for messages and as a function of (sigma, v-loss divisor).
_IMPLIED_WEIGHTS = {
    ("x", "x"): ("1", lambda sigma, divisor: torch.ones_like(sigma)),
    ("x", "v"): ("1 / sigma^2", lambda sigma, divisor: divisor**-2),
    ("velocity", "v"): ("1", lambda sigma, divisor: torch.ones_like(sigma)),
    ("velocity", "x"): ("sigma^2", lambda sigma, divisor: sigma**2),
    ("epsilon", "x"): ("sigma^2 / (1 - sigma)^2", lambda sigma, divisor: (sigma / (1 - sigma)) ** 2),
    ("epsilon", "v"): ("1 / (1 - sigma)^2", lambda sigma, divisor: (sigma / divisor / (1 - sigma)) ** 2),
}
_warned_pairs = set()


def _prediction_space(prediction_type: str) -> str:
    return "x" if prediction_type in X_PREDICTION_TYPES else prediction_type


def implied_weight(prediction_type: str, loss_space: str, sigmas, v_clamp: float | None = None) -> torch.Tensor:
    """Weight ``w(sigma)`` with ``loss = w(sigma) * (error in the prediction's own space)**2``.

    It is 1 for the aligned pairs (x-prediction with x-loss, velocity-prediction with v-loss) and ``1 / sigma**2``
    (``min(sigma**-2, v_clamp**-2)`` with a clamp) for x-prediction with v-loss.
    """
    prediction_type = check_prediction_type(prediction_type)
    check_choice("loss_space", loss_space, LOSS_SPACES)
    sigmas = torch.as_tensor(sigmas, dtype=torch.float32)
    _check_sigmas(sigmas, loss_space, v_clamp)
    _, weight = _IMPLIED_WEIGHTS[(_prediction_space(prediction_type), loss_space)]
    return weight(sigmas, _v_divisor(sigmas, v_clamp))


def inverse_square_weight(w_max: float) -> Callable[[torch.Tensor], torch.Tensor]:
    """The bounded weighting ``min(sigma**-2, w_max)``; ``w_max = 1 / c**2`` reproduces a v-loss clamped at ``c``."""
    check_positive("w_max", w_max)
    return lambda sigmas: sigmas.pow(-2).clamp_max(w_max)


def binary_flow_loss(
    model_output: torch.Tensor,
    bits: torch.Tensor,
    noisy_sample: torch.Tensor,
    sigmas: torch.Tensor,
    prediction_type: str = "sample",
    loss_space: str = "x",
    loss_type: str = "mse",
    v_clamp: float | None = None,
    bit_scale: float = 1.0,
    weighting: Callable[[torch.Tensor], torch.Tensor] | None = None,
    reduction: str = "mean",
    likelihood_cap: float = MAX_LIKELIHOOD_LOGIT,
) -> torch.Tensor:
    """
    The flow-matching loss of `model_output` at ``noisy_sample = (1 - sigma) * x + sigma * eps``.

    Args:
        model_output (`torch.Tensor`): The network's output, of `prediction_type` (see `diffusers_binflow.flow`).
        bits (`torch.Tensor`): The clean data in {0, 1}, same shape as `model_output`.
        noisy_sample (`torch.Tensor`): The network's input ``x_sigma``.
        sigmas (`torch.Tensor`): One sigma per sample, shape (B,).
        loss_space (`str`): `"x"` (the aligned loss for x-prediction) or `"v"` (velocity space).
        loss_type (`str`): `"mse"`, or `"bce"`: cross-entropy on per-bit logits (x-space, a prediction_type of
            `LOGIT_PREDICTION_TYPES`).
        v_clamp (`float`, *optional*): For `loss_space="v"`, floor of the sigma divisor (JiT uses 0.05).
        bit_scale (`float`): Signal amplitude, ``x = bit_scale * (2b - 1)``.
        weighting (callable, *optional*): A weight per sample from `sigmas`, e.g. `inverse_square_weight(w_max)`.
        reduction (`str`): `"mean"`, `"sum"` or `"none"` (one value per element).
        likelihood_cap (`float`): For `"likelihood_residual"`, the cap on the likelihood term (`flow.likelihood_logits`)
            the network is trained with; sample with the same cap.

    Misaligned pairs (x-prediction with v-loss, velocity-prediction with x-loss) are computed as asked and warn
    once, naming the weight they imply.
    """
    prediction_type = check_prediction_type(prediction_type)
    check_choice("loss_space", loss_space, LOSS_SPACES)
    check_choice("loss_type", loss_type, LOSS_TYPES)
    check_choice("reduction", reduction, REDUCTIONS)
    if model_output.shape != bits.shape or model_output.shape != noisy_sample.shape:
        raise ValueError(
            f"`model_output` {tuple(model_output.shape)}, `bits` {tuple(bits.shape)} and `noisy_sample` "
            f"{tuple(noisy_sample.shape)} must have the same shape."
        )
    if model_output.numel() == 0:
        raise ValueError(f"The batch is empty (`model_output` of shape {tuple(model_output.shape)}); the mean of no "
                         "loss terms is NaN.")
    if loss_type == "bce" and (loss_space != "x" or prediction_type not in LOGIT_PREDICTION_TYPES):
        raise ValueError("loss_type='bce' is the x-space cross-entropy on per-bit logits: it needs loss_space='x' "
                         f"and a prediction_type of {LOGIT_PREDICTION_TYPES}.")
    check_positive("bit_scale", bit_scale)
    check_positive("likelihood_cap", likelihood_cap)
    _check_sigmas(torch.as_tensor(sigmas), loss_space, v_clamp)
    _warn_if_misaligned(prediction_type, loss_space)
    sigmas = expand_sigma(sigmas, model_output.float())

    if loss_type == "bce":
        # d(loss)/d(logit) = sigmoid(logit) - bit: bounded by 1 for every sigma.
        check_binary(bits)
        logits = bit_logits(model_output.float(), noisy_sample.float(), sigmas, prediction_type, bit_scale,
                            likelihood_cap)
        elementwise = F.binary_cross_entropy_with_logits(logits, bits.float(), reduction="none")
    else:
        clean = bits_to_signal(bits, bit_scale)
        x_hat = predict_x0(model_output.float(), noisy_sample.float(), sigmas, prediction_type, bit_scale,
                           likelihood_cap)
        error = x_hat - clean
        if loss_space == "v":
            # v_hat - v = (x - x_hat) / sigma for every prediction type.
            error = error / _v_divisor(sigmas, v_clamp)
        elementwise = error**2
    if weighting is not None:
        elementwise = elementwise * weighting(sigmas)

    if reduction == "mean":
        return elementwise.mean()
    if reduction == "sum":
        return elementwise.sum()
    return elementwise


def _check_sigmas(sigmas: torch.Tensor, loss_space: str, v_clamp: float | None) -> None:
    """Sigmas must lie on the path, [0, 1] (NaN fails too); a v-space loss divides by sigma, so without a positive
    `v_clamp` it needs sigma > 0."""
    if v_clamp is not None:
        check_positive("v_clamp", v_clamp)
    on_path = (sigmas >= 0) & (sigmas <= 1)
    if not on_path.all():
        raise ValueError(f"`sigmas` must lie in [0, 1] (1 = noise, 0 = data), got {sigmas[~on_path][:6].tolist()}.")
    if loss_space == "v" and v_clamp is None and (sigmas == 0).any():
        raise ValueError("The v-space loss divides by sigma, which is 0 here: pass a positive `v_clamp` (JiT uses "
                         "0.05) or sample sigmas in (0, 1].")


def _v_divisor(sigmas: torch.Tensor, v_clamp: float | None) -> torch.Tensor:
    return sigmas if v_clamp is None else sigmas.clamp_min(v_clamp)


def _warn_if_misaligned(prediction_type: str, loss_space: str) -> None:
    pair = (_prediction_space(prediction_type), loss_space)
    formula, _ = _IMPLIED_WEIGHTS[pair]
    if formula == "1" or pair in _warned_pairs:
        return
    _warned_pairs.add(pair)
    warnings.warn(
        f"prediction_type={prediction_type!r} with loss_space={loss_space!r} is misaligned: it weights the error "
        f"in the prediction's own space by {formula} (see `implied_weight`).",
        UserWarning,
        stacklevel=3,
    )
