"""Generate binary images with an x-predicting denoiser by integrating the flow from noise to bits."""


import torch
from diffusers import (
    DiffusionPipeline,
    FlowMatchEulerDiscreteScheduler,
    ImagePipelineOutput,
)
from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback
from diffusers.utils.torch_utils import randn_tensor

from ..bits import bits_to_signal, signal_to_bits, signal_to_probabilities
from ..flow import model_output_from_x0, predict_velocity, predict_x0
from ..schedulers import BinaryFlowMatchScheduler
from .binary_images import bits_to_images, images_to_bits
from .completion import reimpose_known
from .hub_loading import BinflowHubMixin

OUTPUT_TYPES = ("pil", "np", "pt", "probs", "latent")
# diffusers' own flow-matching schedulers step with a velocity; the pipeline converts other predictions for them.
VELOCITY_SCHEDULERS = (FlowMatchEulerDiscreteScheduler,)


class BinaryFlowPipeline(BinflowHubMixin, DiffusionPipeline):
    """
    Binary flow matching (arXiv 2602.10420): start from noise at sigma = 1, follow the velocity implied by the
    denoiser's estimate of the clean signal down to sigma = 0, and read bits off the result.

    Args:
        unet ([`UNet2DModel`] or a diffusers 2D transformer such as [`DiTTransformer2DModel`]):
            A denoiser called as ``unet(sample, timesteps, class_labels=...)`` with ``timesteps = sigma * 1000``
            (``num_train_timesteps``). What it predicts is the scheduler config's `prediction_type`
            (`"velocity"` for diffusers' flow-matching schedulers, which have none).
        scheduler ([`BinaryFlowMatchScheduler`] or [`FlowMatchEulerDiscreteScheduler`]):
            The ODE solver. With diffusers' scheduler the pipeline converts the prediction to a velocity and
            thresholds the final state.
        null_class_label (`int`, *optional*):
            The class id a class-conditional denoiser was trained with for "no class" (label dropout); it enables
            classifier-free guidance.

    Passing `image` and `mask_image` to `__call__` completes an image: bits where the mask is 1 are generated,
    the others are kept exactly. Completion is most consistent with a scheduler set to `stochastic_sampling=True`.
    """

    model_cpu_offload_seq = "unet"
    _callback_tensor_inputs = ["latents"]

    def __init__(self, unet, scheduler, null_class_label: int | None = None):
        super().__init__()
        self.register_modules(unet=unet, scheduler=scheduler)
        self.register_to_config(null_class_label=null_class_label)

    # ------------------------------------------------------------------------------------------- properties

    @property
    def prediction_type(self) -> str:
        return self.scheduler.config.get("prediction_type", "velocity")

    @property
    def bit_scale(self) -> float:
        return self.scheduler.config.get("bit_scale", 1.0)

    @property
    def sample_shape(self) -> tuple[int, int, int]:
        size = self.unet.config.sample_size
        height, width = (size, size) if isinstance(size, int) else tuple(size)
        return self.unet.config.in_channels, height, width

    @property
    def num_class_embeds(self) -> int | None:
        """Number of class ids the denoiser embeds (None for an unconditional one)."""
        config = self.unet.config
        return config.get("num_class_embeds") or config.get("num_embeds_ada_norm")

    @property
    def num_timesteps(self) -> int:
        return self._num_timesteps

    @property
    def interrupt(self) -> bool:
        return self._interrupt

    # ---------------------------------------------------------------------------------------------- sampling

    def check_inputs(self, batch_size, class_labels, guidance_scale, num_inference_steps, generator, output_type,
                     callback_on_step_end_tensor_inputs):
        if not isinstance(self.scheduler, (BinaryFlowMatchScheduler, *VELOCITY_SCHEDULERS)):
            raise ValueError(
                f"{type(self.scheduler).__name__} is not a flow-matching scheduler for x_sigma = (1 - sigma) x + "
                "sigma eps; use BinaryFlowMatchScheduler or FlowMatchEulerDiscreteScheduler."
            )
        if not isinstance(num_inference_steps, int) or num_inference_steps < 1:
            raise ValueError(f"`num_inference_steps` must be a positive integer, got {num_inference_steps}.")
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"Unknown output_type {output_type!r}; choose one of {OUTPUT_TYPES}.")
        if isinstance(generator, list) and len(generator) != batch_size:
            raise ValueError(f"Got {len(generator)} generators for a batch of {batch_size}.")
        unknown = set(callback_on_step_end_tensor_inputs) - set(self._callback_tensor_inputs)
        if unknown:
            raise ValueError(f"Callback tensor inputs {sorted(unknown)} are not among {self._callback_tensor_inputs}.")
        if class_labels is not None:
            if self.num_class_embeds is None:
                raise ValueError("`class_labels` were given, but the denoiser is unconditional (no class embedding).")
            labels = torch.as_tensor(class_labels).flatten()
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

    def predict(self, latents: torch.Tensor, t: torch.Tensor, class_labels, guidance_scale: float):
        """The denoiser's output at `latents`, guided in x-space: ``x = x_null + w (x_class - x_null)``."""
        sigma = t / self.scheduler.config.num_train_timesteps
        if guidance_scale == 1.0:
            return self._denoise(latents, t, class_labels)
        null_labels = torch.full_like(class_labels, self.config.null_class_label)
        both = self._denoise(torch.cat([latents, latents]), t, torch.cat([class_labels, null_labels]))
        x_class, x_null = predict_x0(both, torch.cat([latents, latents]), sigma, self.prediction_type,
                                     self.bit_scale).chunk(2)
        x_guided = x_null + guidance_scale * (x_class - x_null)
        return model_output_from_x0(x_guided, latents, sigma, self.prediction_type, self.bit_scale)

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
            sigmas (`list[float]`, *optional*): A custom decreasing sigma grid (its length sets the steps).
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
        if isinstance(callback_on_step_end, (PipelineCallback, MultiPipelineCallbacks)):
            callback_on_step_end_tensor_inputs = callback_on_step_end.tensor_inputs
        self.check_inputs(batch_size, class_labels, guidance_scale, len(sigmas) if sigmas else num_inference_steps,
                          generator, output_type, callback_on_step_end_tensor_inputs)
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

        # 2. The sigma grid
        if sigmas is None:
            self.scheduler.set_timesteps(num_inference_steps, device=device)
        else:
            self.scheduler.set_timesteps(sigmas=sigmas, device=device)
        timesteps = self.scheduler.timesteps
        self._num_timesteps = len(timesteps)

        # 3. Integrate from noise to data
        x0 = latents
        for i, t in enumerate(self.progress_bar(timesteps)):
            if self.interrupt:
                continue
            sigma = t / self.scheduler.config.num_train_timesteps
            model_output = self.predict(latents, t, class_labels, guidance_scale)
            x0 = predict_x0(model_output, latents, sigma, self.prediction_type, self.bit_scale)
            if isinstance(self.scheduler, VELOCITY_SCHEDULERS):
                model_output = predict_velocity(model_output, latents, sigma, self.prediction_type, self.bit_scale)
            latents = self.scheduler.step(model_output, t, latents, generator=generator, return_dict=False)[0]
            if known is not None:
                latents = reimpose_known(latents, known, keep, self.scheduler.sigmas[i + 1], generator)

            if callback_on_step_end is not None:
                step_tensors = {"latents": latents}
                callback_kwargs = {name: step_tensors[name] for name in callback_on_step_end_tensor_inputs}
                latents = callback_on_step_end(self, i, t, callback_kwargs).pop("latents", latents)

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
