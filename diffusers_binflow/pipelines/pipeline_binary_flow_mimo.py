"""Detect the bits of MIMO channel uses by sampling their posterior with a conditional binary flow model."""

import copy
from dataclasses import dataclass

import torch
from diffusers import DiffusionPipeline
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor

from ..bits import signal_to_bits, signal_to_probabilities
from ..mimo.channel import check_channel_inputs, complex_to_real, get_modulation
from ..mimo.detectors import list_detection
from ..mimo.model import (
    MIMOFlowTransformer,  # imported here so that loading a saved pipeline finds the class
)
from ..schedulers import BinaryFlowMatchScheduler
from .callbacks import StepEndCallbackMixin
from .hub_loading import BinflowHubMixin
from .self_conditioning import SelfConditioningMixin, denoiser_self_conditioning

AGGREGATIONS = ("mean", "vote", "likelihood", "app")


@dataclass
class MIMODetectionOutput(BaseOutput):
    """
    Args:
        bits (`torch.Tensor` of shape (B, num_bits)): The detected bits, 0/1.
        probabilities (`torch.Tensor` of shape (B, num_bits)): P(bit = 1) given (y, H, N0).
        sample_bits (`torch.Tensor` of shape (B, num_samples, num_bits)): The bits of each posterior sample.
    """

    bits: torch.Tensor
    probabilities: torch.Tensor
    sample_bits: torch.Tensor


class BinaryFlowMIMOPipeline(StepEndCallbackMixin, SelfConditioningMixin, BinflowHubMixin, DiffusionPipeline):
    """
    MIMO detection by conditional binary flow matching (arXiv 2602.10420): for each channel use, integrate from
    noise at sigma = 1 to bits at sigma = 0, the denoiser seeing ``(y, H, N0)`` throughout.

    Args:
        model ([`~diffusers_binflow.mimo.model.MIMOFlowTransformer`]):
            The conditional denoiser; its config fixes the antennas and the modulation it detects.
        scheduler ([`BinaryFlowMatchScheduler`]):
            The ODE solver; its `prediction_type` must be the model's (`"sample"` or `"logits"`, in the model config).
        self_conditioning (`bool`, *optional*): Whether the model is self-conditioned (Bit Diffusion: it also sees
            the previous step's estimate, `self_conditioned_input`); defaults to the model's config.

    Inputs follow `diffusers_binflow.mimo.channel`: complex ``y (B, num_rx)`` and ``H (B, num_rx, num_tx)``, or
    their real-valued equivalents ``(B, 2 num_rx)`` and ``(B, 2 num_rx, n)``; ``noise_var`` is N0, the complex
    noise variance per receive antenna (a float or one per channel use).
    """

    model_cpu_offload_seq = "model"

    def __init__(self, model, scheduler, self_conditioning: bool | None = None):
        super().__init__()
        self.register_modules(model=model, scheduler=scheduler)
        self.register_to_config(self_conditioning=denoiser_self_conditioning(model, self_conditioning))
        if model is not None:
            self.check_model_self_conditioning(model, "model")

    @property
    def modulation(self) -> str:
        return self.model.config.modulation

    def check_inputs(self, y, H, modulation, num_inference_steps, num_samples, aggregation, generator):
        if not isinstance(self.model, MIMOFlowTransformer):
            raise ValueError(f"The model must be a MIMOFlowTransformer, got {type(self.model).__name__}.")
        self.check_model_self_conditioning(self.model, "model")
        if not isinstance(self.scheduler, BinaryFlowMatchScheduler):
            raise ValueError(f"{type(self.scheduler).__name__} is not supported; use BinaryFlowMatchScheduler.")
        model_type, scheduler_type = self.model.config.prediction_type, self.scheduler.config.prediction_type
        if scheduler_type != model_type:
            # The scheduler would read the model's output as the wrong quantity (e.g. logits as x_hat).
            raise ValueError(
                f"The model predicts {model_type!r} but the scheduler's prediction_type is {scheduler_type!r}; use "
                f"`BinaryFlowMatchScheduler.from_config(pipe.scheduler.config, prediction_type={model_type!r})`."
            )
        if self.scheduler.config.bit_scale != 1:
            # The model's EP cavities read the state as bits at -1 and 1.
            raise ValueError(f"The scheduler's bit_scale is {self.scheduler.config.bit_scale}, but MIMO models work at "
                             f"bit_scale 1; use `BinaryFlowMatchScheduler.from_config(pipe.scheduler.config, "
                             f"bit_scale=1.0)`.")
        if modulation is not None and get_modulation(modulation).name != self.modulation:
            raise ValueError(f"The model was trained for {self.modulation}, not {get_modulation(modulation).name}.")
        for name, value in (("num_inference_steps", num_inference_steps), ("num_samples", num_samples)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"`{name}` must be a positive integer, got {value}.")
        if aggregation not in AGGREGATIONS:
            raise ValueError(f"Unknown aggregation {aggregation!r}; choose one of {AGGREGATIONS}.")
        if y.is_complex() != H.is_complex():
            raise ValueError("Pass y and H both complex or both real-valued.")
        if y.is_complex():
            config = self.model.config
            if y.ndim != 2 or H.ndim != 3 or H.shape[0] != y.shape[0] or H.shape[1] != y.shape[1]:
                raise ValueError(f"Complex y must be (B, num_rx) and H (B, num_rx, num_tx) with the same B and "
                                 f"num_rx; got y {tuple(y.shape)} and H {tuple(H.shape)}.")
            if tuple(H.shape[1:]) != (config.num_rx, config.num_tx):
                raise ValueError(f"This model detects num_tx={config.num_tx}, num_rx={config.num_rx}; H has "
                                 f"num_rx={H.shape[1]}, num_tx={H.shape[2]}.")
        if isinstance(generator, list) and len(generator) != y.shape[0]:
            raise ValueError(f"Got {len(generator)} generators for {y.shape[0]} channel uses.")

    @torch.no_grad()
    def __call__(
        self,
        y: torch.Tensor,
        H: torch.Tensor,
        noise_var: float | torch.Tensor,
        modulation: str | None = None,
        num_inference_steps: int = 8,
        num_samples: int = 1,
        aggregation: str = "mean",
        generator: torch.Generator | list[torch.Generator] | None = None,
        return_dict: bool = True,
        callback_on_step_end=None,
        callback_on_step_end_tensor_inputs: list[str] = ["latents"],
    ) -> MIMODetectionOutput | tuple:
        """
        Detect the transmitted bits.

        Args:
            y, H (`torch.Tensor`): The observation and the channel (complex, or real-valued; see the class docs).
            noise_var (`float` or `torch.Tensor` of shape (B,)): N0.
            modulation (`str`, *optional*): Checked against the model's (an error if it differs).
            num_inference_steps (`int`): ODE steps per sample; the model is evaluated this many times per sample
                (Euler; Heun takes ``2 N - 1``, a Heun first step ``N + 1``).
            num_samples (`int`): Posterior samples per channel use.
            aggregation (`str`): How samples combine: `"mean"` averages each sample's P(bit = 1) (read off its last
                x_hat) and thresholds at 1/2; `"vote"` takes the majority of the samples' bits (ties go to
                `"mean"`) and reports the share of votes as the probability; `"likelihood"` treats the samples as
                a candidate list, as list sphere decoders do: the bits are those of the sample whose symbols explain
                ``y`` best (least ``||y - H s||^2``), the probabilities come from max-log LLRs over the samples
                (`diffusers_binflow.mimo.detectors.list_detection`); `"app"` decides each bit by its a posteriori
                probability over the distinct samples, each weighted by its likelihood (bit-wise MAP on the list,
                ``list_detection(output="app")``).
            generator (`torch.Generator` or a list of them, one per channel use, *optional*): Seeds the noise; with
                a list, channel use i equals a single-use call with generator i.
            return_dict (`bool`): Return a [`MIMODetectionOutput`] rather than a tuple.
            callback_on_step_end (*optional*): Called as ``callback(pipe, i, t, callback_kwargs)`` after each step;
                the dict it returns may replace `latents` (B * num_samples, num_bits).
            callback_on_step_end_tensor_inputs (`list[str]`): Tensors passed to the callback.
        """
        y, H = torch.as_tensor(y), torch.as_tensor(H)
        self.check_inputs(y, H, modulation, num_inference_steps, num_samples, aggregation, generator)
        callback_on_step_end_tensor_inputs = self.check_callback_inputs(callback_on_step_end,
                                                                        callback_on_step_end_tensor_inputs)
        self._interrupt = False
        device, dtype = self._execution_device, self.model.dtype
        if y.is_complex():
            y, H = complex_to_real(y, H, self.modulation)
        y, H = y.to(device, dtype), H.to(device, dtype)
        features = self.model.channel_features(y, H, noise_var)
        batch, num_bits = y.shape[0], self.model.num_bits
        features = features.repeat_interleave(num_samples, dim=0)

        # 1. Noise at sigma = 1, num_samples draws per channel use
        if isinstance(generator, list):
            latents = torch.cat([randn_tensor((num_samples, num_bits), generator=g, device=device, dtype=dtype)
                                 for g in generator])
        else:
            latents = randn_tensor((batch * num_samples, num_bits), generator=generator, device=device, dtype=dtype)

        # 2. Integrate from noise to bits
        if isinstance(generator, list):  # the scheduler's draws (Bernoulli final step) take one generator per row
            generator = [g for g in generator for _ in range(num_samples)]
        scheduler = copy.deepcopy(self.scheduler)  # this call's own step index: concurrent calls share none
        scheduler.set_timesteps(num_inference_steps, device=device)
        self._num_timesteps = len(scheduler.timesteps)
        bit_scale = self.scheduler.config.bit_scale
        x0 = None  # the estimate of the clean signal, which a self-conditioned model sees at the next step
        for i, t in enumerate(self.progress_bar(scheduler.timesteps)):
            if self.interrupt:
                continue
            model_output = self.model(self.denoiser_input(latents, x0), t.expand(latents.shape[0]),
                                      channel_features=features, return_dict=False)[0]
            latents, x0 = scheduler.step(model_output, t, latents, generator=generator, return_dict=False)
            latents = self.run_step_end_callback(callback_on_step_end, i, t, callback_on_step_end_tensor_inputs,
                                                 {"latents": latents})["latents"]

        # 3. Combine the samples
        self.maybe_free_model_hooks()
        sample_bits = signal_to_bits(latents).view(batch, num_samples, num_bits)
        mean_probabilities = signal_to_probabilities(x0, bit_scale).view(batch, num_samples, num_bits).mean(1)
        if aggregation == "mean":
            probabilities = mean_probabilities
            bits = (probabilities > 0.5).to(dtype)
        elif aggregation in ("likelihood", "app"):
            symbols = get_modulation(self.modulation).bits_to_symbols(sample_bits)  # (B, S, n)
            distances = ((y[:, None] - symbols @ H.mT) ** 2).sum(-1)
            noise_real = check_channel_inputs(y, H, noise_var)[:, None] / 2  # N0 / 2 per channel use, (B, 1)
            detection = list_detection(sample_bits, distances, noise_real,
                                       output="maxlog" if aggregation == "likelihood" else "app")
            bits, probabilities = detection.bits, detection.probabilities
        else:
            probabilities = sample_bits.mean(1)
            bits = torch.where(probabilities == 0.5, mean_probabilities > 0.5, probabilities > 0.5).to(dtype)
        if not return_dict:
            return (bits, probabilities, sample_bits)
        return MIMODetectionOutput(bits=bits, probabilities=probabilities, sample_bits=sample_bits)
