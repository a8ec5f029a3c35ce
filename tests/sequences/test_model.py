"""The transformers-backed bit-sequence denoiser: shapes, refusals, save/load, given tokens and training through the
shared loss."""

import pytest
import torch

from diffusers_binflow.sequences import BitSequenceTransformer, sample_known_mask
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


def test_a_known_conditioning_model_reads_given_tokens_exactly_instead_of_their_noisy_state():
    torch.manual_seed(0)
    model = BitSequenceTransformer(**TINY, known_conditioning=True).eval()
    torch.nn.init.normal_(model.proj_out.weight)
    sample, t = torch.randn(2, 6, 4), torch.tensor([700.0, 300.0])
    signal = torch.randn(2, 6, 4).sign()
    mask = torch.zeros(2, 6, dtype=torch.bool)
    mask[:, :3] = True
    given = model(sample, t, known_signal=signal, known_mask=mask).sample
    other_state = sample.clone()
    other_state[:, :3] += 5.0  # the noisy state where tokens are given does not matter
    assert torch.equal(model(other_state, t, known_signal=signal, known_mask=mask).sample, given)
    other_signal = signal.clone()
    other_signal[:, 0] *= -1  # the given tokens do, everywhere
    assert not torch.allclose(model(sample, t, known_signal=other_signal, known_mask=mask).sample[:, 4:], given[:, 4:])
    # nothing given: the flag is 0, the same as an all-false mask
    assert torch.equal(model(sample, t).sample, model(sample, t, known_signal=signal,
                                                      known_mask=torch.zeros_like(mask)).sample)


def test_known_tokens_are_refused_by_a_plain_model_and_in_the_wrong_shape():
    with pytest.raises(ValueError, match="not built with `known_conditioning`"):
        BitSequenceTransformer(**TINY)(torch.randn(1, 5, 4), 1.0, known_signal=torch.ones(1, 5, 4),
                                       known_mask=torch.ones(1, 5, dtype=torch.bool))
    model = BitSequenceTransformer(**TINY, known_conditioning=True)
    with pytest.raises(ValueError, match=r"`known_signal` must have shape \(1, 5, 4\)"):
        model(torch.randn(1, 5, 4), 1.0, known_signal=torch.ones(1, 5, 3), known_mask=torch.ones(1, 5))


def test_known_masks_for_training_give_a_share_of_sequences_scattered_known_tokens():
    mask = sample_known_mask(4000, 12, 0.5, torch.Generator().manual_seed(0))
    assert mask.dtype == torch.bool and mask.shape == (4000, 12)
    # half the sequences draw a rate r ~ U(0, 1); of those, a share E[1 - (1 - r)^12] = 12/13 keeps some token
    assert mask.any(1).float().mean().item() == pytest.approx(0.5 * 12 / 13, abs=0.02)
    rates = mask.float().mean(1)[mask.any(1)]
    assert rates.min() < 0.15 and rates.max() > 0.85, "the rate varies from sequence to sequence"
    assert not sample_known_mask(100, 12, 0.0).any()
    assert torch.equal(sample_known_mask(8, 5, 0.5, torch.Generator().manual_seed(1)),
                       sample_known_mask(8, 5, 0.5, torch.Generator().manual_seed(1)))


def hidden_runs(mask: torch.Tensor) -> torch.Tensor:
    """How many contiguous runs of hidden (not given) positions each row of a known mask has."""
    hidden = ~mask
    return ((hidden[:, 1:] != hidden[:, :-1]).sum(1) + hidden[:, 0].long() + hidden[:, -1].long()) // 2


def test_span_masks_hide_one_contiguous_span_and_leave_the_scattered_draws_alone():
    """With span_fraction 1 every given sequence hides exactly one non-empty contiguous span: answers, suffixes and
    gaps alike; with a share of 0.5 about half the given sequences are spans; with 0 the draws are the old ones."""
    length = 12
    mask = sample_known_mask(3000, length, 1.0, torch.Generator().manual_seed(0), span_fraction=1.0)
    hidden = ~mask
    assert hidden.any(1).all()
    assert (hidden_runs(mask) == 1).all(), "the hidden positions form one run"
    starts, ends = hidden.float().argmax(1), length - hidden.flip(1).float().argmax(1)
    assert (starts == 0).any() and (ends == length).any() and ((starts > 0) & (ends < length)).any()
    assert (ends == length).float().mean().item() > 0.2, "suffixes (prefix completion) are common"
    mixed = sample_known_mask(4000, length, 1.0, torch.Generator().manual_seed(1), span_fraction=0.5)
    one_run = hidden_runs(mixed) == 1
    # a scattered mask is one run too only by chance (0.19 here), so a share of 0.5 gives 0.5 + 0.5 * 0.19 = 0.59
    assert 0.55 < one_run.float().mean().item() < 0.64
    for seed in range(3):
        assert torch.equal(sample_known_mask(8, 5, 0.5, torch.Generator().manual_seed(seed)),
                           sample_known_mask(8, 5, 0.5, torch.Generator().manual_seed(seed), span_fraction=0.0))


def test_a_known_conditioning_model_trains_through_the_shared_loss():
    torch.manual_seed(0)
    model = BitSequenceTransformer(**TINY, known_conditioning=True, self_conditioning=True)
    bits = (torch.rand(8, 10, 4) < 0.5).float()
    config = FlowLossConfig(prediction_type="logits", loss_type="bce", self_conditioning=True,
                            self_conditioning_probability=1.0)
    given = {"known_signal": 2 * bits - 1, "known_mask": sample_known_mask(8, 10, 1.0, torch.Generator())}
    flow_matching_loss(model, bits, config, generator=torch.Generator().manual_seed(0),
                       model_kwargs=given).loss.backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
