import copy
import inspect
import json

import numpy as np
import PIL.Image
import pytest
import torch
from diffusers import (
    DDPMScheduler,
    DiTTransformer2DModel,
    FlowMatchEulerDiscreteScheduler,
    FlowMatchHeunDiscreteScheduler,
    UNet2DModel,
)

from diffusers_binflow import BinaryFlowMatchScheduler, BinaryFlowPipeline
from diffusers_binflow.flow import predict_x0
from tests.pipelines.oracle_denoiser import OracleDenoiser
from tests.helpers import StopAfterFirstStep, assert_each_step_saw_the_previous_estimate, record_calls


def tiny_unet(num_class_embeds=None, seed=0, self_conditioning=False):
    """A 1-channel denoiser; self-conditioned, it takes 2 channels: the sample and the previous estimate."""
    torch.manual_seed(seed)
    return UNet2DModel(sample_size=8, in_channels=2 if self_conditioning else 1, out_channels=1,
                       block_out_channels=(4, 8), layers_per_block=1, norm_num_groups=4,
                       down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
                       num_class_embeds=num_class_embeds)


def tiny_pipeline(self_conditioning=False, **scheduler_kwargs):
    pipe = BinaryFlowPipeline(unet=tiny_unet(self_conditioning=self_conditioning),
                              scheduler=BinaryFlowMatchScheduler(**scheduler_kwargs), self_conditioning=self_conditioning)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def conditional_pipeline(num_classes=3, self_conditioning=False, **scheduler_kwargs):
    pipe = BinaryFlowPipeline(unet=tiny_unet(num_class_embeds=num_classes + 1, self_conditioning=self_conditioning),
                              scheduler=BinaryFlowMatchScheduler(**scheduler_kwargs), null_class_label=num_classes,
                              self_conditioning=self_conditioning)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def seeded(seed=0):
    return torch.Generator().manual_seed(seed)


# -------------------------------------------------------------------------------------------- outputs


def test_output_types_hold_bits_in_diffusers_layouts():
    pipe = tiny_pipeline()
    kwargs = dict(batch_size=2, num_inference_steps=3)
    pil = pipe(**kwargs, generator=seeded(), output_type="pil").images
    np_images = pipe(**kwargs, generator=seeded(), output_type="np").images
    pt = pipe(**kwargs, generator=seeded(), output_type="pt").images
    assert len(pil) == 2 and pil[0].mode == "L" and set(np.unique(np.asarray(pil[0]))) <= {0, 255}
    assert np_images.shape == (2, 8, 8, 1) and set(np.unique(np_images)) <= {0.0, 1.0}
    assert pt.shape == (2, 1, 8, 8)
    np.testing.assert_array_equal(pt.permute(0, 2, 3, 1).numpy(), np_images)
    np.testing.assert_array_equal(np.asarray(pil[1])[..., None] / 255, np_images[1])


def test_probs_are_the_last_prediction_and_threshold_to_the_bits():
    pipe = tiny_pipeline()
    probs = pipe(batch_size=2, num_inference_steps=3, generator=seeded(), output_type="probs").images
    bits = pipe(batch_size=2, num_inference_steps=3, generator=seeded(), output_type="pt").images
    assert probs.min() >= 0 and probs.max() <= 1 and not set(probs.unique().tolist()) <= {0.0, 1.0}
    torch.testing.assert_close((probs > 0.5).float(), bits)


def test_latent_output_is_the_final_signal():
    pipe = tiny_pipeline(bit_scale=0.5)
    latents = pipe(batch_size=2, num_inference_steps=3, generator=seeded(), output_type="latent").images
    assert set(latents.unique().tolist()) <= {-0.5, 0.5}


def test_bernoulli_final_step_draws_from_the_generator():
    pipe = tiny_pipeline(final_step="bernoulli")
    a = pipe(batch_size=2, num_inference_steps=2, generator=seeded(1), output_type="pt").images
    b = pipe(batch_size=2, num_inference_steps=2, generator=seeded(1), output_type="pt").images
    assert torch.equal(a, b)


# ------------------------------------------------------------------------- diffusers pipeline checks


def test_call_signature_has_the_diffusers_arguments():
    parameters = inspect.signature(BinaryFlowPipeline.__call__).parameters
    for name in ("batch_size", "num_inference_steps", "generator", "latents", "output_type", "return_dict",
                 "callback_on_step_end", "callback_on_step_end_tensor_inputs", "class_labels", "guidance_scale"):
        assert name in parameters and parameters[name].default is not inspect.Parameter.empty


def test_batch_item_equals_a_single_call_with_its_generator():
    for final_step in ("threshold", "bernoulli"):
        pipe = tiny_pipeline(final_step=final_step)
        batched = pipe(batch_size=3, num_inference_steps=3, output_type="pt",
                       generator=[seeded(s) for s in (4, 5, 6)]).images
        single = pipe(batch_size=1, num_inference_steps=3, output_type="pt", generator=seeded(5)).images
        assert len(batched) == 3 and torch.equal(batched[1:2], single)


def test_dict_and_tuple_outputs_are_equal():
    pipe = tiny_pipeline()
    as_dict = pipe(num_inference_steps=2, generator=seeded(), output_type="np").images
    (as_tuple,) = pipe(num_inference_steps=2, generator=seeded(), output_type="np", return_dict=False)
    np.testing.assert_array_equal(as_dict, as_tuple)


def test_components_and_offload_sequence():
    pipe = tiny_pipeline()
    assert set(pipe.components) == {"unet", "scheduler"}
    assert pipe.model_cpu_offload_seq == "unet"


def test_save_and_load_locally_gives_identical_outputs(tmp_path):
    pipe = conditional_pipeline(solver="heun", prediction_type="logits")
    pipe.save_pretrained(tmp_path)
    model_index = json.loads((tmp_path / "model_index.json").read_text())
    assert model_index["scheduler"] == ["diffusers_binflow.schedulers.scheduling_binary_flow_match",
                                        "BinaryFlowMatchScheduler"]
    assert model_index["unet"] == ["diffusers", "UNet2DModel"] and model_index["null_class_label"] == 3
    assert (tmp_path / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    loaded = BinaryFlowPipeline.from_pretrained(tmp_path)
    loaded.set_progress_bar_config(disable=True)
    assert loaded.config.null_class_label == 3 and loaded.scheduler.config.solver == "heun"
    kwargs = dict(batch_size=2, class_labels=[0, 2], guidance_scale=2.0, num_inference_steps=3, output_type="probs")
    torch.testing.assert_close(pipe(**kwargs, generator=seeded()).images, loaded(**kwargs, generator=seeded()).images,
                               rtol=0, atol=0)


def test_loading_refuses_pickled_weights(tmp_path):
    tiny_pipeline().save_pretrained(tmp_path, safe_serialization=False)
    with pytest.raises(Exception, match="safetensors"):
        BinaryFlowPipeline.from_pretrained(tmp_path)


def test_progress_bar_reports_the_steps_and_honours_its_config(capsys):
    pipe = BinaryFlowPipeline(unet=tiny_unet(), scheduler=BinaryFlowMatchScheduler(solver="heun"))
    pipe(num_inference_steps=3)
    assert "5/5" in capsys.readouterr().err  # Heun: 2 model calls per step, 1 on the last
    assert pipe.num_timesteps == 5
    pipe.scheduler = BinaryFlowMatchScheduler(heun_first_step=True)
    pipe(num_inference_steps=3)
    assert "4/4" in capsys.readouterr().err and pipe.num_timesteps == 4  # a Heun first step: one call more
    pipe.set_progress_bar_config(disable=True)
    pipe(num_inference_steps=3)
    assert capsys.readouterr().err == ""


def test_callback_sees_each_step_and_can_replace_the_latents():
    pipe = tiny_pipeline()
    seen = []

    def zero_at_last_step(pipeline, i, t, callback_kwargs):
        seen.append((i, float(t), tuple(callback_kwargs)))
        if i == pipeline.num_timesteps - 1:
            return {"latents": torch.zeros_like(callback_kwargs["latents"])}
        return callback_kwargs

    latents = pipe(num_inference_steps=4, output_type="latent", callback_on_step_end=zero_at_last_step).images
    assert [s[0] for s in seen] == [0, 1, 2, 3] and seen[0][1] == 1000.0 and seen[0][2] == ("latents",)
    assert torch.count_nonzero(latents) == 0


def test_pipeline_callback_objects_and_interrupt():
    pipe = tiny_pipeline(final_step="none")
    callback = StopAfterFirstStep()
    latents = pipe(num_inference_steps=4, output_type="latent", callback_on_step_end=callback,
                   generator=seeded()).images
    assert callback.steps == 1
    assert not set(latents.unique().tolist()) <= {-1.0, 1.0}  # stopped before the final step


# ---------------------------------------------------------------------------- guidance and classes


def test_x_space_guidance_combines_the_class_and_null_predictions():
    for prediction_type in ("sample", "logits", "velocity"):
        pipe = conditional_pipeline(prediction_type=prediction_type)
        latents = torch.randn(2, 1, 8, 8, generator=seeded())
        t, labels = torch.tensor(600.0), torch.tensor([0, 1])
        x_class = pipe_x0(pipe, pipe.predict(latents, t, labels, 1.0), latents, t)
        x_null = pipe_x0(pipe, pipe._denoise(latents, t, torch.full_like(labels, 3)), latents, t)
        for scale in (0.0, 2.5):
            guided = pipe_x0(pipe, pipe.predict(latents, t, labels, scale), latents, t)
            expected = x_null + scale * (x_class - x_null)
            if prediction_type == "logits":  # an x beyond +-1 has no logit: compare where it is representable
                inside = expected.abs() < 0.999
                torch.testing.assert_close(guided[inside], expected[inside], rtol=1e-4, atol=1e-4)
            else:
                torch.testing.assert_close(guided, expected, rtol=1e-4, atol=1e-5)


def pipe_x0(pipe, model_output, latents, t):
    return predict_x0(model_output, latents, t / 1000, pipe.prediction_type, pipe.bit_scale)


def test_class_labels_change_the_samples_and_broadcast():
    pipe = conditional_pipeline()
    a = pipe(batch_size=2, class_labels=0, num_inference_steps=3, generator=seeded(), output_type="probs").images
    b = pipe(batch_size=2, class_labels=[0, 0], num_inference_steps=3, generator=seeded(), output_type="probs").images
    c = pipe(batch_size=2, class_labels=[1, 1], num_inference_steps=3, generator=seeded(), output_type="probs").images
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_a_class_conditional_denoiser_without_labels_generates_through_its_null_class():
    pipe = conditional_pipeline()
    seen = []
    pipe.unet.register_forward_pre_hook(lambda module, args, kwargs: seen.append(kwargs["class_labels"]),
                                        with_kwargs=True)
    images = pipe(batch_size=2, num_inference_steps=2, output_type="np").images
    assert images.shape == (2, 8, 8, 1) and len(seen) == 2
    assert all(torch.equal(labels, torch.tensor([3, 3])) for labels in seen)
    without_null = BinaryFlowPipeline(unet=tiny_unet(num_class_embeds=4), scheduler=BinaryFlowMatchScheduler())
    with pytest.raises(ValueError, match="pass `class_labels`"):
        without_null(num_inference_steps=2)


def test_dit_transformer_denoiser_works_class_conditionally(tmp_path):
    torch.manual_seed(0)
    dit = DiTTransformer2DModel(num_attention_heads=2, attention_head_dim=8, in_channels=1, out_channels=1,
                                num_layers=1, norm_num_groups=1, sample_size=8, patch_size=2, num_embeds_ada_norm=4)
    pipe = BinaryFlowPipeline(unet=dit, scheduler=BinaryFlowMatchScheduler(), null_class_label=4)
    pipe.set_progress_bar_config(disable=True)
    images = pipe(batch_size=2, class_labels=[1, 3], guidance_scale=1.5, num_inference_steps=3, output_type="np",
                  generator=seeded()).images
    assert images.shape == (2, 8, 8, 1) and set(np.unique(images)) <= {0.0, 1.0}
    pipe.save_pretrained(tmp_path)
    loaded = BinaryFlowPipeline.from_pretrained(tmp_path)
    loaded.set_progress_bar_config(disable=True)
    again = loaded(batch_size=2, class_labels=[1, 3], guidance_scale=1.5, num_inference_steps=3, output_type="np",
                   generator=seeded()).images
    np.testing.assert_array_equal(images, again)


# ------------------------------------------------------------------------------ scheduler swaps


def test_flow_match_euler_gives_the_same_bits_for_a_velocity_model():
    sigmas = [1.0, 0.7, 0.4, 0.1]
    ours = tiny_pipeline(prediction_type="velocity")
    theirs = BinaryFlowPipeline(unet=ours.unet, scheduler=FlowMatchEulerDiscreteScheduler())
    theirs.set_progress_bar_config(disable=True)
    assert theirs.prediction_type == "velocity"
    a = ours(batch_size=2, sigmas=sigmas, generator=seeded(), output_type="pt").images
    b = theirs(batch_size=2, sigmas=sigmas, generator=seeded(), output_type="pt").images
    assert torch.equal(a, b)


def test_flow_match_euler_swapped_in_by_from_config_converts_an_x_prediction():
    sigmas = [1.0, 0.7, 0.4, 0.1]
    ours = tiny_pipeline(prediction_type="logits")
    swapped = BinaryFlowPipeline(unet=ours.unet,
                                 scheduler=FlowMatchEulerDiscreteScheduler.from_config(ours.scheduler.config))
    swapped.set_progress_bar_config(disable=True)
    assert swapped.prediction_type == "logits"
    a = ours(batch_size=2, sigmas=sigmas, generator=seeded(), output_type="probs").images
    b = swapped(batch_size=2, sigmas=sigmas, generator=seeded(), output_type="probs").images
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_a_non_flow_scheduler_is_refused_with_the_reason():
    pipe = BinaryFlowPipeline(unet=tiny_unet(), scheduler=DDPMScheduler())
    with pytest.raises(ValueError, match="not one of the flow-matching ODE solvers"):
        pipe(num_inference_steps=2)


SWAP_SIGMAS = [1.0, 0.75, 0.5, 0.25]


def oracle_pipeline(**scheduler_kwargs):
    """A pipeline whose x-prediction is that of a perfectly trained model: the exact posterior mean of 4 prototypes."""
    prototypes = (torch.rand(4, 64, generator=seeded(3)) < 0.5).float()
    pipe = BinaryFlowPipeline(unet=OracleDenoiser(prototypes, sample_size=8),
                              scheduler=BinaryFlowMatchScheduler(**scheduler_kwargs))
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.mark.parametrize("make_pipeline", [oracle_pipeline, tiny_pipeline], ids=["trained", "untrained"])
def test_a_fresh_flow_match_euler_swapped_into_an_x_prediction_pipeline_gives_the_native_bits(make_pipeline):
    pipe = make_pipeline(prediction_type="sample")
    native = pipe(batch_size=8, sigmas=SWAP_SIGMAS, generator=seeded(), output_type="pt").images
    pipe.scheduler = FlowMatchEulerDiscreteScheduler()
    swapped = pipe(batch_size=8, sigmas=SWAP_SIGMAS, generator=seeded(), output_type="pt").images
    assert pipe.prediction_type == "sample" and pipe.config.prediction_type == "sample"
    assert torch.equal(native, swapped)


def test_flow_match_heun_gives_the_bits_of_the_native_heun_solver_on_its_grid():
    heun = FlowMatchHeunDiscreteScheduler()
    heun.set_timesteps(4)
    grid = heun.sigmas[0::2].tolist()  # each interior sigma appears twice in Heun's grid; the terminal 0 once
    pipe = tiny_pipeline(prediction_type="logits", solver="heun")
    native = pipe(batch_size=4, sigmas=grid, generator=seeded(), output_type="probs").images
    pipe.scheduler = heun
    swapped = pipe(batch_size=4, num_inference_steps=4, generator=seeded(), output_type="probs").images
    assert pipe.num_timesteps == 7  # 2 model calls per step, 1 on the last
    torch.testing.assert_close(native, swapped, rtol=1e-5, atol=1e-6)
    assert torch.equal(native > 0.5, swapped > 0.5)


@pytest.mark.parametrize(
    "scheduler, message",
    [
        (BinaryFlowMatchScheduler(), r"reads model outputs as prediction_type='sample', bit_scale=1.0"),
        (BinaryFlowMatchScheduler(prediction_type="logits", bit_scale=2.0), r"bit_scale=2.0, but this pipeline"),
    ],
)
def test_a_binary_flow_scheduler_that_reads_the_output_otherwise_is_refused(scheduler, message):
    pipe = tiny_pipeline(prediction_type="logits")
    pipe.scheduler = scheduler
    with pytest.raises(ValueError, match=message):
        pipe(num_inference_steps=2)


def test_the_pipeline_records_what_its_denoiser_predicts_and_accepts_diffusers_name_for_the_velocity():
    pipe = tiny_pipeline(prediction_type="logits", bit_scale=0.5)
    assert (pipe.config.prediction_type, pipe.config.bit_scale) == ("logits", 0.5)
    fresh = BinaryFlowPipeline(unet=pipe.unet, scheduler=FlowMatchEulerDiscreteScheduler(),
                               prediction_type="flow_prediction")
    assert fresh.prediction_type == "velocity" and fresh.bit_scale == 1.0
    with pytest.raises(ValueError, match="bit_scale"):
        BinaryFlowPipeline(unet=pipe.unet, scheduler=FlowMatchEulerDiscreteScheduler(), bit_scale=float("nan"))


def test_a_pipeline_saved_before_it_recorded_its_prediction_type_loads_and_samples_as_before(tmp_path):
    """Nor its `self_conditioning`: without the key a pipeline is not self-conditioned."""
    pipe = conditional_pipeline(prediction_type="logits", bit_scale=0.5)
    pipe.save_pretrained(tmp_path)
    model_index = json.loads((tmp_path / "model_index.json").read_text())
    assert (model_index["prediction_type"], model_index["bit_scale"], model_index["self_conditioning"]) == \
        ("logits", 0.5, False)
    del model_index["prediction_type"], model_index["bit_scale"], model_index["self_conditioning"]
    (tmp_path / "model_index.json").write_text(json.dumps(model_index))
    loaded = BinaryFlowPipeline.from_pretrained(tmp_path)
    loaded.set_progress_bar_config(disable=True)
    assert (loaded.prediction_type, loaded.bit_scale, loaded.self_conditioning) == ("logits", 0.5, False)
    kwargs = dict(batch_size=2, class_labels=[0, 2], guidance_scale=2.0, num_inference_steps=3, output_type="probs")
    assert torch.equal(pipe(**kwargs, generator=seeded()).images, loaded(**kwargs, generator=seeded()).images)


@pytest.mark.parametrize("scheduler_class", [BinaryFlowMatchScheduler, FlowMatchEulerDiscreteScheduler,
                                             FlowMatchHeunDiscreteScheduler])
def test_a_denoiser_that_outputs_nan_is_refused_instead_of_read_as_bits(scheduler_class):
    pipe = tiny_pipeline()
    pipe.scheduler = scheduler_class()
    with torch.no_grad():
        pipe.unet.conv_out.bias[0] = float("nan")
    with pytest.raises(ValueError, match=r"step 0 \(sigma = 1\) holds NaN or inf"):
        pipe(num_inference_steps=2, output_type="pt")


# ---------------------------------------------------------------------------------- self-conditioning


def test_a_self_conditioned_denoiser_sees_the_previous_steps_estimate_also_in_completion():
    pipe = tiny_pipeline(self_conditioning=True, prediction_type="logits")
    assert pipe.sample_shape == (1, 8, 8)
    calls = record_calls(pipe.unet)
    pipe(batch_size=2, num_inference_steps=3, generator=seeded(), output_type="pt")
    assert_each_step_saw_the_previous_estimate(calls, dim=1)
    calls.clear()
    mask = torch.zeros(1, 1, 8, 8)
    mask[..., 4:, :] = 1
    pipe(batch_size=2, image=torch.ones(1, 1, 8, 8), mask_image=mask, num_inference_steps=3, generator=seeded(),
         output_type="pt")
    assert_each_step_saw_the_previous_estimate(calls, dim=1)  # the estimate, not the known bits put back


def test_a_self_conditioned_dit_transformer_samples_with_guidance():
    torch.manual_seed(0)
    dit = DiTTransformer2DModel(num_attention_heads=2, attention_head_dim=8, in_channels=2, out_channels=1,
                                num_layers=1, norm_num_groups=1, sample_size=8, patch_size=2, num_embeds_ada_norm=4)
    pipe = BinaryFlowPipeline(unet=dit, scheduler=BinaryFlowMatchScheduler(), null_class_label=3,
                              self_conditioning=True)
    pipe.set_progress_bar_config(disable=True)
    calls = record_calls(dit)
    images = pipe(batch_size=2, class_labels=[0, 2], guidance_scale=2.0, num_inference_steps=2, output_type="pt",
                  generator=seeded()).images
    assert images.shape == (2, 1, 8, 8)
    class_condition, null_condition = calls[1][0][:, 1:].chunk(2)  # both passes see the guided estimate
    assert torch.equal(class_condition, null_condition) and class_condition.abs().sum() > 0


def test_a_denoiser_whose_input_channels_do_not_fit_the_self_conditioning_is_refused():
    with pytest.raises(ValueError, match=r"self_conditioning=True\): .* in_channels=1, out_channels=1"):
        BinaryFlowPipeline(unet=tiny_unet(), scheduler=BinaryFlowMatchScheduler(), self_conditioning=True)
    with pytest.raises(ValueError, match="takes 2 channel.* create the pipeline with self_conditioning=True"):
        BinaryFlowPipeline(unet=tiny_unet(self_conditioning=True), scheduler=BinaryFlowMatchScheduler())
    pipe = tiny_pipeline()
    pipe.unet = tiny_unet(self_conditioning=True)  # swapped in after construction: refused at the call
    with pytest.raises(ValueError, match="takes 2 channel"):
        pipe(num_inference_steps=2)


# ----------------------------------------------------------------------------------- completion


@pytest.mark.parametrize("solver", [{}, {"solver": "heun"}, {"heun_first_step": True}, {"solver": "multistep"}],
                         ids=["euler", "heun", "heun_first_step", "multistep"])
def test_completion_keeps_known_bits_exactly_for_every_output_and_format(solver):
    """Also with Heun's predictor and corrector, where the known bits are re-imposed between the two calls, and
    with the multistep solver, which extrapolates from the estimate made before they were last re-imposed."""
    pipe = tiny_pipeline(final_step="bernoulli", **solver)
    image = (torch.rand(2, 1, 8, 8, generator=seeded(9)) < 0.5).float()
    mask = torch.zeros(1, 1, 8, 8)
    mask[..., 2:6, 2:6] = 1
    out = pipe(batch_size=2, image=image, mask_image=mask, num_inference_steps=3, generator=seeded(),
               output_type="pt").images
    keep = mask.expand(2, -1, -1, -1) == 0
    assert torch.equal(out[keep], image[keep])
    assert not torch.equal(out, image)  # the masked square was generated
    probs = pipe(batch_size=2, image=image, mask_image=mask, num_inference_steps=3, generator=seeded(),
                 output_type="probs").images
    assert torch.equal(probs[keep], image[keep])
    pil_image = [PIL.Image.fromarray((i[0].numpy() * 255).astype(np.uint8)) for i in image]
    pil_mask = PIL.Image.fromarray((mask[0, 0].numpy() * 255).astype(np.uint8))
    from_pil = pipe(batch_size=2, image=pil_image, mask_image=pil_mask, num_inference_steps=3, generator=seeded(),
                    output_type="pt").images
    assert torch.equal(from_pil, out)


def test_completion_with_the_exact_posterior_recovers_the_prototype_of_the_known_half():
    prototypes = (torch.rand(4, 64, generator=seeded(3)) < 0.5).float()
    pipe = BinaryFlowPipeline(unet=OracleDenoiser(prototypes, sample_size=8),
                              scheduler=BinaryFlowMatchScheduler(stochastic_sampling=True))
    pipe.set_progress_bar_config(disable=True)
    mask = torch.zeros(1, 1, 8, 8)
    mask[..., 4:, :] = 1  # generate the bottom half
    for k in range(4):
        target = prototypes[k].view(1, 1, 8, 8)
        out = pipe(batch_size=100, image=target, mask_image=mask, num_inference_steps=32, generator=seeded(k),
                   output_type="pt").images
        recovered = (out == target).flatten(1).all(1).float().mean().item()
        assert recovered >= 0.95, (k, recovered)


# ------------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"num_inference_steps": 0}, "positive integer"),
        ({"output_type": "jpeg"}, "output_type"),
        ({"class_labels": [1]}, "unconditional"),
        ({"guidance_scale": 3.0}, "guidance"),
        ({"batch_size": 2, "generator": [torch.Generator()]}, "generators"),
        ({"image": torch.zeros(1, 1, 8, 8)}, "both `image` and `mask_image`"),
        ({"image": torch.zeros(1, 1, 4, 4), "mask_image": torch.zeros(1, 1, 4, 4)}, r"\(C, H, W\)"),
        ({"image": torch.full((1, 1, 8, 8), 0.5), "mask_image": torch.zeros(1, 1, 8, 8)}, "`image` must hold only"),
        ({"image": torch.zeros(1, 1, 8, 8), "mask_image": torch.full((1, 1, 8, 8), 2.0)}, "`mask_image` must hold"),
        ({"batch_size": 2, "image": torch.zeros(3, 1, 8, 8), "mask_image": torch.zeros(1, 1, 8, 8)}, "3 images"),
        ({"image": "digits.png", "mask_image": torch.zeros(1, 1, 8, 8)}, "PIL image"),
        ({"latents": torch.zeros(1, 1, 4, 4)}, "`latents` must have shape"),
        ({"callback_on_step_end": lambda *a: {}, "callback_on_step_end_tensor_inputs": ["noise"]}, "noise"),
    ],
)
def test_bad_input_is_refused_with_a_clear_error(kwargs, message):
    with pytest.raises((ValueError, TypeError), match=message):
        tiny_pipeline()(**kwargs)


@pytest.mark.parametrize("batch_size", [0, -1, 2.0, True, "2"])
def test_batch_size_must_be_a_positive_integer(batch_size):
    with pytest.raises(ValueError, match="`batch_size` must be a positive integer"):
        tiny_pipeline()(batch_size=batch_size, num_inference_steps=2)


@pytest.mark.parametrize("generator", [(torch.Generator(),), 0, [torch.Generator(), 1]])
def test_generator_must_be_a_torch_generator_or_a_list_of_them(generator):
    with pytest.raises(ValueError, match="`generator` must be a torch.Generator or a list of them"):
        tiny_pipeline()(batch_size=2, num_inference_steps=2, generator=generator)


@pytest.mark.parametrize("sigmas", [torch.tensor(SWAP_SIGMAS), np.array(SWAP_SIGMAS)], ids=["tensor", "array"])
def test_sigmas_as_a_tensor_or_array_equal_the_list(sigmas):
    for scheduler in (BinaryFlowMatchScheduler(), FlowMatchEulerDiscreteScheduler()):
        pipe = tiny_pipeline()
        pipe.scheduler = scheduler
        expected = pipe(batch_size=2, sigmas=SWAP_SIGMAS, generator=seeded(), output_type="probs").images
        assert torch.equal(pipe(batch_size=2, sigmas=sigmas, generator=seeded(), output_type="probs").images, expected)


@pytest.mark.parametrize(
    "scheduler, sigmas, message",
    [
        (BinaryFlowMatchScheduler(), torch.ones(2, 2), "1-D sequence"),
        (BinaryFlowMatchScheduler(), [], "non-empty"),
        (FlowMatchEulerDiscreteScheduler(), [1.0, 0.5, 0.0], "must be positive"),
        (FlowMatchHeunDiscreteScheduler(), [1.0, 0.5], "takes no custom `sigmas`"),
    ],
)
def test_bad_sigmas_are_refused(scheduler, sigmas, message):
    pipe = tiny_pipeline()
    pipe.scheduler = scheduler
    with pytest.raises(ValueError, match=message):
        pipe(sigmas=sigmas)


@pytest.mark.parametrize("guidance_scale", [float("nan"), float("inf"), -float("inf")])
def test_guidance_scale_must_be_finite(guidance_scale):
    with pytest.raises(ValueError, match="`guidance_scale` must be a finite number"):
        conditional_pipeline()(batch_size=2, class_labels=[0, 1], guidance_scale=guidance_scale,
                               num_inference_steps=2)


@pytest.mark.parametrize("labels", [[0.0, 1.0], [True, False], torch.tensor([0.5, 1.0])])
def test_class_labels_must_be_integer_ids(labels):
    with pytest.raises(ValueError, match="`class_labels` must be integer class ids"):
        conditional_pipeline()(batch_size=2, class_labels=labels, num_inference_steps=2)


@pytest.mark.parametrize("labels, message", [([3], "null label"), ([7], r"\[0, 4\)"), ([-1], "class ids"),
                                             ([0, 1, 2], "3 class labels")])
def test_bad_class_labels_are_refused(labels, message):
    with pytest.raises(ValueError, match=message):
        conditional_pipeline()(batch_size=2, class_labels=labels)


def test_a_likelihood_residual_denoiser_with_a_zero_residual_samples_independent_fair_bits(tmp_path):
    """A zero residual is the exact denoiser of independent fair bits (each bit's log-odds given its own noisy
    value): the pipeline then draws fair, uncorrelated pixels, and the prediction type survives save and load."""
    pipe = tiny_pipeline(prediction_type="likelihood_residual")
    with torch.no_grad():
        pipe.unet.conv_out.weight.zero_()
        pipe.unet.conv_out.bias.zero_()
    assert pipe.prediction_type == "likelihood_residual"
    bits = pipe(batch_size=256, num_inference_steps=8, generator=seeded(), output_type="pt").images.flatten(1)
    assert abs(bits.mean().item() - 0.5) < 0.01
    neighbours = torch.corrcoef(torch.stack([bits[:, :-1].flatten(), bits[:, 1:].flatten()]))[0, 1]
    assert abs(neighbours.item()) < 0.02
    pipe.save_pretrained(tmp_path)
    loaded = BinaryFlowPipeline.from_pretrained(tmp_path)
    assert loaded.prediction_type == loaded.scheduler.config.prediction_type == "likelihood_residual"
    # a residual of -3 nats everywhere: the full likelihood keeps bits that reached the data end positive although
    # the network rejects them; a scheduler capping the likelihood at 2 nats lets it veto every bit
    with torch.no_grad():
        pipe.unet.conv_out.bias.fill_(-3.0)
    vetoed = pipe(batch_size=16, num_inference_steps=8, generator=seeded(), output_type="pt").images
    assert vetoed.mean().item() > 0.01
    pipe.scheduler = BinaryFlowMatchScheduler.from_config(pipe.scheduler.config, likelihood_cap=2.0)
    assert pipe.readout() == ("likelihood_residual", 1.0, 2.0)
    assert pipe(batch_size=16, num_inference_steps=8, generator=seeded(), output_type="pt").images.sum() == 0


@pytest.mark.parametrize("solver", ["euler", "heun"])
@pytest.mark.parametrize("guidance_scale", [1.0, 2.0])
def test_the_last_evaluation_is_read_under_the_final_likelihood_cap_by_the_bits_the_probs_and_guidance(
        guidance_scale, solver):
    """With `final_likelihood_cap`, the evaluation whose step lands on sigma = 0 is read under that cap by the bits,
    the `"probs"` output and both guidance branches alike, with Euler and with Heun (whose grid repeats each interior
    sigma). Oracle: the last step alone, from the state before it, by a scheduler with that cap at every step."""
    pipe = conditional_pipeline(prediction_type="likelihood_residual", final_likelihood_cap=0.5, solver=solver)
    with torch.no_grad():
        pipe.unet.conv_out.weight.mul_(20.0)  # residuals of several nats, against the likelihood's ~24 at sigma 0.25
    steps, labels = 4, [0, 2]
    kwargs = dict(batch_size=2, class_labels=labels, guidance_scale=guidance_scale, num_inference_steps=steps)
    states = []  # the state after each evaluation: [-2] is the one the last evaluation starts from

    def keep_state(pipeline, i, t, tensors):
        states.append(tensors["latents"].clone())
        return tensors

    probs = pipe(**kwargs, generator=seeded(), output_type="probs", callback_on_step_end=keep_state).images
    bits = pipe(**kwargs, generator=seeded(), output_type="pt").images
    assert torch.equal(bits, (probs > 0.5).to(bits.dtype))

    grid = copy.deepcopy(pipe.scheduler)
    grid.set_timesteps(steps)
    capped_throughout = BinaryFlowMatchScheduler.from_config(pipe.scheduler.config, likelihood_cap=0.5)
    alone = BinaryFlowPipeline(unet=pipe.unet, scheduler=capped_throughout, null_class_label=3)
    expected = alone(batch_size=2, class_labels=labels, guidance_scale=guidance_scale, sigmas=[grid.sigmas[-2].item()],
                     latents=states[-2], output_type="probs").images
    torch.testing.assert_close(probs, expected)

    pipe.scheduler = BinaryFlowMatchScheduler.from_config(pipe.scheduler.config, final_likelihood_cap=None)
    in_full = pipe(**kwargs, generator=seeded(), output_type="probs").images
    assert ((in_full > 0.5) != (probs > 0.5)).any()  # the cap decides bits here, so the test can tell the readings


def test_a_card_names_the_likelihood_caps_and_the_first_step_its_scheduler_samples_with():
    """`push_to_hub`'s card reads the scheduler: no cap, a cap on every step (with or without a smaller one at the
    last step), or only the last step's; each card names how to read the likelihood in full. A Heun first step is
    named with the way back to plain Euler steps, and so is the multistep solver."""
    from diffusers_binflow.model_cards import pipeline_model_card

    pipe = tiny_pipeline(prediction_type="likelihood_residual")
    assert "capped" not in pipeline_model_card(pipe, "tester/full")

    def card(**caps):
        pipe.scheduler = BinaryFlowMatchScheduler.from_config(pipe.scheduler.config, **caps)
        return " ".join(pipeline_model_card(pipe, "tester/capped").split())  # the paragraph, unwrapped

    both = card(likelihood_cap=2.0, final_likelihood_cap=1.0)
    assert "capped at 2.0 nats (1.0 nats at the last step, which the bits are read from)" in both
    assert "likelihood_cap=50, final_likelihood_cap=None" in both
    assert "capped at 2.0 nats, so that" in card(likelihood_cap=2.0, final_likelihood_cap=None)
    assert "capped at 1.0 nats at the last step, which the bits are read from" in card(likelihood_cap=50.0,
                                                                                       final_likelihood_cap=1.0)
    assert "Heun's method" not in both  # and the first step, when the scheduler takes it with Heun:
    assert "first step, out of pure noise, with Heun's method: N steps make N + 1 model calls" in card(
        heun_first_step=True)
    assert "multistep" not in both  # and the multistep solver, with the way back to Euler steps:
    assert "integrates with its multistep solver: second order at one model call per step" in card(solver="multistep")
    assert 'from_config(pipe.scheduler.config, solver="euler")` gives Euler steps' in card(solver="multistep")
