"""BinaryFlowSequencePipeline: generation, determinism, save/load, prefix and infill conditioning, refusals, Hub."""

import json
import textwrap

import pytest
import torch

from diffusers_binflow import BinaryFlowMatchScheduler
from diffusers_binflow.bits import bits_to_signal
from diffusers_binflow.pipelines import BinaryFlowSequencePipeline
from diffusers_binflow.sequences import (
    ArithmeticStatements,
    BitSequenceTransformer,
    train_tokenizer,
)
from tests.hub_client import run_client
from tests.helpers import StopAfterFirstStep, assert_each_step_saw_the_previous_estimate, record_calls

TASK = ArithmeticStatements(max_operand=9)


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(TASK.texts("all"), "char")  # 14 tokens: [PAD], [UNK], +, =, 0-9 -> 4 bits


def make_pipeline(tokenizer, bias=None, stochastic=False, vocab_size=None, self_conditioning=False,
                  known_conditioning=False):
    """A tiny pipeline whose output layer is random (or a constant `bias`), so samples depend on the noise."""
    torch.manual_seed(0)
    denoiser = BitSequenceTransformer(vocab_size=vocab_size or len(tokenizer), max_length=8, hidden_size=32,
                                      num_layers=1, num_heads=2, self_conditioning=self_conditioning,
                                      known_conditioning=known_conditioning)
    with torch.no_grad():
        if bias is None:
            torch.nn.init.normal_(denoiser.proj_out.weight, std=2.0)
        else:
            denoiser.proj_out.bias.fill_(bias)
    scheduler = BinaryFlowMatchScheduler(prediction_type="logits", stochastic_sampling=stochastic)
    pipe = BinaryFlowSequencePipeline(denoiser=denoiser.eval(), scheduler=scheduler, tokenizer=tokenizer)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def pipe(tokenizer):
    return make_pipeline(tokenizer)


def sample(pipe, seed=0, **kwargs):
    kwargs = dict(batch_size=4, num_inference_steps=3, output_type="ids") | kwargs
    return pipe(generator=torch.Generator().manual_seed(seed), **kwargs).sequences


def test_it_generates_texts_and_ids_of_the_requested_length(pipe):
    out = pipe(batch_size=3, num_inference_steps=2, generator=torch.Generator().manual_seed(0))
    assert len(out.sequences) == 3 and all(isinstance(text, str) for text in out.sequences)
    assert out.out_of_range.shape == (3, 8)
    assert sample(pipe, sequence_length=5).shape == (4, 5)
    assert sample(pipe, output_type="bits").shape == (4, 8, 4)


def test_the_same_generator_gives_the_same_sequences(pipe):
    assert torch.equal(sample(pipe, seed=1), sample(pipe, seed=1))
    assert not torch.equal(sample(pipe, seed=1), sample(pipe, seed=2))


def test_item_i_of_a_batch_with_generator_list_equals_a_single_call_with_generator_i(pipe):
    batch = pipe(batch_size=3, num_inference_steps=3, output_type="ids",
                 generator=[torch.Generator().manual_seed(s) for s in (5, 6, 7)]).sequences
    for i, seed in enumerate((5, 6, 7)):
        assert torch.equal(batch[i], sample(pipe, seed=seed, batch_size=1)[0])


def test_save_and_load_reproduce_the_samples(pipe, tmp_path):
    pipe.save_pretrained(tmp_path)
    loaded = BinaryFlowSequencePipeline.from_pretrained(tmp_path)
    loaded.set_progress_bar_config(disable=True)
    assert type(loaded.denoiser) is BitSequenceTransformer and len(loaded.tokenizer) == 14
    assert torch.equal(sample(loaded), sample(pipe))
    assert loaded(batch_size=2, num_inference_steps=2, generator=torch.Generator().manual_seed(0)).sequences == \
        pipe(batch_size=2, num_inference_steps=2, generator=torch.Generator().manual_seed(0)).sequences
    # Saved before the configs recorded `self_conditioning`: loads as not self-conditioned, samples as before.
    for config in (tmp_path / "model_index.json", tmp_path / "denoiser" / "config.json"):
        values = json.loads(config.read_text())
        assert values.pop("self_conditioning") is False
        config.write_text(json.dumps(values))
    older = BinaryFlowSequencePipeline.from_pretrained(tmp_path)
    older.set_progress_bar_config(disable=True)
    assert not older.self_conditioning and torch.equal(sample(older), sample(pipe))


def test_a_self_conditioned_denoiser_sees_the_previous_steps_estimate_and_keeps_it_through_save_and_load(
    tokenizer, tmp_path
):
    pipe = make_pipeline(tokenizer, self_conditioning=True)
    assert pipe.self_conditioning, "read off the denoiser's config"
    calls = record_calls(pipe.denoiser)
    expected = sample(pipe, prefix="3+")  # with known tokens put back after each step
    assert_each_step_saw_the_previous_estimate(calls, dim=-1)
    pipe.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "model_index.json").read_text())["self_conditioning"] is True
    loaded = BinaryFlowSequencePipeline.from_pretrained(tmp_path)
    loaded.set_progress_bar_config(disable=True)
    assert loaded.self_conditioning and torch.equal(sample(loaded, prefix="3+"), expected)
    with pytest.raises(ValueError, match="denoiser was built with self_conditioning=True"):
        BinaryFlowSequencePipeline(denoiser=pipe.denoiser, scheduler=pipe.scheduler, tokenizer=tokenizer,
                                   self_conditioning=False)


@pytest.mark.parametrize("stochastic", [False, True])
def test_infilling_keeps_the_known_tokens_exactly(tokenizer, stochastic):
    pipe = make_pipeline(tokenizer, stochastic=stochastic)
    ids = tokenizer(["7+8=15", "3+4=7"], add_special_tokens=False, padding="max_length", max_length=8,
                    return_tensors="pt")["input_ids"]
    mask = torch.tensor([[0, 1, 0, 1, 1, 0, 1, 1], [1, 1, 1, 1, 0, 0, 0, 0]])
    out = sample(pipe, batch_size=2, input_ids=ids, infill_mask=mask, num_inference_steps=4)
    assert torch.equal(out[mask == 0], ids[mask == 0])
    unconditional = sample(pipe, batch_size=2, num_inference_steps=4)
    assert not torch.equal(unconditional[mask == 0], ids[mask == 0])


def test_a_known_conditioning_denoiser_is_given_the_clean_tokens_at_every_step(tokenizer, tmp_path):
    pipe = make_pipeline(tokenizer, known_conditioning=True)
    calls = []
    pipe.denoiser.register_forward_hook(lambda _, args, kwargs, output: calls.append(kwargs), with_kwargs=True)
    ids = tokenizer(["7+8=15"], add_special_tokens=False, padding="max_length", max_length=8,
                    return_tensors="pt")["input_ids"]
    mask = torch.tensor([[0, 0, 0, 0, 1, 1, 1, 1]])
    out = sample(pipe, batch_size=3, input_ids=ids, infill_mask=mask, num_inference_steps=4)
    assert len(calls) == 4 and torch.equal(out[:, :4], ids[:, :4].expand(3, -1))
    clean = bits_to_signal(pipe.codec.encode(ids)).expand(3, -1, -1)
    for kwargs in calls:
        assert torch.equal(kwargs["known_signal"], clean) and torch.equal(kwargs["known_mask"], (mask == 0).expand(3, -1))
    calls.clear()
    sample(pipe, batch_size=2)
    assert all("known_mask" not in kwargs for kwargs in calls), "nothing given: nothing passed"
    pipe.save_pretrained(tmp_path)
    loaded = BinaryFlowSequencePipeline.from_pretrained(tmp_path)
    loaded.set_progress_bar_config(disable=True)
    assert loaded.denoiser.config.known_conditioning
    assert torch.equal(sample(loaded, batch_size=3, input_ids=ids, infill_mask=mask, num_inference_steps=4), out)


def test_a_prefix_fixes_the_first_tokens(pipe):
    texts = pipe(batch_size=3, prefix=["3+", "12", "9+9="], num_inference_steps=3,
                 generator=torch.Generator().manual_seed(0)).sequences
    assert [t[: len(p)] for t, p in zip(texts, ["3+", "12", "9+9="])] == ["3+", "12", "9+9="]


def test_codes_that_name_no_token_become_unk_and_are_reported(tokenizer):
    pipe = make_pipeline(tokenizer, bias=20.0)  # every bit 1: code 15, but the vocabulary has 14 ids
    out = pipe(batch_size=2, num_inference_steps=2, output_type="ids")
    assert out.out_of_range.all() and (out.sequences == tokenizer.unk_token_id).all()
    texts = pipe(batch_size=2, num_inference_steps=2)
    assert texts.out_of_range.all() and texts.sequences == ["[UNK]" * 8] * 2  # visible in the text, not dropped


def test_ids_the_tokenizer_lacks_are_reported_and_shown_as_unk_not_dropped_from_the_text(tokenizer):
    pipe = make_pipeline(tokenizer, bias=20.0, vocab_size=16)  # code 15 is an id of the denoiser, not a token
    out = pipe(batch_size=2, num_inference_steps=2, output_type="ids")
    assert out.out_of_range.all() and (out.sequences == tokenizer.unk_token_id).all()
    texts = pipe(batch_size=2, num_inference_steps=2)
    assert texts.out_of_range.all() and texts.sequences == ["[UNK]" * 8] * 2


def test_texts_drop_padding_but_keep_the_tokens_in_place(pipe):
    target = pipe.tokenizer(["7+8=15", "9"], add_special_tokens=False, padding="max_length", max_length=8,
                            return_tensors="pt")["input_ids"]
    out = pipe(batch_size=2, num_inference_steps=2, callback_on_step_end=replace_at_last_step(pipe, target))
    assert out.sequences == ["7+8=15", "9"] and not out.out_of_range.any()


# ------------------------------------------------------------------------------------------ callbacks


def replace_at_last_step(pipe, token_ids, seen=None):
    """A callback that records each call and, at the last step, replaces the latents by the signal of `token_ids`."""

    def callback(pipeline, i, t, callback_kwargs):
        if seen is not None:
            seen.append((i, float(t), tuple(callback_kwargs)))
        if i == pipeline.num_timesteps - 1:
            return {"latents": bits_to_signal(pipe.codec.encode(token_ids), pipe.bit_scale)}
        return callback_kwargs

    return callback


def test_callback_sees_each_step_and_can_replace_the_latents(pipe):
    seen, target = [], torch.arange(16).remainder(14).view(2, 8)
    callback = replace_at_last_step(pipe, target, seen)
    ids = sample(pipe, batch_size=2, num_inference_steps=4, callback_on_step_end=callback)
    assert [s[0] for s in seen] == [0, 1, 2, 3] and seen[0][1] == 1000.0 and seen[0][2] == ("latents",)
    assert torch.equal(ids, target)


def test_pipeline_callback_objects_and_interrupt(pipe):
    calls = []
    hook = pipe.denoiser.register_forward_hook(lambda *args: calls.append(1))
    try:
        callback = StopAfterFirstStep()
        latents = sample(pipe, num_inference_steps=4, output_type="latent", callback_on_step_end=callback)
    finally:
        hook.remove()
    assert callback.steps == 1 and len(calls) == 1
    assert not set(latents.unique().tolist()) <= {-1.0, 1.0}  # stopped before the final (thresholding) step
    assert sample(pipe, num_inference_steps=2).shape == (4, 8)  # the next call runs all its steps again


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"callback_on_step_end": lambda *a: {}, "callback_on_step_end_tensor_inputs": ["noise"]},
         r"\['noise'\] are not among \['latents'\]"),
        ({"callback_on_step_end": "not a function"}, "must be callable"),
        ({"callback_on_step_end": lambda *a: None}, "must return a dict"),
    ],
)
def test_bad_callbacks_are_refused_with_a_clear_error(pipe, kwargs, message):
    with pytest.raises(ValueError, match=message):
        sample(pipe, **kwargs)


# ------------------------------------------------------------------------------------------ bad input


def test_a_tokenizer_larger_than_the_denoiser_vocabulary_is_refused(pipe):
    bigger = train_tokenizer(TASK.texts("all") + ["abcdefgh"], "char")
    with pytest.raises(ValueError, match="tokenizer has 22 tokens.*vocabulary of 14 in 4 bits"):
        BinaryFlowSequencePipeline(denoiser=pipe.denoiser, scheduler=pipe.scheduler, tokenizer=bigger)


def test_a_tokenizer_assigned_after_construction_is_checked_at_the_call(tokenizer):
    pipe = make_pipeline(tokenizer)
    pipe.tokenizer = train_tokenizer(TASK.texts("all") + ["abcdefgh"], "char")
    with pytest.raises(ValueError, match="tokenizer has 22 tokens.*vocabulary of 14 in 4 bits"):
        pipe(batch_size=1, num_inference_steps=2)


def test_sequences_longer_than_the_denoiser_maximum_are_refused(pipe):
    with pytest.raises(ValueError, match=r"sequence_length. 9 is outside \[1, 8\]"):
        pipe(sequence_length=9)
    with pytest.raises(ValueError, match="outside"):
        pipe(input_ids=torch.zeros(1, 9, dtype=torch.long), infill_mask=torch.ones(1, 9))


def test_infill_masks_of_the_wrong_length_or_values_are_refused(pipe):
    ids = torch.zeros(1, 8, dtype=torch.long)
    with pytest.raises(ValueError, match=r"`infill_mask` \(7 positions\)"):
        pipe(input_ids=ids, infill_mask=torch.ones(1, 7))
    with pytest.raises(ValueError, match="only 0"):
        pipe(input_ids=ids, infill_mask=torch.full((1, 8), 2))
    with pytest.raises(ValueError, match="needs both"):
        pipe(input_ids=ids)
    with pytest.raises(ValueError, match="3 sequences for a batch of 2"):
        pipe(batch_size=2, input_ids=torch.zeros(3, 8, dtype=torch.long), infill_mask=torch.ones(3, 8))
    with pytest.raises(ValueError, match=r"in \[0, 14\)"):
        pipe(input_ids=torch.full((1, 8), 20), infill_mask=torch.ones(1, 8))


def test_prefixes_that_do_not_fit_and_other_bad_options_are_refused(pipe):
    with pytest.raises(ValueError, match="prefix of 9 tokens"):
        pipe(prefix="12+34=466")
    with pytest.raises(ValueError, match="either `prefix`"):
        pipe(prefix="1", input_ids=torch.zeros(1, 8, dtype=torch.long), infill_mask=torch.ones(1, 8))
    with pytest.raises(ValueError, match="num_inference_steps"):
        pipe(num_inference_steps=0)
    with pytest.raises(ValueError, match="output_type"):
        pipe(output_type="pil")
    with pytest.raises(ValueError, match="2 generators for a batch of 3"):
        pipe(batch_size=3, generator=[torch.Generator()] * 2)


# ------------------------------------------------------------------------------------------ Hub


def test_a_pushed_pipeline_loads_in_a_fresh_process_with_our_class_and_with_trust_remote_code(
    session_hub, pipe, tmp_path
):
    pipe.push_to_hub("tester/sequence-tiny")
    files = session_hub.files("tester/sequence-tiny")
    assert {"pipeline_binary_flow_sequence.py", "denoiser/diffusers_binflow.sequences.model.py",
            "tokenizer/tokenizer.json", "denoiser/diffusion_pytorch_model.safetensors"} <= set(files)
    out = run_client(session_hub, tmp_path, textwrap.dedent("""
        import torch
        from diffusers import DiffusionPipeline
        generic = DiffusionPipeline.from_pretrained("tester/sequence-tiny", trust_remote_code=True)
        from diffusers_binflow.pipelines import BinaryFlowSequencePipeline
        ours = BinaryFlowSequencePipeline.from_pretrained("tester/sequence-tiny")
        def ids(p):
            p.set_progress_bar_config(disable=True)
            return p(batch_size=4, num_inference_steps=3, output_type="ids",
                     generator=torch.Generator().manual_seed(0)).sequences.tolist()
        emit({"generic": ids(generic), "ours": ids(ours), "class": type(generic).__name__})
    """))
    assert out["class"] == "BinaryFlowSequencePipeline"
    assert out["generic"] == out["ours"] == sample(pipe).tolist()


def test_a_card_written_without_a_training_run_names_the_sampler_its_scheduler_runs(tokenizer):
    """`push_to_hub`'s card reads the scheduler: the plain ODE sampler gets no sampler paragraph, the corrector on a
    shifted grid is named with both settings (not the training script's defaults, which this pipeline never saw)."""
    from diffusers_binflow.model_cards import pipeline_model_card

    pipe = make_pipeline(tokenizer)
    assert "The saved scheduler samples" not in pipeline_model_card(pipe, "tester/plain")
    pipe.scheduler = BinaryFlowMatchScheduler.from_config(pipe.scheduler.config, s_churn=8.0, shift=0.5)
    card = pipeline_model_card(pipe, "tester/shifted")
    assert "the stochastic corrector (`s_churn=8.0`) on a time grid shifted by `shift=0.5`" in card
