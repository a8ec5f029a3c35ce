import pytest
import torch

from diffusers_binflow.bits import bits_to_signal, check_binary, signal_to_bits, signal_to_probabilities


def test_bits_map_to_plus_minus_bit_scale_and_back():
    bits = torch.tensor([[0.0, 1.0, 1.0, 0.0]])
    signal = bits_to_signal(bits, bit_scale=0.5)
    assert torch.equal(signal, torch.tensor([[-0.5, 0.5, 0.5, -0.5]]))
    assert torch.equal(signal_to_bits(signal), bits)


def test_integer_and_bool_bits_are_accepted():
    assert torch.equal(bits_to_signal(torch.tensor([True, False])), torch.tensor([1.0, -1.0]))
    assert torch.equal(bits_to_signal(torch.tensor([1, 0], dtype=torch.uint8)), torch.tensor([1.0, -1.0]))


@pytest.mark.parametrize("bad", [torch.tensor([0.0, 0.5]), torch.tensor([2, 0]), torch.tensor([float("nan"), 1.0])])
def test_non_binary_bits_are_refused(bad):
    with pytest.raises(ValueError, match="only 0 and 1"):
        bits_to_signal(bad)


def test_check_binary_names_the_argument():
    with pytest.raises(ValueError, match="`mask_image`"):
        check_binary(torch.tensor([3.0]), name="mask_image")


def test_probabilities_of_logit_prediction_equal_sigmoid():
    logits = torch.linspace(-8, 8, 33)
    x_hat = 2.0 * torch.tanh(logits / 2)
    torch.testing.assert_close(signal_to_probabilities(x_hat, bit_scale=2.0), torch.sigmoid(logits))
