"""The conditional denoiser and BinaryFlowMIMOPipeline: save/load, determinism, sample aggregation, bad input,
and a push to the test Hub loaded back in a fresh process."""

import json
import textwrap

import pytest
import torch

from diffusers_binflow.mimo import get_modulation, simulate
from diffusers_binflow.mimo.model import MIMOFlowTransformer
from diffusers_binflow.pipelines import BinaryFlowMIMOPipeline
from diffusers_binflow.schedulers import BinaryFlowMatchScheduler
from tests.hub_client import run_client
from tests.helpers import StopAfterFirstStep, assert_each_step_saw_the_previous_estimate, record_calls


def tiny_pipeline(modulation="qpsk", prediction_type="logits", num_tx=2, num_rx=2, seed=0, self_conditioning=False):
    torch.manual_seed(seed)
    model = MIMOFlowTransformer(num_tx=num_tx, num_rx=num_rx, modulation=modulation, hidden_size=16, num_layers=1,
                                num_heads=2, prediction_type=prediction_type, self_conditioning=self_conditioning)
    with torch.no_grad():  # the zero-initialised output layers would hide the network from the tests
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    pipe = BinaryFlowMIMOPipeline(model=model.eval(), scheduler=BinaryFlowMatchScheduler(prediction_type=prediction_type))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def channel(num=6, num_tx=2, num_rx=2, modulation="qpsk", snr_db=10.0, seed=1):
    return simulate(num, num_tx, num_rx, modulation, snr_db, generator=torch.Generator().manual_seed(seed))


def detect(pipe, batch, seed=0, **kwargs):
    return pipe(batch.y, batch.H, batch.noise_var, generator=torch.Generator().manual_seed(seed), **kwargs)


@pytest.mark.parametrize("modulation", ["qpsk", "16qam"])
def test_model_output_has_one_value_per_bit(modulation):
    pipe, batch = tiny_pipeline(modulation), channel(modulation=modulation)
    out = pipe.model(torch.randn_like(batch.bits), torch.full((6,), 500.0), y=batch.y, H=batch.H,
                     noise_var=batch.noise_var)
    assert out.sample.shape == batch.bits.shape == (6, 2 * 2 * get_modulation(modulation).bits_per_real)


def test_model_saves_and_loads_like_a_diffusers_model(tmp_path):
    pipe, batch = tiny_pipeline(), channel()
    pipe.model.save_pretrained(tmp_path / "model")
    loaded = MIMOFlowTransformer.from_pretrained(tmp_path / "model")
    assert json.loads((tmp_path / "model" / "config.json").read_text())["modulation"] == "qpsk"
    args = (torch.randn_like(batch.bits), torch.full((6,), 300.0))
    kwargs = dict(y=batch.y, H=batch.H, noise_var=batch.noise_var)
    assert torch.equal(pipe.model(*args, **kwargs).sample, loaded(*args, **kwargs).sample)


def test_pipeline_saves_and_loads(tmp_path):
    pipe, batch = tiny_pipeline(), channel()
    pipe.save_pretrained(tmp_path / "pipe")
    loaded = BinaryFlowMIMOPipeline.from_pretrained(tmp_path / "pipe")
    loaded.set_progress_bar_config(disable=True)
    expected = detect(pipe, batch, num_inference_steps=3).probabilities
    assert torch.equal(expected, detect(loaded, batch, num_inference_steps=3).probabilities)
    # Saved before the configs recorded `self_conditioning`: loads as not self-conditioned, detects as before.
    for config in (tmp_path / "pipe" / "model_index.json", tmp_path / "pipe" / "model" / "config.json"):
        values = json.loads(config.read_text())
        assert values.pop("self_conditioning") is False
        config.write_text(json.dumps(values))
    older = BinaryFlowMIMOPipeline.from_pretrained(tmp_path / "pipe")
    older.set_progress_bar_config(disable=True)
    assert not older.self_conditioning
    assert torch.equal(expected, detect(older, batch, num_inference_steps=3).probabilities)


@pytest.mark.parametrize("modulation", ["qpsk", "16qam"])
def test_a_self_conditioned_model_sees_the_previous_steps_estimate_and_keeps_it_through_save_and_load(
    modulation, tmp_path
):
    pipe, batch = tiny_pipeline(modulation, self_conditioning=True), channel(modulation=modulation)
    assert pipe.self_conditioning, "read off the model's config"
    calls = record_calls(pipe.model)
    expected = detect(pipe, batch, num_inference_steps=3, num_samples=2).probabilities
    assert_each_step_saw_the_previous_estimate(calls, dim=-1)
    pipe.save_pretrained(tmp_path)
    loaded = BinaryFlowMIMOPipeline.from_pretrained(tmp_path)
    loaded.set_progress_bar_config(disable=True)
    assert loaded.self_conditioning
    assert torch.equal(expected, detect(loaded, batch, num_inference_steps=3, num_samples=2).probabilities)
    with pytest.raises(ValueError, match="model was built with self_conditioning=True"):
        BinaryFlowMIMOPipeline(model=pipe.model, scheduler=pipe.scheduler, self_conditioning=False)
    with pytest.raises(ValueError, match=r"Expected sample \(B, \d+\).*self_conditioned_input"):
        pipe.model(batch.bits, torch.full((6,), 500.0), y=batch.y, H=batch.H, noise_var=batch.noise_var)


def test_pipeline_is_deterministic_given_the_generator():
    pipe, batch = tiny_pipeline(), channel()
    a, b = detect(pipe, batch, num_inference_steps=4), detect(pipe, batch, num_inference_steps=4)
    assert torch.equal(a.bits, b.bits) and torch.equal(a.probabilities, b.probabilities)
    assert not torch.equal(a.probabilities, detect(pipe, batch, seed=5, num_inference_steps=4).probabilities)


def test_a_list_of_generators_makes_each_channel_use_independent_of_the_batch():
    pipe, batch = tiny_pipeline(), channel(num=3)
    together = pipe(batch.y, batch.H, batch.noise_var, num_inference_steps=3, num_samples=2,
                    generator=[torch.Generator().manual_seed(i) for i in range(3)])
    alone = pipe(batch.y[1:2], batch.H[1:2], batch.noise_var[1:2], num_inference_steps=3, num_samples=2,
                 generator=[torch.Generator().manual_seed(1)])
    assert torch.allclose(together.probabilities[1:2], alone.probabilities, atol=1e-6)


def test_outputs_are_bits_probabilities_and_samples():
    pipe, batch = tiny_pipeline(), channel()
    out = detect(pipe, batch, num_inference_steps=3, num_samples=5)
    assert out.bits.shape == out.probabilities.shape == (6, 4) and out.sample_bits.shape == (6, 5, 4)
    assert set(out.bits.unique().tolist()) <= {0.0, 1.0} and set(out.sample_bits.unique().tolist()) <= {0.0, 1.0}
    assert ((out.probabilities >= 0) & (out.probabilities <= 1)).all()
    assert torch.equal(out.bits, (out.probabilities > 0.5).float())


def test_vote_takes_the_majority_of_the_samples():
    pipe, batch = tiny_pipeline(), channel()
    out = detect(pipe, batch, num_inference_steps=3, num_samples=5, aggregation="vote")
    assert torch.equal(out.probabilities, out.sample_bits.mean(1))
    assert torch.equal(out.bits, (out.sample_bits.sum(1) >= 3).float())


def test_complex_inputs_equal_their_real_equivalent():
    pipe = tiny_pipeline()
    generator = torch.Generator().manual_seed(2)
    H = torch.randn(4, 2, 2, dtype=torch.complex64, generator=generator)
    y = torch.randn(4, 2, dtype=torch.complex64, generator=generator)
    from diffusers_binflow.mimo import complex_to_real

    y_r, H_r = complex_to_real(y, H, "qpsk")
    a = pipe(y, H, 0.5, num_inference_steps=2, generator=torch.Generator().manual_seed(0))
    b = pipe(y_r, H_r, 0.5, num_inference_steps=2, generator=torch.Generator().manual_seed(0))
    assert torch.equal(a.probabilities, b.probabilities)


def untrained_pipeline(num_tx=2, num_rx=2, modulation="qpsk", **model_kwargs):
    """The network's output layers start at zero: its prediction is the EP cavity's alone."""
    model = MIMOFlowTransformer(num_tx=num_tx, num_rx=num_rx, modulation=modulation, hidden_size=16, num_layers=1,
                                num_heads=2, **model_kwargs)
    pipe = BinaryFlowMIMOPipeline(model=model.eval(), scheduler=BinaryFlowMatchScheduler(prediction_type="logits"))
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.mark.parametrize("modulation", ["qpsk", "16qam"])
def test_a_perfect_channel_is_detected_without_error_by_the_cavity_prior(modulation):
    batch = channel(num=50, modulation=modulation, snr_db=60.0)
    assert torch.equal(detect(untrained_pipeline(modulation=modulation), batch, num_inference_steps=4).bits,
                       batch.bits)


@pytest.mark.parametrize("modulation, snr_db", [("qpsk", 8.0), ("16qam", 16.0)])
def test_one_step_of_the_untrained_model_is_the_ep_detector(modulation, snr_db):
    """At sigma = 1 the state says nothing, so the cavity is EP's on the channel alone."""
    from diffusers_binflow.mimo import expectation_propagation

    batch = channel(num=200, num_tx=3, num_rx=3, modulation=modulation, snr_db=snr_db)
    for iterations in (0, 3):
        out = detect(untrained_pipeline(3, 3, modulation, ep_iterations=iterations), batch, num_inference_steps=1)
        ep = expectation_propagation(batch.y, batch.H, batch.noise_var, modulation, iterations=iterations)
        assert torch.allclose(out.probabilities, ep.probabilities, atol=1e-4)
        assert 0 < (ep.bits != batch.bits).float().mean() < 0.2  # a channel where the detectors err, but rarely


def test_the_16qam_cavities_fuse_the_state_as_a_prior_over_levels():
    """Near the data end the state decides the bits, whatever the channel says; at sigma = 1/2 a state pointing to
    the transmitted levels lowers the channel's error rate, one pointing away raises it."""
    from diffusers_binflow.mimo import expectation_propagation

    batch = channel(num=400, num_tx=3, num_rx=3, modulation="16qam", snr_db=10.0)
    model = untrained_pipeline(3, 3, "16qam").model
    signs = 2 * batch.bits - 1

    def error_rate(state, sigma):
        logits = model(state, torch.full((400,), 1000.0 * sigma), y=batch.y, H=batch.H,
                       noise_var=batch.noise_var).sample
        return ((logits > 0).float() != batch.bits).float().mean().item()

    channel_alone = (expectation_propagation(batch.y, batch.H, batch.noise_var, "16qam").bits != batch.bits)
    channel_alone = channel_alone.float().mean().item()
    assert channel_alone > 0.02
    assert error_rate(-0.99 * signs, 0.01) == 1.0  # the state overrides the channel at the data end
    assert error_rate(0.5 * signs, 0.5) < channel_alone / 2 < channel_alone * 2 < error_rate(-0.5 * signs, 0.5)


def test_a_16qam_model_saved_before_multilevel_cavities_loads_as_it_was_built(tmp_path):
    batch = channel(modulation="16qam")
    model = MIMOFlowTransformer(num_tx=2, num_rx=2, modulation="16qam", hidden_size=16, num_layers=1, num_heads=2,
                                multilevel_cavities=False).eval()
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config.pop("multilevel_cavities") is False
    (tmp_path / "config.json").write_text(json.dumps(config))
    loaded = MIMOFlowTransformer.from_pretrained(tmp_path)
    assert loaded.config.multilevel_cavities is False and not loaded.fuses_state
    args = (torch.randn_like(batch.bits), torch.full((6,), 300.0))
    kwargs = dict(y=batch.y, H=batch.H, noise_var=batch.noise_var)
    assert torch.equal(model(*args, **kwargs).sample, loaded(*args, **kwargs).sample)
    assert MIMOFlowTransformer(num_tx=2, num_rx=2, modulation="16qam").fuses_state  # the default for new models


def test_likelihood_aggregation_picks_the_sample_that_explains_y_best():
    batch = channel(num=40, snr_db=6.0)
    pipe = tiny_pipeline()
    out = detect(pipe, batch, num_inference_steps=3, num_samples=5, aggregation="likelihood")
    symbols = get_modulation("qpsk").bits_to_symbols(out.sample_bits)  # (B, S, n)
    distances = ((batch.y[:, None] - symbols @ batch.H.mT) ** 2).sum(-1)
    best = out.sample_bits[torch.arange(40), distances.argmin(1)]
    assert torch.equal(out.bits, best)
    assert torch.equal((out.probabilities > 0.5).float(), out.bits)


def test_app_aggregation_decides_each_bit_on_the_same_samples_by_its_posterior_over_them():
    from diffusers_binflow.mimo.detectors import list_detection

    batch = channel(num=40, snr_db=6.0)
    pipe = tiny_pipeline()
    best = detect(pipe, batch, num_inference_steps=3, num_samples=5, aggregation="likelihood")
    out = detect(pipe, batch, num_inference_steps=3, num_samples=5, aggregation="app")
    assert torch.equal(out.sample_bits, best.sample_bits)
    symbols = get_modulation("qpsk").bits_to_symbols(out.sample_bits)
    distances = ((batch.y[:, None] - symbols @ batch.H.mT) ** 2).sum(-1)
    app = list_detection(out.sample_bits, distances, batch.noise_var[:, None] / 2, output="app")
    assert torch.equal(out.bits, app.bits) and torch.allclose(out.probabilities, app.probabilities)
    unanimous = (out.sample_bits == out.sample_bits[:, :1]).all(1)
    assert unanimous.any() and torch.equal(out.bits[unanimous], out.sample_bits[:, 0][unanimous])


def test_bad_input_is_refused_with_a_reason():
    pipe, batch = tiny_pipeline(), channel()
    with pytest.raises(ValueError, match="disagree"):
        detect(pipe, type(batch)(**{**batch, "y": batch.y[:4]}))
    with pytest.raises(ValueError, match="trained for qpsk"):
        detect(pipe, batch, modulation="16qam")
    with pytest.raises(ValueError, match="non-finite"):
        pipe(batch.y * float("inf"), batch.H, batch.noise_var)
    other = channel(num_tx=3, num_rx=3)
    with pytest.raises(ValueError, match="2x2 qpsk"):
        detect(pipe, other)
    with pytest.raises(ValueError, match="num_tx=2, num_rx=2"):
        pipe(torch.randn(2, 3, dtype=torch.complex64), torch.randn(2, 3, 3, dtype=torch.complex64), 1.0)
    with pytest.raises(ValueError, match="aggregation"):
        detect(pipe, batch, aggregation="median")
    pipe.scheduler = BinaryFlowMatchScheduler.from_config(pipe.scheduler.config, bit_scale=2.0)
    with pytest.raises(ValueError, match="bit_scale is 2.0, but MIMO models work at bit_scale 1"):
        detect(pipe, batch)


def test_a_scheduler_whose_prediction_type_disagrees_with_the_model_is_refused():
    pipe, batch = tiny_pipeline(prediction_type="logits"), channel()
    expected = detect(pipe, batch, num_inference_steps=3).probabilities
    scheduler = pipe.scheduler
    pipe.scheduler = BinaryFlowMatchScheduler()  # prediction_type="sample": would read logits as x_hat
    with pytest.raises(ValueError, match="model predicts 'logits' but the scheduler's prediction_type is 'sample'"):
        detect(pipe, batch, num_inference_steps=3)
    pipe.scheduler = BinaryFlowMatchScheduler.from_config(pipe.scheduler.config, prediction_type="logits")  # the fix
    assert torch.equal(detect(pipe, batch, num_inference_steps=3).probabilities, expected)
    pipe.scheduler = scheduler


@pytest.mark.parametrize("noise_var", [0.1 + 0.1j, torch.full((6,), 0.1 + 0.1j)], ids=["complex", "complex-tensor"])
def test_a_complex_noise_variance_is_refused(noise_var):
    pipe, batch = tiny_pipeline(), channel()
    with pytest.raises(ValueError, match="`noise_var` .N0. is the real noise variance.*got a complex value"):
        pipe(batch.y, batch.H, noise_var, num_inference_steps=2)
    with pytest.raises(ValueError, match="got a complex value"):
        pipe.model.channel_features(batch.y, batch.H, noise_var)
    from diffusers_binflow.mimo import get_modulation, lmmse

    with pytest.raises(ValueError, match="got a complex value"):  # the classical detectors check it the same way
        lmmse(batch.y, batch.H, noise_var, get_modulation("qpsk"))


# ------------------------------------------------------------------------------------------ callbacks


def test_callback_sees_each_step_and_can_replace_the_latents():
    pipe, batch = tiny_pipeline(), channel()
    seen, target = [], (torch.rand(12, 4, generator=torch.Generator().manual_seed(3)) < 0.5).float()

    def force_target_at_last_step(pipeline, i, t, callback_kwargs):
        seen.append((i, float(t), tuple(callback_kwargs), tuple(callback_kwargs["latents"].shape)))
        if i == pipeline.num_timesteps - 1:
            return {"latents": 2 * target - 1}
        return callback_kwargs

    out = detect(pipe, batch, num_inference_steps=4, num_samples=2, callback_on_step_end=force_target_at_last_step)
    assert [s[0] for s in seen] == [0, 1, 2, 3] and seen[0][1] == 1000.0
    assert seen[0][2] == ("latents",) and seen[0][3] == (12, 4)  # B * num_samples rows
    assert torch.equal(out.sample_bits, target.view(6, 2, 4))


def test_pipeline_callback_objects_and_interrupt():
    pipe, batch = tiny_pipeline(), channel()
    calls = []
    pipe.model.register_forward_hook(lambda *args: calls.append(1))
    callback = StopAfterFirstStep()
    detect(pipe, batch, num_inference_steps=4, callback_on_step_end=callback)
    assert callback.steps == 1 and len(calls) == 1
    detect(pipe, batch, num_inference_steps=4)
    assert len(calls) == 5  # the next call runs all its steps


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"callback_on_step_end": lambda *a: {}, "callback_on_step_end_tensor_inputs": ["x0"]},
         r"\['x0'\] are not among \['latents'\]"),
        ({"callback_on_step_end": 3}, "must be callable"),
        ({"callback_on_step_end": lambda *a: None}, "must return a dict"),
    ],
)
def test_bad_callbacks_are_refused_with_a_clear_error(kwargs, message):
    pipe, batch = tiny_pipeline(), channel()
    with pytest.raises(ValueError, match=message):
        detect(pipe, batch, num_inference_steps=2, **kwargs)


def test_push_to_hub_and_load_in_a_fresh_process(session_hub, tmp_path):
    pipe, batch = tiny_pipeline(), channel()
    pipe.push_to_hub("tester/mimo-tiny")
    files = session_hub.files("tester/mimo-tiny")
    assert json.loads(files["model_index.json"])["_class_name"] == ["pipeline_binary_flow_mimo",
                                                                     "BinaryFlowMIMOPipeline"]
    assert {"pipeline_binary_flow_mimo.py", "model/diffusers_binflow.mimo.model.py",
            "model/diffusion_pytorch_model.safetensors"} <= set(files)
    expected = detect(pipe, batch, num_inference_steps=3).probabilities
    torch.save({"y": batch.y, "H": batch.H, "n0": batch.noise_var}, tmp_path / "batch.pt")
    out = run_client(session_hub, tmp_path, textwrap.dedent("""
        import torch, diffusers_binflow
        from diffusers import DiffusionPipeline
        from diffusers_binflow import pipelines
        b = torch.load("batch.pt")
        results = {}
        for name, pipe in (("ours", pipelines.BinaryFlowMIMOPipeline.from_pretrained("tester/mimo-tiny")),
                           ("generic", DiffusionPipeline.from_pretrained("tester/mimo-tiny", trust_remote_code=True))):
            pipe.set_progress_bar_config(disable=True)
            out = pipe(b["y"], b["H"], b["n0"], num_inference_steps=3, generator=torch.Generator().manual_seed(0))
            results[name] = out.probabilities.tolist()
        emit(results)
    """))
    assert torch.allclose(torch.tensor(out["ours"]), expected) and out["ours"] == out["generic"]
