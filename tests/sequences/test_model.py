"""The transformers-backed bit-sequence denoiser: shapes, refusals, save/load and training through the shared loss."""

import pytest
import torch

from diffusers_binflow.sequences import BitSequenceTransformer
from diffusers_binflow.training import FlowLossConfig, flow_matching_loss

TINY = dict(vocab_size=14, max_length=10, hidden_size=32, num_layers=1, num_heads=2)


def test_it_maps_noisy_bits_and_timesteps_to_one_value_per_bit():
    model = BitSequenceTransformer(**TINY)
    assert model.num_bits == 4 and type(model.backbone.encoder).__name__ == "BertModel"
    output = model(torch.randn(3, 7, 4), torch.tensor([999.0, 500.0, 1.0])).sample
    assert output.shape == (3, 7, 4) and (output == 0).all(), "the output layer starts at logit 0"
    assert model(torch.randn(3, 7, 4), 250.0, return_dict=False)[0].shape == (3, 7, 4)


def test_sequences_longer_than_the_maximum_and_wrong_widths_are_refused():
    model = BitSequenceTransformer(**TINY)
    with pytest.raises(ValueError, match="longer than the model's maximum 10"):
        model(torch.randn(1, 11, 4), 1.0)
    with pytest.raises(ValueError, match=r"\(batch, length, 4\)"):
        model(torch.randn(1, 5, 5), 1.0)


def test_a_self_conditioned_model_takes_the_noisy_bits_and_the_previous_estimate():
    model = BitSequenceTransformer(**TINY, self_conditioning=True)
    assert model(torch.randn(3, 7, 8), 250.0).sample.shape == (3, 7, 4)
    with pytest.raises(ValueError, match=r"\(batch, length, 8\).*self_conditioned_input"):
        model(torch.randn(3, 7, 4), 250.0)


def test_save_and_load_give_the_same_outputs(tmp_path):
    torch.manual_seed(0)
    model = BitSequenceTransformer(**TINY, bit_code="gray")
    torch.nn.init.normal_(model.proj_out.weight)
    model.save_pretrained(tmp_path)
    loaded = BitSequenceTransformer.from_pretrained(tmp_path)
    sample, t = torch.randn(2, 10, 4), torch.tensor([300.0, 30.0])
    assert torch.equal(model(sample, t).sample, loaded(sample, t).sample)
    assert loaded.codec.bit_code == "gray" and loaded.config.backbone_type == "bert"


def test_every_trainable_parameter_learns_from_the_bce_flow_loss():
    torch.manual_seed(0)
    model = BitSequenceTransformer(**TINY)
    bits = (torch.rand(8, 10, 4) < 0.5).float()
    config = FlowLossConfig(prediction_type="logits", loss_type="bce")
    flow_matching_loss(model, bits, config, generator=torch.Generator().manual_seed(0)).loss.backward()
    missing = [name for name, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, "data-parallel training needs every trainable parameter used"
    assert not model.backbone.encoder.get_input_embeddings().weight.requires_grad


def test_other_transformers_encoders_plug_in_by_model_type():
    model = BitSequenceTransformer(**TINY, backbone_type="modernbert", dropout=0.1)
    assert type(model.backbone.encoder).__name__ == "ModernBertModel"
    assert model.backbone.encoder.config.mlp_dropout == 0.1
    assert model(torch.randn(2, 10, 4), 10.0).sample.shape == (2, 10, 4)
