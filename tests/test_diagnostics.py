import pytest
import torch

from diffusers_binflow.diagnostics import data_end_bit_errors, output_gradient_norms, per_sigma_bin_stats
from diffusers_binflow.flow import interpolate
from diffusers_binflow.losses import binary_flow_loss


def test_per_sigma_bin_stats_counts_and_summarises_each_bin():
    sigmas = torch.tensor([0.05, 0.06, 0.55, 0.95, 1.0])
    values = torch.tensor([1.0, 3.0, 10.0, 7.0, 9.0])
    stats = per_sigma_bin_stats(sigmas, values, num_bins=2, percentiles=(50,))
    assert [s["count"] for s in stats] == [2, 3]
    assert stats[0]["mean"] == pytest.approx(2.0) and stats[1]["p50"] == pytest.approx(9.0)
    assert (stats[0]["sigma_low"], stats[1]["sigma_high"]) == (0.0, 1.0)


def test_empty_bins_report_none_and_mismatched_inputs_are_refused():
    stats = per_sigma_bin_stats(torch.tensor([0.95]), torch.tensor([1.0]), num_bins=4)
    assert stats[0]["count"] == 0 and stats[0]["mean"] is None and stats[0]["p99"] is None
    with pytest.raises(ValueError, match="one value per sigma"):
        per_sigma_bin_stats(torch.ones(3), torch.ones(2))


def test_output_gradient_norms_separate_aligned_from_misaligned_losses_near_the_data_end():
    g = torch.Generator().manual_seed(0)
    sigmas = torch.tensor([0.9, 0.5, 0.1, 0.01])
    bits = (torch.rand(4, 32, generator=g) < 0.5).float()
    noisy = interpolate(2 * bits - 1, torch.randn(4, 32, generator=g), sigmas)
    x_hat = torch.zeros(4, 32, requires_grad=True)
    x_norms = output_gradient_norms(binary_flow_loss(x_hat, bits, noisy, sigmas, reduction="sum"), x_hat)
    with pytest.warns(UserWarning):
        v_loss = binary_flow_loss(x_hat, bits, noisy, sigmas, loss_space="v", reduction="sum")
    v_norms = output_gradient_norms(v_loss, x_hat)
    torch.testing.assert_close(x_norms, torch.full((4,), 2 * 32**0.5))
    torch.testing.assert_close(v_norms, x_norms / sigmas**2)
    v_loss.backward()  # the graph was kept for the training step
    assert x_hat.grad is not None


def test_data_end_bit_errors_compare_the_estimate_with_each_bits_own_likelihood():
    bits = (torch.rand(400, 256, generator=torch.Generator().manual_seed(0)) < 0.5).float()

    def zero(sample, timestep, return_dict=False):  # a zero residual: the likelihood's own decision
        return (torch.zeros_like(sample),)

    def flipped(sample, timestep, return_dict=False):  # an x-prediction that is wrong wherever x_sigma is right
        return (-sample,)

    rows = data_end_bit_errors(zero, bits, "likelihood_residual", sigmas=(0.1, 0.5),
                               generator=torch.Generator().manual_seed(1))
    assert [r["sigma"] for r in rows] == [0.1, 0.5]
    assert all(r["model_bit_error"] == r["likelihood_bit_error"] for r in rows)
    # P(sign(x_sigma) wrong) = Phi(-(1 - sigma) / sigma): Phi(-9) ~ 0 at 0.1, Phi(-1) = 0.159 at 0.5
    assert rows[0]["likelihood_bit_error"] == 0.0
    assert rows[1]["likelihood_bit_error"] == pytest.approx(0.1587, abs=0.003)
    wrong = data_end_bit_errors(flipped, bits, "sample", sigmas=(0.1, 0.5),
                                generator=torch.Generator().manual_seed(1))  # the same noise draws
    assert wrong[1]["model_bit_error"] == pytest.approx(1 - rows[1]["likelihood_bit_error"])


def test_data_end_bit_errors_give_a_self_conditioned_model_its_own_first_estimate():
    bits = (torch.rand(100, 64, generator=torch.Generator().manual_seed(0)) < 0.5).float()
    seen = []

    def contrary(sample, timestep, return_dict=False):  # x_sigma on zeros, then the opposite of what it is shown
        state, previous = sample.chunk(2, dim=-1)
        seen.append(previous.abs().sum().item())
        return (state if not previous.any() else -previous,)

    (row,) = data_end_bit_errors(contrary, bits, "sample", sigmas=(0.5,), self_conditioning=True,
                                 generator=torch.Generator().manual_seed(1))
    assert seen[0] == 0 and seen[1] > 0  # zeros first, then the model's own estimate
    assert row["model_bit_error"] == pytest.approx(1 - row["likelihood_bit_error"])
