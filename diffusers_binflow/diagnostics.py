"""The paper's diagnostic: how loss and gradient size depend on sigma (sigma = 1 noise, sigma = 0 data)."""

import torch


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
