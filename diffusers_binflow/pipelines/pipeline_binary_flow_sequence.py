"""Generate token sequences with binary flow matching: each token id is a fixed-width bit code (see
`diffusers_binflow.sequences.codec`), the flow runs over the bits of every position, and the tokenizer decodes."""

import copy
from dataclasses import dataclass

import torch
from diffusers import DiffusionPipeline
from diffusers.utils import BaseOutput, logging
from diffusers.utils.torch_utils import randn_tensor

from ..bits import bits_to_signal, signal_to_bits
from ..schedulers import BinaryFlowMatchScheduler
from ..sequences.codec import ids_to_texts, pad_token_ids
from .callbacks import StepEndCallbackMixin
from .completion import reimpose_known
from .hub_loading import BinflowHubMixin
from .self_conditioning import SelfConditioningMixin, denoiser_self_conditioning

OUTPUT_TYPES = ("text", "ids", "bits", "latent")
logger = logging.get_logger(__name__)


@dataclass
class BinaryFlowSequencePipelineOutput(BaseOutput):
    """
    Args:
        sequences (`list[str]` or `torch.Tensor`): Decoded texts for `output_type="text"` (padding and the other
            special tokens dropped, but not the unk token, so out-of-range positions stay visible); else token ids
            (B, L), bits (B, L, num_bits) or the final signal (B, L, num_bits).
        out_of_range (`torch.BoolTensor` of shape (B, L)): Positions whose generated bit code named no token of the
            tokenizer (an id beyond the denoiser's vocabulary, or one the tokenizer lacks when it is smaller); their
            id was replaced by the tokenizer's unk token (or, without one, its pad token).
    """

    sequences: list[str] | torch.Tensor
    out_of_range: torch.Tensor


class BinaryFlowSequencePipeline(StepEndCallbackMixin, SelfConditioningMixin, BinflowHubMixin, DiffusionPipeline):
    """
    Binary flow matching over token sequences (arXiv 2602.10420): start from noise at sigma = 1 in the signal of
    every bit of every position, follow the denoiser's estimate down to sigma = 0, read the bits, turn each
    position's code into a token id and decode the ids with the tokenizer.

    Args:
        denoiser ([`BitSequenceTransformer`]): Maps noisy bit signals (B, L, num_bits) and timesteps
            ``sigma * num_train_timesteps`` to one value per bit, of the scheduler's `prediction_type`.
        scheduler ([`BinaryFlowMatchScheduler`]): The ODE solver.
        tokenizer ([`~transformers.PreTrainedTokenizerFast`]): Decodes the ids; its vocabulary must be the one the
            denoiser was trained on (at most `denoiser.config.vocab_size` tokens) and have a pad token.
        self_conditioning (`bool`, *optional*): Whether the denoiser is self-conditioned (Bit Diffusion: it also
            sees the previous step's estimate, `self_conditioned_input`); defaults to the denoiser's config.

    Conditioning: `prefix` fixes the first tokens; `input_ids` with `infill_mask` (1 = generate, 0 = keep, as
    diffusers' masks) fixes any positions. Known tokens are returned exactly. Scheduler steps with
    `stochastic_sampling=True` mix best around fixed positions.
    """

    model_cpu_offload_seq = "denoiser"

    def __init__(self, denoiser, scheduler, tokenizer, self_conditioning: bool | None = None):
        super().__init__()
        self.register_modules(denoiser=denoiser, scheduler=scheduler, tokenizer=tokenizer)
        self.register_to_config(self_conditioning=denoiser_self_conditioning(denoiser, self_conditioning))
        if denoiser is not None:
            self.check_model_self_conditioning(denoiser, "denoiser")
        if denoiser is not None and tokenizer is not None:
            self.check_tokenizer()

    @property
    def codec(self):
        return self.denoiser.codec

    @property
    def bit_scale(self) -> float:
        return self.scheduler.config.bit_scale

    def check_tokenizer(self):
        """The tokenizer's ids must be ids the denoiser generates, and sequences need a pad token. Checked at
        construction and again at each call (a tokenizer may be assigned in between)."""
        codec = self.codec
        if len(self.tokenizer) > codec.vocab_size:
            raise ValueError(
                f"The tokenizer has {len(self.tokenizer)} tokens, but the denoiser generates ids of a vocabulary of "
                f"{codec.vocab_size} in {codec.num_bits} bits ({codec.bit_code} code): use the tokenizer it was "
                "trained with, or train a denoiser whose `vocab_size` covers this tokenizer."
            )
        if self.tokenizer.pad_token_id is None:
            raise ValueError("The tokenizer has no pad token; the pipeline pads prefixes and short sequences with it.")

    def check_inputs(self, batch_size, length, num_inference_steps, generator, output_type):
        if not isinstance(self.scheduler, BinaryFlowMatchScheduler):
            raise ValueError(f"{type(self.scheduler).__name__} is not a BinaryFlowMatchScheduler.")
        self.check_model_self_conditioning(self.denoiser, "denoiser")
        self.check_tokenizer()
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"`batch_size` must be a positive integer, got {batch_size}.")
        if not isinstance(num_inference_steps, int) or num_inference_steps < 1:
            raise ValueError(f"`num_inference_steps` must be a positive integer, got {num_inference_steps}.")
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"Unknown output_type {output_type!r}; choose one of {OUTPUT_TYPES}.")
        if isinstance(generator, list) and len(generator) != batch_size:
            raise ValueError(f"Got {len(generator)} generators for a batch of {batch_size}.")
        if not 1 <= length <= self.denoiser.config.max_length:
            raise ValueError(f"`sequence_length` {length} is outside [1, {self.denoiser.config.max_length}], the "
                             "denoiser's maximum.")

    def prepare_conditioning(self, prefix, input_ids, infill_mask, batch_size, length, device, dtype):
        """The known signal (B, L, num_bits) and the positions to keep (B, L, 1), or (None, None) when unconditional."""
        if prefix is not None and (input_ids is not None or infill_mask is not None):
            raise ValueError("Pass either `prefix` or `input_ids` with `infill_mask`, not both.")
        if prefix is not None:
            prefixes = [prefix] * batch_size if isinstance(prefix, str) else list(prefix)
            if len(prefixes) != batch_size:
                raise ValueError(f"Got {len(prefixes)} prefixes for a batch of {batch_size}.")
            ids = self.tokenizer(prefixes, add_special_tokens=False)["input_ids"]
            if max(map(len, ids)) > length:
                raise ValueError(f"A prefix of {max(map(len, ids))} tokens does not fit sequences of {length}.")
            input_ids = pad_token_ids(ids, length, self.tokenizer.pad_token_id)
            infill_mask = torch.arange(length) >= torch.tensor([len(item) for item in ids])[:, None]
        elif input_ids is None and infill_mask is None:
            return None, None
        elif input_ids is None or infill_mask is None:
            raise ValueError("Infilling needs both `input_ids` and `infill_mask` (1 = generate, 0 = keep).")

        input_ids, infill_mask = torch.as_tensor(input_ids), torch.as_tensor(infill_mask)
        input_ids, infill_mask = input_ids.reshape(-1, input_ids.shape[-1]), infill_mask.reshape(-1, infill_mask.shape[-1])
        if infill_mask.shape[-1] != input_ids.shape[-1] or input_ids.shape[-1] != length:
            raise ValueError(f"`input_ids` ({input_ids.shape[-1]} positions) and `infill_mask` "
                             f"({infill_mask.shape[-1]} positions) must both have the sequence length {length}.")
        for name, tensor in (("input_ids", input_ids), ("infill_mask", infill_mask)):
            if tensor.shape[0] not in (1, batch_size):
                raise ValueError(f"`{name}` holds {tensor.shape[0]} sequences for a batch of {batch_size}.")
        if not ((infill_mask == 0) | (infill_mask == 1)).all():
            raise ValueError("`infill_mask` must hold only 0 (keep) and 1 (generate).")
        known = bits_to_signal(self.codec.encode(input_ids), self.bit_scale, dtype=dtype)
        keep = (infill_mask == 0)[..., None]
        return known.to(device).expand(batch_size, -1, -1), keep.to(device).expand(batch_size, -1, -1)

    def decode_ids(self, bits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids (B, L) of bits (B, L, num_bits) and the positions whose code names no token of the tokenizer,
        which become its unk token (or, without one, its pad token)."""
        replacement = self.tokenizer.unk_token_id
        return self.codec.decode(bits, out_of_range_id=self.tokenizer.pad_token_id if replacement is None
                                 else replacement, num_tokens=len(self.tokenizer))

    @torch.no_grad()
    def __call__(
        self,
        batch_size: int = 1,
        sequence_length: int | None = None,
        prefix: str | list[str] | None = None,
        input_ids: torch.Tensor | list[list[int]] | None = None,
        infill_mask: torch.Tensor | list[list[int]] | None = None,
        num_inference_steps: int = 16,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        output_type: str = "text",
        return_dict: bool = True,
        callback_on_step_end=None,
        callback_on_step_end_tensor_inputs: list[str] = ["latents"],
    ) -> BinaryFlowSequencePipelineOutput | tuple:
        """
        Generate token sequences.

        Args:
            batch_size (`int`): Number of sequences.
            sequence_length (`int`, *optional*): Positions per sequence, at most the denoiser's `max_length` (the
                default, or the length of `input_ids`).
            prefix (`str` or `list[str]`, *optional*): Text whose tokens fix the first positions (one per item, or
                one for all).
            input_ids, infill_mask (*optional*): Token ids and a mask of the same shape, (L,), (1, L) or (B, L);
                1 = generate, 0 = keep the given id.
            num_inference_steps (`int`): ODE steps from sigma = 1 to 0 (model evaluations with the Euler solver).
            generator (`torch.Generator` or a list of them, *optional*): Seeds the noise; with a list, item i equals
                a single-sequence call seeded with generator i.
            latents (`torch.Tensor`, *optional*): Initial noise (B, L, num_bits) instead of drawing it.
            output_type (`str`): `"text"`, `"ids"` (B, L), `"bits"` (B, L, num_bits) or `"latent"` (final signal).
            return_dict (`bool`): Return a [`BinaryFlowSequencePipelineOutput`] rather than a tuple.
            callback_on_step_end (*optional*): Called as ``callback(pipe, i, t, callback_kwargs)`` after each step;
                the dict it returns may replace `latents`.
            callback_on_step_end_tensor_inputs (`list[str]`): Tensors passed to the callback.
        """
        if sequence_length is None:
            sequence_length = self.denoiser.config.max_length if input_ids is None \
                else torch.as_tensor(input_ids).shape[-1]
        self.check_inputs(batch_size, sequence_length, num_inference_steps, generator, output_type)
        callback_on_step_end_tensor_inputs = self.check_callback_inputs(callback_on_step_end,
                                                                        callback_on_step_end_tensor_inputs)
        self._interrupt = False
        device, dtype = self._execution_device, self.denoiser.dtype
        known, keep = self.prepare_conditioning(prefix, input_ids, infill_mask, batch_size, sequence_length,
                                                device, dtype)

        # 1. Noise at sigma = 1
        shape = (batch_size, sequence_length, self.codec.num_bits)
        if latents is None:
            latents = randn_tensor(shape, generator=generator, device=device, dtype=dtype)
        elif tuple(latents.shape) != shape:
            raise ValueError(f"`latents` must have shape {shape}, got {tuple(latents.shape)}.")
        latents = latents.to(device=device, dtype=dtype)

        # 2. Integrate from noise to data
        scheduler = copy.deepcopy(self.scheduler)  # this call's own step index: concurrent calls share none
        scheduler.set_timesteps(num_inference_steps, device=device)
        self._num_timesteps = len(scheduler.timesteps)
        x0 = None  # the estimate of the clean signal, which a self-conditioned denoiser sees at the next step
        # A denoiser trained with known tokens reads them exactly at every step; any other sees them on the path.
        given = {} if known is None or not self.denoiser.config.get("known_conditioning", False) else \
            {"known_signal": known, "known_mask": keep[..., 0]}
        for i, t in enumerate(self.progress_bar(scheduler.timesteps)):
            if self.interrupt:
                continue
            model_output = self.denoiser(self.denoiser_input(latents, x0), t.expand(batch_size).to(dtype),
                                         return_dict=False, **given)[0]
            latents, x0 = scheduler.step(model_output, t, latents, generator=generator, return_dict=False)
            if known is not None:
                latents = reimpose_known(latents, known, keep, scheduler.sigmas[i + 1], generator)
            latents = self.run_step_end_callback(callback_on_step_end, i, t, callback_on_step_end_tensor_inputs,
                                                 {"latents": latents})["latents"]

        # 3. Bits -> token ids -> text
        self.maybe_free_model_hooks()
        bits = signal_to_bits(latents)
        token_ids, out_of_range = self.decode_ids(bits)
        if output_type == "text":
            sequences = ids_to_texts(self.tokenizer, token_ids)
            if out_of_range.any():
                logger.warning(f"{int(out_of_range.sum())} generated position(s) named no token of the tokenizer; "
                               f"the text shows {self.tokenizer.unk_token or 'nothing'} there (see `out_of_range`).")
        else:
            sequences = {"ids": token_ids, "bits": bits, "latent": latents}[output_type]
        if not return_dict:
            return (sequences, out_of_range)
        return BinaryFlowSequencePipelineOutput(sequences=sequences, out_of_range=out_of_range)
