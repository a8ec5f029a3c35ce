"""Generate binary images with an x-predicting denoiser by integrating the flow from noise to bits."""

import copy
import inspect
import math
import numbers

import torch
from diffusers import (
    DiffusionPipeline,
    FlowMatchEulerDiscreteScheduler,
    FlowMatchHeunDiscreteScheduler,
    ImagePipelineOutput,
)
from diffusers.utils.torch_utils import randn_tensor

from ..bits import bits_to_signal, signal_to_bits, signal_to_probabilities
from ..flow import (
    MAX_LIKELIHOOD_LOGIT,
    check_finite_estimate,
    check_prediction_type,
    model_output_from_x0,
    predict_velocity,
    predict_x0,
)
from ..schedulers import BinaryFlowMatchScheduler
from ..utils import check_positive
from .binary_images import bits_to_images, images_to_bits
from .callbacks import StepEndCallbackMixin
from .completion import reimpose_known
from .hub_loading import BinflowHubMixin
from .self_conditioning import SelfConditioningMixin, denoiser_self_conditioning

OUTPUT_TYPES = ("pil", "np", "pt", "probs", "latent")
# diffusers' own flow-matching ODE solvers for x_sigma = (1 - sigma) x + sigma eps. They step with a velocity, so the
# pipeline converts other predictions for them; Heun calls `step` twice per interval on a grid that repeats each
# interior timestep, which the loop over `scheduler.timesteps` follows as it is.
VELOCITY_SCHEDULERS = (FlowMatchEulerDiscreteScheduler, FlowMatchHeunDiscreteScheduler)


class BinaryFlowPipeline(StepEndCallbackMixin, SelfConditioningMixin, BinflowHubMixin, DiffusionPipeline):
    """
    Binary flow matching (arXiv 2602.10420): start from noise at sigma = 1, follow the velocity implied by the
    denoiser's estimate of the clean signal down to sigma = 0, and read bits off the result.

    Args:
        unet ([`UNet2DModel`] or a diffusers 2D transformer such as [`DiTTransformer2DModel`]):
            A denoiser called as ``unet(sample, timesteps, class_labels=...)`` with ``timesteps = sigma * 1000``
            (``num_train_timesteps``).
        scheduler ([`BinaryFlowMatchScheduler`], [`FlowMatchEulerDiscreteScheduler`] or
            [`FlowMatchHeunDiscreteScheduler`]):
            The ODE solver. With diffusers' schedulers the pipeline converts the prediction to a velocity and
            thresholds the final state. A `BinaryFlowMatchScheduler` must read outputs as the pipeline does (the
            same `prediction_type` and `bit_scale`).
        null_class_label (`int`, *optional*):
            The class id a class-conditional denoiser was trained with for "no class" (label dropout); it enables
            classifier-free guidance.
        prediction_type (`str`, *optional*):
            What the denoiser predicts (see `diffusers_binflow.flow`; diffusers' `"flow_prediction"` is
            `"velocity"`). It belongs to the denoiser, so the pipeline's config records it and a scheduler swapped
            in later does not change it. Defaults to the `prediction_type` of the scheduler's config, else
            `"velocity"` (diffusers' flow-matching schedulers record none).
        bit_scale (`float`, *optional*):
            The signal amplitude the denoiser was trained with; defaults like `prediction_type` (else 1.0).
        self_conditioning (`bool`, *optional*):
            Whether the denoiser is self-conditioned (Bit Diffusion): it takes ``self_conditioned_input(x_sigma,
            x_hat_prev)``, the state and the previous step's estimate on the channel axis, so its `in_channels` is
            twice its `out_channels`. Defaults to the denoiser config's `self_conditioning`, else False.

    Passing `image` and `mask_image` to `__call__` completes an image: bits where the mask is 1 are generated,
    the others are kept exactly. Completion is most consistent with a scheduler set to `stochastic_sampling=True`
    (Euler steps only: `from_config(pipe.scheduler.config, solver="euler", stochastic_sampling=True)`).
    """

    model_cpu_offload_seq = "unet"

    def __init__(self, unet, scheduler, null_class_label: int | None = None, prediction_type: str | None = None,
                 bit_scale: float | None = None, self_conditioning: bool | None = None):
        super().__init__()
        self.register_modules(unet=unet, scheduler=scheduler)
        # By default, and for pipelines saved before their config recorded these, read them off the scheduler given.
        flow_scheduler = isinstance(scheduler, (BinaryFlowMatchScheduler, *VELOCITY_SCHEDULERS))
        scheduler_config = scheduler.config if flow_scheduler else {}
        prediction_type = check_prediction_type(prediction_type or scheduler_config.get("prediction_type", "velocity"))
        bit_scale = scheduler_config.get("bit_scale", 1.0) if bit_scale is None else bit_scale
        check_positive("bit_scale", bit_scale)
        self.register_to_config(null_class_label=null_class_label, prediction_type=prediction_type, bit_scale=bit_scale,
                                self_conditioning=denoiser_self_conditioning(unet, self_conditioning))
        if unet is not None:
            self.check_denoiser_channels()

    # ------------------------------------------------------------------------------------------- properties

    @property
    def prediction_type(self) -> str:
        return self.config.prediction_type

    @property
    def bit_scale(self) -> float:
        return self.config.bit_scale

    def readout(self, final: bool = False) -> tuple:
        """How the denoiser's output becomes x_hat, as `predict_x0` takes it: (prediction_type, bit_scale,
        likelihood_cap). The cap of a `"likelihood_residual"` denoiser is a sampler setting, the scheduler's; `final`
        for the evaluation whose step lands on sigma = 0, where a `BinaryFlowMatchScheduler` reads its
        `final_likelihood_cap`, so that guidance and the `"probs"` output read each evaluation as the step does."""
        if isinstance(self.scheduler, BinaryFlowMatchScheduler):
            return (self.prediction_type, self.bit_scale, self.scheduler.readout(final)[2])
        return (self.prediction_type, self.bit_scale, self.scheduler.config.get("likelihood_cap", MAX_LIKELIHOOD_LOGIT))

    @property
    def sample_shape(self) -> tuple[int, int, int]:
        size = self.unet.config.sample_size
        height, width = (size, size) if isinstance(size, int) else tuple(size)
        return self.unet.config.in_channels // (2 if self.self_conditioning else 1), height, width

    @property
    def num_class_embeds(self) -> int | None:
        """Number of class ids the denoiser embeds (None for an unconditional one)."""
        config = self.unet.config
        return config.get("num_class_embeds") or config.get("num_embeds_ada_norm")

    # ---------------------------------------------------------------------------------------------- sampling

    def check_denoiser_channels(self):
        """The denoiser must output the sample's channels and take them, twice when self-conditioned."""
        in_channels = self.unet.config.in_channels
        out_channels = self.unet.config.get("out_channels") or in_channels
        if in_channels == (2 if self.self_conditioning else 1) * out_channels:
            return
        if self.self_conditioning:
            raise ValueError(
                f"This pipeline is self-conditioned (self_conditioning=True): its denoiser must take the sample and "
                f"the previous estimate, in_channels = 2 * out_channels, but it has in_channels={in_channels}, "
                f"out_channels={out_channels}. Build it with twice the data's channels as in_channels (and "
                "out_channels set to the data's), or create the pipeline with self_conditioning=False."
            )
        hint = (" It looks self-conditioned (in_channels = 2 * out_channels): create the pipeline with "
                "self_conditioning=True." if in_channels == 2 * out_channels else "")
        raise ValueError(f"The denoiser takes {in_channels} channel(s) but outputs {out_channels}; the pipeline "
                         f"needs them equal.{hint}")

    def check_scheduler(self):
        """The attached scheduler must be one the pipeline can drive, reading the denoiser's output as it does."""
        scheduler = self.scheduler
        if isinstance(scheduler, BinaryFlowMatchScheduler):
            reads = (scheduler.config.prediction_type, scheduler.config.bit_scale)
            if reads != (self.prediction_type, self.bit_scale):
                raise ValueError(
                    f"The scheduler reads model outputs as prediction_type={reads[0]!r}, bit_scale={reads[1]}, but "
                    f"this pipeline's denoiser predicts {self.prediction_type!r} with bit_scale={self.bit_scale} "
                    "(`pipe.config`). Create the scheduler with the pipeline's values, e.g. `BinaryFlowMatchScheduler("
                    "prediction_type=pipe.prediction_type, bit_scale=pipe.bit_scale, ...)`, or, for a denoiser that "
                    "predicts something else, build a new pipeline with its `prediction_type`."
                )
        elif not isinstance(scheduler, VELOCITY_SCHEDULERS):
            raise ValueError(
                f"{type(scheduler).__name__} is not one of the flow-matching ODE solvers this pipeline drives: use "
                "BinaryFlowMatchScheduler, or diffusers' FlowMatchEulerDiscreteScheduler or "
                "FlowMatchHeunDiscreteScheduler (the pipeline converts the prediction to their velocity)."
            )

    def check_inputs(self, batch_size, class_labels, guidance_scale, num_inference_steps, sigmas, generator,
                     output_type):
        self.check_scheduler()
        self.check_denoiser_channels()
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            raise ValueError(f"`batch_size` must be a positive integer, got {batch_size!r}.")
        if sigmas is None and (not isinstance(num_inference_steps, int) or num_inference_steps < 1):
            raise ValueError(f"`num_inference_steps` must be a positive integer, got {num_inference_steps}.")
        if sigmas is not None:
            self.check_sigmas(sigmas)
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"Unknown output_type {output_type!r}; choose one of {OUTPUT_TYPES}.")
        generators = generator if isinstance(generator, list) else [generator]
        if generator is not None and not all(isinstance(g, torch.Generator) for g in generators):
            raise ValueError(f"`generator` must be a torch.Generator or a list of them (one per image), got "
                             f"{generator!r}; seed one with `torch.Generator().manual_seed(seed)`.")
        if isinstance(generator, list) and len(generator) != batch_size:
            raise ValueError(f"Got {len(generator)} generators for a batch of {batch_size}.")
        if not (isinstance(guidance_scale, numbers.Real) and math.isfinite(guidance_scale)):
            raise ValueError(f"`guidance_scale` must be a finite number, got {guidance_scale!r}.")
        if class_labels is not None:
            if self.num_class_embeds is None:
                raise ValueError("`class_labels` were given, but the denoiser is unconditional (no class embedding).")
            labels = torch.as_tensor(class_labels).flatten()
            if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
                raise ValueError(f"`class_labels` must be integer class ids, got {labels.dtype} values "
                                 f"{labels[:8].tolist()}.")
            valid = (labels >= 0) & (labels < self.num_class_embeds) & (labels != self.config.null_class_label)
            if not valid.all():
                raise ValueError(f"`class_labels` must be class ids in [0, {self.num_class_embeds}) other than the "
                                 f"null label {self.config.null_class_label}, got {labels.tolist()}.")
            if len(labels) not in (1, batch_size):
                raise ValueError(f"Got {len(labels)} class labels for a batch of {batch_size}.")
        if class_labels is None and self.num_class_embeds is not None and self.config.null_class_label is None:
            raise ValueError("This denoiser is class-conditional without a null class: pass `class_labels`.")
        if guidance_scale != 1.0 and (class_labels is None or self.config.null_class_label is None):
            raise ValueError("Classifier-free guidance needs `class_labels` and a denoiser trained with a null class "
                             "(the pipeline's `null_class_label`); use guidance_scale=1.0 otherwise.")

    def check_sigmas(self, sigmas):
        """A custom grid is a 1-D sequence; diffusers' schedulers take it without the terminal 0, which they append."""
        if "sigmas" not in inspect.signature(self.scheduler.set_timesteps).parameters:
            raise ValueError(f"{type(self.scheduler).__name__} takes no custom `sigmas` grid; pass "
                             "`num_inference_steps`.")
        grid = torch.as_tensor(sigmas, dtype=torch.float32)
        if grid.ndim != 1 or len(grid) == 0:
            raise ValueError(f"`sigmas` must be a non-empty 1-D sequence of sigma values, got shape "
                             f"{tuple(grid.shape)}.")
        if isinstance(self.scheduler, VELOCITY_SCHEDULERS) and not (grid > 0).all():
            # The velocity implied by an x-prediction divides by sigma; these schedulers step into 0 themselves.
            raise ValueError(f"With {type(self.scheduler).__name__}, `sigmas` must be positive (it appends the "
                             f"terminal 0 itself), got {grid.tolist()}.")

    def predict(self, latents: torch.Tensor, t: torch.Tensor, class_labels, guidance_scale: float,
                x_hat_prev: torch.Tensor | None = None, final: bool = False):
        """The denoiser's output at `latents`, guided in x-space: ``x = x_null + w (x_class - x_null)``, each branch
        read as the step reads it (`readout(final)`); a self-conditioned denoiser also sees the previous step's
        estimate `x_hat_prev` (both passes the same)."""
        sigma = t / self.scheduler.config.num_train_timesteps
        model_input = self.denoiser_input(latents, x_hat_prev)
        if guidance_scale == 1.0:
            return self._denoise(model_input, t, class_labels)
        null_labels = torch.full_like(class_labels, self.config.null_class_label)
        both = self._denoise(torch.cat([model_input, model_input]), t, torch.cat([class_labels, null_labels]))
        readout = self.readout(final)
        x_class, x_null = predict_x0(both, torch.cat([latents, latents]), sigma, *readout).chunk(2)
        x_guided = x_null + guidance_scale * (x_class - x_null)
        return model_output_from_x0(x_guided, latents, sigma, *readout)

    def _denoise(self, sample: torch.Tensor, t: torch.Tensor, class_labels):
        timesteps = t.expand(sample.shape[0]).to(device=sample.device, dtype=sample.dtype)
        if class_labels is None:
            return self.unet(sample, timesteps, return_dict=False)[0]
        return self.unet(sample, timesteps, class_labels=class_labels, return_dict=False)[0]

    @torch.no_grad()
    def __call__(
        self,
        batch_size: int = 1,
        class_labels: int | list[int] | torch.Tensor | None = None,
        guidance_scale: float = 1.0,
        num_inference_steps: int = 16,
        sigmas: list[float] | None = None,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        image=None,
        mask_image=None,
        output_type: str = "pil",
        return_dict: bool = True,
        callback_on_step_end=None,
        callback_on_step_end_tensor_inputs: list[str] = ["latents"],
    ) -> ImagePipelineOutput | tuple:
        """
        Generate binary images.

        Args:
            batch_size (`int`): Number of images.
            class_labels (`int`, `list[int]` or `torch.Tensor`, *optional*):
                Class ids for a class-conditional denoiser; without them it generates through its null class.
            guidance_scale (`float`): Classifier-free guidance weight in x-space; 1.0 disables it.
            num_inference_steps (`int`): ODE steps from sigma = 1 to 0.
            sigmas (`list[float]` or a 1-D tensor, *optional*): A custom decreasing sigma grid (its length sets the
                steps; diffusers' schedulers take it without the terminal 0, which they append).
            generator (`torch.Generator` or a list of them, *optional*):
                Seeds the noise (and the `"bernoulli"` final step); with a list, item i equals a single-image call
                seeded with generator i.
            latents (`torch.Tensor`, *optional*): Initial noise of shape (B, C, H, W) instead of drawing it.
            image, mask_image (*optional*):
                Completion: binary image(s) and a binary mask of the same size, 1 = generate, 0 = keep. Known bits
                are returned exactly; the rest is generated around them. See `images_to_bits` for the formats.
            output_type (`str`): `"pil"` (mode "L", 0/255), `"np"` (B, H, W, C) of 0/1, `"pt"` (B, C, H, W) of 0/1,
                `"probs"` (P(bit = 1) from the last prediction, (B, C, H, W)) or `"latent"` (the final state).
            return_dict (`bool`): Return an [`ImagePipelineOutput`] rather than a tuple.
            callback_on_step_end (*optional*): Called as ``callback(pipe, i, t, callback_kwargs)`` after each step;
                the dict it returns may replace `latents`.
            callback_on_step_end_tensor_inputs (`list[str]`): Tensors passed to the callback.
        """
        callback_on_step_end_tensor_inputs = self.check_callback_inputs(callback_on_step_end,
                                                                        callback_on_step_end_tensor_inputs)
        self.check_inputs(batch_size, class_labels, guidance_scale, num_inference_steps, sigmas, generator,
                          output_type)
        self._interrupt = False
        device, dtype = self._execution_device, self.unet.dtype
        if class_labels is None and self.num_class_embeds is not None:
            # A class-conditional denoiser generates without a class through its null class.
            class_labels = self.config.null_class_label
        if class_labels is not None:
            class_labels = torch.as_tensor(class_labels, device=device).flatten().expand(batch_size)
        known, keep = self.prepare_completion(image, mask_image, batch_size, device, dtype)

        # 1. Noise at sigma = 1
        shape = (batch_size, *self.sample_shape)
        if latents is None:
            latents = randn_tensor(shape, generator=generator, device=device, dtype=dtype)
        elif tuple(latents.shape) != shape:
            raise ValueError(f"`latents` must have shape {shape}, got {tuple(latents.shape)}.")
        latents = latents.to(device=device, dtype=dtype)

        # 2. The sigma grid, on this call's own copy of the scheduler: its step index is per-call state, and
        # concurrent calls of one pipeline must not share it.
        scheduler = copy.deepcopy(self.scheduler)
        if sigmas is None:
            scheduler.set_timesteps(num_inference_steps, device=device)
        else:
            scheduler.set_timesteps(sigmas=torch.as_tensor(sigmas, dtype=torch.float32).tolist(), device=device)
        timesteps = scheduler.timesteps
        self._num_timesteps = len(timesteps)

        # 3. Integrate from noise to data
        x0 = None  # the estimate of the clean signal, which a self-conditioned denoiser sees at the next step
        for i, t in enumerate(self.progress_bar(timesteps)):
            if self.interrupt:
                continue
            sigma = t / scheduler.config.num_train_timesteps
            final = bool(scheduler.sigmas[i + 1] == 0)  # the evaluation the bits are read from
            model_output = self.predict(latents, t, class_labels, guidance_scale, x_hat_prev=x0, final=final)
            x0 = predict_x0(model_output, latents, sigma, *self.readout(final))
            check_finite_estimate(x0, i, sigma)
            if isinstance(scheduler, VELOCITY_SCHEDULERS):
                model_output = predict_velocity(model_output, latents, sigma, *self.readout(final))
            latents = scheduler.step(model_output, t, latents, generator=generator, return_dict=False)[0]
            if known is not None:
                latents = reimpose_known(latents, known, keep, scheduler.sigmas[i + 1], generator)
            latents = self.run_step_end_callback(callback_on_step_end, i, t, callback_on_step_end_tensor_inputs,
                                                 {"latents": latents})["latents"]

        # 4. Bits
        self.maybe_free_model_hooks()
        if output_type == "latent":
            images = latents
        elif output_type == "probs":
            images = signal_to_probabilities(x0 if known is None else torch.where(keep, known, x0), self.bit_scale)
        else:
            images = bits_to_images(signal_to_bits(latents), output_type)
        if not return_dict:
            return (images,)
        return ImagePipelineOutput(images=images)

    def prepare_completion(self, image, mask_image, batch_size, device, dtype):
        """The known signal and the mask of bits to keep, both (B, C, H, W), or (None, None) without an image."""
        if image is None and mask_image is None:
            return None, None
        if image is None or mask_image is None:
            raise ValueError("Completion needs both `image` and `mask_image` (1 = generate, 0 = keep).")
        bits = images_to_bits(image, "image", self.sample_shape)
        repaint = images_to_bits(mask_image, "mask_image", self.sample_shape)
        for name, tensor in (("image", bits), ("mask_image", repaint)):
            if tensor.shape[0] not in (1, batch_size):
                raise ValueError(f"`{name}` holds {tensor.shape[0]} images for a batch of {batch_size}.")
        known = bits_to_signal(bits, self.bit_scale).to(device=device, dtype=dtype).expand(batch_size, -1, -1, -1)
        keep = (repaint == 0).to(device).expand(batch_size, -1, -1, -1)
        return known, keep
