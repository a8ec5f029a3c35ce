"""Diagnostics of a binary flow model along sigma (sigma = 1 noise, sigma = 0 data): the paper's loss and
gradient size per sigma, and how often the model's estimate gets a bit wrong at the data end."""

import torch

from .bits import bits_to_signal
from .flow import MAX_LIKELIHOOD_LOGIT, interpolate, predict_x0, self_conditioned_input


def output_gradient_norms(loss: torch.Tensor, model_output: torch.Tensor) -> torch.Tensor:
    """Per-sample L2 norm of ``d loss / d model_output``, shape (B,); the graph is kept for the backward pass.

    This is the factor the sigma weighting acts on: it stays bounded for the x-losses and grows like
    ``sigma**-2`` for an x-prediction trained with a v-loss.
    """
    (grad,) = torch.autograd.grad(loss, model_output, retain_graph=True)
    return grad.flatten(1).norm(dim=1)


def per_sigma_bin_stats(
    sigmas: torch.Tensor, values: torch.Tensor, num_bins: int = 10, percentiles=(50, 90, 99)
) -> list[dict]:
    """Summaries of `values` (one per sample) in equal-width sigma bins over [0, 1].

    Returns one dict per bin: ``sigma_low``, ``sigma_high``, ``count``, ``mean`` and ``p<q>`` for each percentile
    (``None`` for an empty bin).
    """
    sigmas, values = sigmas.detach().float().flatten().cpu(), values.detach().float().flatten().cpu()
    if sigmas.shape != values.shape:
        raise ValueError(f"Need one value per sigma, got {values.numel()} values for {sigmas.numel()} sigmas.")
    edges = torch.linspace(0, 1, num_bins + 1)
    bins = torch.bucketize(sigmas, edges[1:-1], right=True)
    stats = []
    for b in range(num_bins):
        selected = values[bins == b]
        empty = selected.numel() == 0
        entry = {"sigma_low": edges[b].item(), "sigma_high": edges[b + 1].item(), "count": selected.numel()}
        entry["mean"] = None if empty else selected.mean().item()
        for q in percentiles:
            entry[f"p{q}"] = None if empty else torch.quantile(selected, q / 100).item()
        stats.append(entry)
    return stats


@torch.no_grad()
def data_end_bit_errors(model, bits: torch.Tensor, prediction_type: str, sigmas=(0.05, 0.1, 0.2),
                        bit_scale: float = 1.0, num_train_timesteps: int = 1000,
                        generator: torch.Generator | None = None, model_kwargs: dict | None = None,
                        self_conditioning: bool = False, likelihood_cap: float = MAX_LIKELIHOOD_LOGIT) -> list[dict]:
    """On real `bits` noised to each sigma, the share of bits whose estimate ``x_hat`` has the wrong sign, next to
    the share where ``x_sigma`` itself does (the error of trusting each bit's own likelihood, ~0 at small sigma).

    A model that is exact on the data manifold matches the likelihood's error there; more is a data-end error.
    A self-conditioned model first sees zeros, then its own estimate (as at a sampler's second step);
    `likelihood_cap` is the sampler's (see `flow.likelihood_logits`). Returns one dict per sigma: ``sigma``,
    ``model_bit_error``, ``likelihood_bit_error``.
    """
    clean = bits_to_signal(bits, bit_scale)
    rows = []
    for sigma in sigmas:
        noisy = interpolate(clean, torch.randn(clean.shape, generator=generator).to(clean.device), sigma)
        timesteps = torch.full((clean.shape[0],), sigma * num_train_timesteps, device=clean.device)
        x_hat = None
        for _ in range(2 if self_conditioning else 1):
            inputs = self_conditioned_input(noisy, x_hat) if self_conditioning else noisy
            output = model(inputs, timesteps, **(model_kwargs or {}), return_dict=False)[0]
            x_hat = predict_x0(output, noisy, sigma, prediction_type, bit_scale, likelihood_cap)
        rows.append({"sigma": sigma, "model_bit_error": ((x_hat > 0) != (clean > 0)).float().mean().item(),
                     "likelihood_bit_error": ((noisy > 0) != (clean > 0)).float().mean().item()})
    return rows
