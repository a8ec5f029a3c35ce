import warnings

import pytest
import torch

from diffusers_binflow.flow import interpolate
from diffusers_binflow.losses import binary_flow_loss, implied_weight, inverse_square_weight


def training_batch(sigmas, seed=0, shape=(16,)):
    g = torch.Generator().manual_seed(seed)
    sigmas = torch.as_tensor(sigmas, dtype=torch.float32)
    bits = (torch.rand(len(sigmas), *shape, generator=g) < 0.5).float()
    noise = torch.randn(len(sigmas), *shape, generator=g)
    clean = 2 * bits - 1
    return bits, noise, clean, interpolate(clean, noise, sigmas), sigmas


def per_sample(loss):
    return loss.flatten(1).sum(1)


# ------------------------------------------------------------------------------------- the identity


def test_x_prediction_v_loss_is_x_mse_over_sigma_squared_in_value_and_gradient():
    bits, noise, clean, noisy, sigmas = training_batch(torch.tensor([0.9, 0.5, 0.1, 0.01, 1e-3]))
    x_hat = torch.randn_like(noisy).requires_grad_()

    # The v-loss written from its definition: v_hat = (x_sigma - x_hat) / sigma against v = eps - x.
    v_hat = (noisy - x_hat) / sigmas[:, None]
    by_definition = per_sample((v_hat - (noise - clean)) ** 2)
    with pytest.warns(UserWarning, match="1 / sigma\\^2"):
        v_loss = per_sample(binary_flow_loss(x_hat, bits, noisy, sigmas, loss_space="v", reduction="none"))
    x_loss = per_sample(binary_flow_loss(x_hat, bits, noisy, sigmas, loss_space="x", reduction="none"))

    torch.testing.assert_close(v_loss, by_definition, rtol=1e-4, atol=0)
    torch.testing.assert_close(v_loss, x_loss / sigmas**2, rtol=1e-5, atol=0)
    for i in range(len(sigmas)):
        (grad_v,) = torch.autograd.grad(v_loss[i], x_hat, retain_graph=True)
        (grad_x,) = torch.autograd.grad(x_loss[i], x_hat, retain_graph=True)
        torch.testing.assert_close(grad_v, grad_x / sigmas[i] ** 2, rtol=1e-5, atol=1e-6)


def test_clamped_v_loss_is_the_x_loss_with_a_bounded_inverse_square_weight():
    bits, _, _, noisy, sigmas = training_batch(torch.linspace(1e-4, 1, 50))
    x_hat = torch.randn_like(noisy)
    with pytest.warns(UserWarning, match="misaligned"):
        clamped = binary_flow_loss(x_hat, bits, noisy, sigmas, loss_space="v", v_clamp=0.05, reduction="none")
    weighted = binary_flow_loss(x_hat, bits, noisy, sigmas, weighting=inverse_square_weight(1 / 0.05**2),
                                reduction="none")
    torch.testing.assert_close(clamped, weighted, rtol=1e-5, atol=0)
    torch.testing.assert_close(per_sample(weighted), per_sample((x_hat - (2 * bits - 1)) ** 2)
                               * torch.minimum(sigmas**-2, torch.tensor(400.0)), rtol=1e-5, atol=0)


def test_velocity_prediction_with_v_loss_is_the_plain_rectified_flow_loss():
    bits, noise, clean, noisy, sigmas = training_batch(torch.tensor([0.8, 0.3, 0.05]))
    v_hat = torch.randn_like(noisy)
    loss = binary_flow_loss(v_hat, bits, noisy, sigmas, prediction_type="velocity", loss_space="v")
    torch.testing.assert_close(loss, ((v_hat - (noise - clean)) ** 2).mean(), rtol=1e-4, atol=0)


def test_bce_is_cross_entropy_on_logits_and_ignores_bit_scale():
    bits, _, _, noisy, sigmas = training_batch(torch.tensor([0.5, 0.2]))
    logits = torch.randn_like(noisy)
    expected = torch.nn.functional.binary_cross_entropy_with_logits(logits, bits)
    for bit_scale in (1.0, 0.3):
        loss = binary_flow_loss(logits, bits, noisy * bit_scale, sigmas, prediction_type="logits", loss_type="bce",
                                bit_scale=bit_scale)
        torch.testing.assert_close(loss, expected)


def test_mse_on_logits_measures_the_error_of_the_scaled_tanh():
    bits, _, _, noisy, sigmas = training_batch(torch.tensor([0.5]))
    logits = torch.randn_like(noisy)
    loss = binary_flow_loss(logits, bits, noisy, sigmas, prediction_type="logits", bit_scale=2.0)
    torch.testing.assert_close(loss, ((2 * torch.tanh(logits / 2) - 2 * (2 * bits - 1)) ** 2).mean())


def test_reductions_agree():
    bits, _, _, noisy, sigmas = training_batch(torch.tensor([0.5, 0.2, 0.7]), shape=(2, 4, 4))
    x_hat = torch.randn_like(noisy)
    none = binary_flow_loss(x_hat, bits, noisy, sigmas, reduction="none")
    assert none.shape == x_hat.shape
    torch.testing.assert_close(binary_flow_loss(x_hat, bits, noisy, sigmas, reduction="sum"), none.sum())
    torch.testing.assert_close(binary_flow_loss(x_hat, bits, noisy, sigmas), none.mean())


def test_callable_weighting_scales_each_sample():
    bits, _, _, noisy, sigmas = training_batch(torch.tensor([0.5, 0.25]))
    x_hat = torch.randn_like(noisy)
    plain = binary_flow_loss(x_hat, bits, noisy, sigmas, reduction="none")
    weighted = binary_flow_loss(x_hat, bits, noisy, sigmas, weighting=lambda s: 1 / s, reduction="none")
    torch.testing.assert_close(weighted, plain * torch.tensor([[2.0], [4.0]]))


# ------------------------------------------------------------------------------------- boundedness


SMALL_SIGMAS = torch.logspace(-6, 0, 25)


def output_gradient(model_output, **loss_kwargs):
    model_output = model_output.clone().requires_grad_()
    bits, _, _, noisy, sigmas = training_batch(SMALL_SIGMAS)
    loss = binary_flow_loss(model_output, bits, noisy, sigmas, reduction="sum", **loss_kwargs)
    (grad,) = torch.autograd.grad(loss, model_output)
    return grad, bits


def test_cross_entropy_gradient_is_at_most_one_per_logit_for_every_sigma():
    logits = 50 * torch.randn(len(SMALL_SIGMAS), 16, generator=torch.Generator().manual_seed(1))
    grad, bits = output_gradient(logits, prediction_type="logits", loss_type="bce")
    assert grad.abs().max() <= 1.0
    torch.testing.assert_close(grad, torch.sigmoid(logits) - bits)


def test_likelihood_residual_cross_entropy_is_finite_with_gradient_at_most_one_down_to_sigma_zero():
    residual = 5 * torch.randn(len(SMALL_SIGMAS), 16, generator=torch.Generator().manual_seed(1))
    grad, bits = output_gradient(residual, prediction_type="likelihood_residual", loss_type="bce")
    assert torch.isfinite(grad).all() and grad.abs().max() <= 1.0
    bits, _, _, noisy, sigmas = training_batch(torch.tensor([0.0, 1e-30, 0.05]))
    loss = binary_flow_loss(torch.zeros_like(noisy), bits, noisy, sigmas, prediction_type="likelihood_residual",
                            loss_type="bce", reduction="none")
    # a zero residual is the likelihood alone: exact (zero loss) on the data, and finite where sigma is tiny
    assert torch.isfinite(loss).all() and loss[:2].max() < 1e-20


def test_a_capped_likelihood_residual_is_trained_on_the_clamped_likelihood_plus_the_correction():
    bits, _, _, noisy, sigmas = training_batch(torch.tensor([0.02, 0.1, 0.4, 0.9]))
    residual = torch.randn(noisy.shape, generator=torch.Generator().manual_seed(3))
    capped = binary_flow_loss(residual, bits, noisy, sigmas, prediction_type="likelihood_residual", loss_type="bce",
                              likelihood_cap=2.0, reduction="none")
    logits = (2 * noisy * (1 - sigmas[:, None]) / sigmas[:, None] ** 2).clamp(-2, 2) + residual
    torch.testing.assert_close(capped, torch.nn.functional.binary_cross_entropy_with_logits(logits, bits,
                                                                                            reduction="none"))
    # the cap binds at small sigma, so the loss there differs from the uncapped one
    uncapped = binary_flow_loss(residual, bits, noisy, sigmas, prediction_type="likelihood_residual",
                                loss_type="bce", reduction="none")
    assert not torch.allclose(capped[0], uncapped[0])
    with pytest.raises(ValueError, match="likelihood_cap"):
        binary_flow_loss(residual, bits, noisy, sigmas, prediction_type="likelihood_residual", loss_type="bce",
                         likelihood_cap=0.0)


def test_x_mse_gradient_is_bounded_by_twice_the_residual_for_every_sigma():
    x_hat = 3 * torch.randn(len(SMALL_SIGMAS), 16, generator=torch.Generator().manual_seed(2))
    grad, bits = output_gradient(x_hat)
    residual = (x_hat - (2 * bits - 1)).abs()
    assert (grad.abs() <= 2 * residual + 1e-6).all()
    assert grad.abs().max() <= 2 * residual.max()


def test_v_loss_gradient_grows_like_sigma_to_the_minus_two():
    x_hat = torch.full((len(SMALL_SIGMAS), 16), 0.3)  # a fixed, non-vanishing residual
    with pytest.warns(UserWarning):
        grad, _ = output_gradient(x_hat, loss_space="v")
    norms = grad.norm(dim=1)
    slope = torch.linalg.lstsq(
        torch.stack([SMALL_SIGMAS.log(), torch.ones_like(SMALL_SIGMAS)], 1).double(), norms.log()[:, None].double()
    ).solution[0].item()
    assert abs(slope + 2) < 0.01, slope
    assert norms[0] > 1e11  # at sigma = 1e-6


# ------------------------------------------------------------------------------ implied weights


def test_implied_weight_of_each_pairing():
    sigma = torch.tensor([0.5, 0.1])
    torch.testing.assert_close(implied_weight("sample", "x", sigma), torch.ones(2))
    torch.testing.assert_close(implied_weight("logits", "v", sigma), sigma**-2)
    torch.testing.assert_close(implied_weight("sample", "v", sigma, v_clamp=0.2), torch.tensor([4.0, 25.0]))
    torch.testing.assert_close(implied_weight("velocity", "v", sigma), torch.ones(2))
    torch.testing.assert_close(implied_weight("velocity", "x", sigma), sigma**2)


@pytest.mark.parametrize("prediction_type, loss_space", [("velocity", "x"), ("epsilon", "x"), ("epsilon", "v")])
def test_implied_weight_matches_the_loss_ratio_for_non_x_predictions(prediction_type, loss_space):
    """loss(pred) = w(sigma) * (pred - exact pred)^2, checked on the losses themselves."""
    bits, noise, clean, noisy, sigmas = training_batch(torch.tensor([0.7, 0.3, 0.1]))
    exact = {"velocity": noise - clean, "epsilon": noise}[prediction_type]
    output = exact + 0.1 * torch.randn_like(exact)
    with pytest.warns(UserWarning):
        loss = per_sample(binary_flow_loss(output, bits, noisy, sigmas, prediction_type=prediction_type,
                                           loss_space=loss_space, reduction="none"))
    expected = implied_weight(prediction_type, loss_space, sigmas) * per_sample((output - exact) ** 2)
    torch.testing.assert_close(loss, expected, rtol=1e-3, atol=0)


def test_misaligned_pairs_warn_once_and_aligned_ones_never():
    bits, _, _, noisy, sigmas = training_batch(torch.tensor([0.5]))
    out = torch.zeros_like(noisy)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        binary_flow_loss(out, bits, noisy, sigmas, prediction_type="sample", loss_space="x")
        binary_flow_loss(out, bits, noisy, sigmas, prediction_type="velocity", loss_space="v")
    with pytest.warns(UserWarning, match="sigma\\^2"):
        binary_flow_loss(out, bits, noisy, sigmas, prediction_type="velocity", loss_space="x")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        binary_flow_loss(out, bits, noisy, sigmas, prediction_type="velocity", loss_space="x")


# ---------------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"loss_space": "eps"}, "loss_space"),
        ({"loss_type": "l1"}, "loss_type"),
        ({"reduction": "max"}, "reduction"),
        ({"prediction_type": "x"}, "prediction_type"),
        ({"loss_type": "bce"}, "prediction_type of \\('logits', 'likelihood_residual'\\)"),
        ({"loss_type": "bce", "prediction_type": "logits", "loss_space": "v"}, "loss_space='x'"),
    ],
)
def test_bad_options_are_refused_by_name(kwargs, message):
    bits, _, _, noisy, sigmas = training_batch(torch.tensor([0.5]))
    with pytest.raises(ValueError, match=message):
        binary_flow_loss(torch.zeros_like(noisy), bits, noisy, sigmas, **kwargs)


def test_non_binary_bits_and_mismatched_shapes_are_refused():
    bits, _, _, noisy, sigmas = training_batch(torch.tensor([0.5]))
    with pytest.raises(ValueError, match="only 0 and 1"):
        binary_flow_loss(torch.zeros_like(noisy), bits * 0.5, noisy, sigmas)
    with pytest.raises(ValueError, match="only 0 and 1"):
        binary_flow_loss(torch.zeros_like(noisy), bits + 1, noisy, sigmas, prediction_type="logits", loss_type="bce")
    with pytest.raises(ValueError, match="same shape"):
        binary_flow_loss(torch.zeros(1, 8), bits, noisy, sigmas)
    with pytest.raises(ValueError, match="one value per sample"):
        binary_flow_loss(torch.zeros_like(noisy), bits, noisy, torch.ones(3))
    with pytest.raises(ValueError, match="w_max"):
        inverse_square_weight(0.0)



@pytest.mark.parametrize("bad_sigma", [1.5, -0.1, float("nan"), float("inf")])
def test_sigmas_off_the_path_are_refused(bad_sigma):
    bits, _, _, noisy, _ = training_batch(torch.tensor([0.5, 0.5]))
    with pytest.raises(ValueError, match=r"`sigmas` must lie in \[0, 1\]"):
        binary_flow_loss(torch.zeros_like(noisy), bits, noisy, torch.tensor([0.5, bad_sigma]))
    with pytest.raises(ValueError, match=r"`sigmas` must lie in \[0, 1\]"):
        implied_weight("sample", "v", torch.tensor([bad_sigma]))


def test_an_unclamped_v_loss_at_sigma_zero_is_refused_and_a_clamp_makes_it_finite():
    bits, _, _, noisy, _ = training_batch(torch.tensor([0.5, 0.5]))
    sigmas = torch.tensor([0.5, 0.0])
    with pytest.raises(ValueError, match="divides by sigma, which is 0"):
        binary_flow_loss(torch.zeros_like(noisy), bits, noisy, sigmas, loss_space="v")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the misaligned pair warns once per process
        assert binary_flow_loss(torch.zeros_like(noisy), bits, noisy, sigmas, loss_space="v", v_clamp=0.05).isfinite()
    assert binary_flow_loss(torch.zeros_like(noisy), bits, noisy, sigmas).isfinite()  # the x-loss never divides


def test_an_empty_batch_is_refused_rather_than_giving_a_nan_loss():
    empty = torch.zeros(0, 16)
    with pytest.raises(ValueError, match="batch is empty"):
        binary_flow_loss(empty, empty, empty, torch.zeros(0))


@pytest.mark.parametrize("bit_scale", [0.0, -1.0, float("nan"), float("inf")])
def test_a_bit_scale_that_is_not_finite_and_positive_is_refused(bit_scale):
    bits, _, _, noisy, sigmas = training_batch(torch.tensor([0.5]))
    with pytest.raises(ValueError, match="`bit_scale` must be a finite positive number"):
        binary_flow_loss(torch.zeros_like(noisy), bits, noisy, sigmas, bit_scale=bit_scale)


@pytest.mark.parametrize("v_clamp", [0.0, -0.05, float("nan")])
def test_a_v_clamp_that_is_not_finite_and_positive_is_refused(v_clamp):
    bits, _, _, noisy, sigmas = training_batch(torch.tensor([0.5]))
    with pytest.raises(ValueError, match="`v_clamp` must be a finite positive number"):
        binary_flow_loss(torch.zeros_like(noisy), bits, noisy, sigmas, loss_space="v", v_clamp=v_clamp)
    with pytest.raises(ValueError, match="`v_clamp` must be a finite positive number"):
        implied_weight("sample", "v", torch.tensor([0.5]), v_clamp=v_clamp)


def test_diffusers_name_for_the_velocity_gives_the_velocity_loss():
    generator = torch.Generator().manual_seed(0)
    bits = (torch.rand(4, 8, generator=generator) < 0.5).float()
    output, noisy, sigmas = torch.randn(4, 8, generator=generator), torch.randn(4, 8, generator=generator), torch.rand(4, generator=generator)
    alias = binary_flow_loss(output, bits, noisy, sigmas, prediction_type="flow_prediction", loss_space="v")
    assert torch.equal(alias, binary_flow_loss(output, bits, noisy, sigmas, prediction_type="velocity", loss_space="v"))
