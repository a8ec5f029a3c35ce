"""A sequence denoiser for binary flow matching built around a `transformers` encoder.

Each position carries the noisy signal of its token's bits, shape (B, L, num_bits), with ``num_bits`` from the
vocabulary size (see `TokenBitCodec`). A linear layer lifts it to the encoder's width, the embedding of the model
timestep ``sigma * num_train_timesteps`` is added at every position, a `transformers` encoder (BERT by default,
built from a config: nothing is downloaded) mixes the positions with full attention, and a linear layer returns one
value per bit: per-bit logits or ``x_hat``, as the scheduler's `prediction_type` reads them. A model built with
`known_conditioning` also reads given tokens exactly: where ``known_mask`` is true a position carries the clean signal
of its token instead of the noisy one, with a flag feature saying so (how masked diffusion conditions: the prompt is
seen at every sigma, not only through noise); it learns that from `sample_known_mask`.
"""

import inspect
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from diffusers.utils import BaseOutput
from torch import nn
from transformers import AutoConfig, AutoModel

from ..bits import bits_to_signal
from .codec import TokenBitCodec

# The names different encoder configs give their dropout rates; `dropout` sets whichever the backbone has.
DROPOUT_OPTIONS = ("hidden_dropout_prob", "attention_probs_dropout_prob", "attention_dropout", "embedding_dropout",
                   "mlp_dropout")


class SequenceBackbone(nn.Module):
    """
    A `transformers` encoder of type `backbone_type` (any `AutoModel` that accepts `inputs_embeds`, e.g. `"bert"` or
    `"modernbert"`) conditioned on the timestep: ``(inputs_embeds (B, L, hidden), timestep (B,)) -> (B, L, hidden)``.

    Its own token embedding table is unused (one frozen row): inputs come in as embeddings.
    """

    def __init__(self, backbone_type: str, hidden_size: int, num_layers: int, num_heads: int,
                 intermediate_size: int | None, max_length: int, dropout: float, backbone_kwargs: dict | None):
        super().__init__()
        defaults = AutoConfig.for_model(backbone_type)
        # Encoder configs initialise weights with std `initializer_range` (0.02), a scale set for width 768: at the
        # widths trained here it starts the positions at 3% of the input and attention flat, and learning is slow.
        # 1/sqrt(hidden_size) instead; only fresh weights see it (loading a saved model replaces them).
        options = dict(hidden_size=hidden_size, num_hidden_layers=num_layers, num_attention_heads=num_heads,
                       intermediate_size=intermediate_size or 4 * hidden_size, max_position_embeddings=max_length,
                       initializer_range=hidden_size**-0.5, vocab_size=1, pad_token_id=0, bos_token_id=None,
                       eos_token_id=None, cls_token_id=None, sep_token_id=None)
        options = {name: value for name, value in options.items() if hasattr(defaults, name)}
        options.update({name: dropout for name in DROPOUT_OPTIONS if hasattr(defaults, name)})
        config = AutoConfig.for_model(backbone_type, **{**options, **(backbone_kwargs or {})})
        model_class = AutoModel._model_mapping[type(config)]
        no_pooler = {"add_pooling_layer": False} if "add_pooling_layer" in inspect.signature(model_class).parameters \
            else {}
        self.encoder = model_class(config, **no_pooler)
        self.encoder.get_input_embeddings().weight.requires_grad_(False)
        self.time_proj = Timesteps(hidden_size, flip_sin_to_cos=True, downscale_freq_shift=0)
        self.time_embedding = TimestepEmbedding(hidden_size, hidden_size)

    def forward(self, inputs_embeds: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
        time = self.time_embedding(self.time_proj(timestep).to(inputs_embeds.dtype))
        return self.encoder(inputs_embeds=inputs_embeds + time[:, None], return_dict=True).last_hidden_state


@dataclass
class BitSequenceTransformerOutput(BaseOutput):
    """
    Args:
        sample (`torch.Tensor` of shape (B, L, num_bits)): One value per bit: logits or ``x_hat``.
    """

    sample: torch.Tensor


class BitSequenceTransformer(ModelMixin, ConfigMixin):
    """
    The denoiser of [`BinaryFlowSequencePipeline`]: noisy bit signals (B, L, num_bits) and timesteps -> one value
    per bit (see the module docstring).

    Args:
        vocab_size (`int`): Number of token ids it generates; sets ``num_bits = ceil(log2(vocab_size))``.
        bit_code (`str`): How ids are written as bits, `"binary"` or `"gray"` (see `TokenBitCodec`).
        max_length (`int`): The longest sequence (the encoder's position table).
        backbone_type (`str`): A `transformers` model type, e.g. `"bert"` or `"modernbert"`.
        hidden_size, num_layers, num_heads (`int`): The encoder's size.
        intermediate_size (`int`, *optional*): Its feed-forward width; defaults to 4 * hidden_size.
        dropout (`float`): Every dropout rate of the encoder.
        backbone_kwargs (`dict`, *optional*): Further options of the encoder's config.
        self_conditioning (`bool`): Take ``self_conditioned_input(x_sigma, x_hat_prev)``, (B, L, 2 * num_bits): the
            noisy bits and the previous estimate (self-conditioning, Bit Diffusion).
        known_conditioning (`bool`): Accept ``known_signal`` and ``known_mask`` (see `forward`).
    """

    # The encoder's layers take diffusers' `enable_gradient_checkpointing` (transformers'
    # GradientCheckpointingLayer reads the same two attributes diffusers sets).
    _supports_gradient_checkpointing = True

    @register_to_config
    def __init__(
        self,
        vocab_size: int = 256,
        bit_code: str = "binary",
        max_length: int = 64,
        backbone_type: str = "bert",
        hidden_size: int = 128,
        num_layers: int = 4,
        num_heads: int = 4,
        intermediate_size: int | None = None,
        dropout: float = 0.0,
        backbone_kwargs: dict | None = None,
        self_conditioning: bool = False,
        known_conditioning: bool = False,
    ):
        super().__init__()
        self.codec = TokenBitCodec(vocab_size, bit_code)
        self.in_features = self.codec.num_bits * (2 if self_conditioning else 1)
        self.proj_in = nn.Linear(self.in_features + known_conditioning, hidden_size)
        self.backbone = SequenceBackbone(backbone_type, hidden_size, num_layers, num_heads, intermediate_size,
                                         max_length, dropout, backbone_kwargs)
        self.proj_out = nn.Linear(hidden_size, self.codec.num_bits)
        # Starts at x_hat = 0 (logit 0): the posterior mean of a fair bit.
        nn.init.zeros_(self.proj_out.weight)
        nn.init.zeros_(self.proj_out.bias)

    @property
    def num_bits(self) -> int:
        return self.codec.num_bits

    def forward(self, sample: torch.Tensor, timestep, known_signal: torch.Tensor | None = None,
                known_mask: torch.Tensor | None = None, return_dict: bool = True):
        """
        Args:
            sample (`torch.Tensor` of shape (B, L, num_bits)): The noisy signal ``x_sigma``, L <= `max_length`; with
                `self_conditioning`, (B, L, 2 * num_bits), from `self_conditioned_input`.
            timestep (`float` or `torch.Tensor` of shape () or (B,)): ``sigma * num_train_timesteps``.
            known_signal (`torch.Tensor` of shape (B, L, num_bits), *optional*): The clean signal ``x`` of the
                given tokens (`known_conditioning` models only).
            known_mask (`torch.Tensor` of shape (B, L), *optional*): True where the token is given: there the model
                reads `known_signal` instead of ``x_sigma``.
        """
        if sample.ndim != 3 or sample.shape[-1] != self.in_features:
            raise ValueError(f"`sample` must have shape (batch, length, {self.in_features}), got {tuple(sample.shape)}"
                             + (" (a self-conditioned model takes `self_conditioned_input(x_sigma, x_hat_prev)`)."
                                if self.config.self_conditioning else "."))
        if sample.shape[1] > self.config.max_length:
            raise ValueError(f"Sequences of {sample.shape[1]} positions are longer than the model's maximum "
                             f"{self.config.max_length}.")
        if self.config.known_conditioning:
            sample = with_known_tokens(sample, known_signal, known_mask, self.codec.num_bits)
        elif known_mask is not None:
            raise ValueError("This denoiser was not built with `known_conditioning`: it reads given tokens only "
                             "through the noisy state (the pipeline re-imposes them on the path).")
        timestep = torch.as_tensor(timestep, device=sample.device, dtype=sample.dtype).flatten()
        hidden = self.backbone(self.proj_in(sample), timestep.expand(sample.shape[0]))
        output = self.proj_out(hidden)
        if not return_dict:
            return (output,)
        return BitSequenceTransformerOutput(sample=output)


def with_known_tokens(sample: torch.Tensor, known_signal: torch.Tensor | None, known_mask: torch.Tensor | None,
                      num_bits: int) -> torch.Tensor:
    """The input of a `known_conditioning` model: `sample` with its first `num_bits` features (the state) replaced
    by `known_signal` where `known_mask` is true, and that mask appended as one more feature (B, L, F + 1). No mask:
    nothing is known."""
    if known_mask is None:
        return torch.cat([sample, sample.new_zeros(sample.shape[:-1] + (1,))], -1)
    if known_signal is None or known_signal.shape != sample.shape[:-1] + (num_bits,) \
            or known_mask.shape != sample.shape[:-1]:
        raise ValueError(f"`known_signal` must have shape {tuple(sample.shape[:-1]) + (num_bits,)} and `known_mask` "
                         f"{tuple(sample.shape[:-1])}; got {None if known_signal is None else tuple(known_signal.shape)}"
                         f" and {tuple(known_mask.shape)}.")
    mask = known_mask.to(torch.bool)[..., None]
    state = torch.where(mask, known_signal.to(sample.dtype), sample[..., :num_bits])
    return torch.cat([state, sample[..., num_bits:], mask.to(sample.dtype)], -1)


def sample_known_mask(batch_size: int, length: int, probability: float, generator: torch.Generator | None = None,
                      device=None, span_fraction: float = 0.0) -> torch.Tensor:
    """Which tokens a `known_conditioning` model is given in training, (B, L) bool. With `probability` a sequence is
    given some: with `span_fraction` of those, every position but one contiguous span (start ~ U{0, ..., L - 1},
    length ~ U{1, ..., L - start}: an answer, a suffix or a gap to fill in), otherwise each position independently
    with its own rate ``r ~ U(0, 1)`` (scattered positions). Without it, none. Drawn from `generator`; with
    `span_fraction` 0 the draws are those of the scattered masks alone."""
    has_known = torch.rand(batch_size, 1, generator=generator, device=device) < probability
    rate = torch.rand(batch_size, 1, generator=generator, device=device)
    known = torch.rand(batch_size, length, generator=generator, device=device) < rate
    if span_fraction > 0:
        start, extent, use_span = torch.rand(3, batch_size, 1, generator=generator, device=device)
        start = (start * length).floor()
        end = start + 1 + (extent * (length - start)).floor()
        positions = torch.arange(length, device=device)
        known = torch.where(use_span < span_fraction, (positions < start) | (positions >= end), known)
    return has_known & known


def known_tokens_for_training(bits: torch.Tensor, probability: float, bit_scale: float,
                              generator: torch.Generator | None = None, span_fraction: float = 0.0) -> dict:
    """The `known_signal` / `known_mask` model kwargs of a training batch of bits (B, L, num_bits) (`sample_known_mask`
    with `probability` and `span_fraction`), or none when `probability` is 0 (a denoiser without
    `known_conditioning`)."""
    if probability == 0:
        return {}
    return {"known_signal": bits_to_signal(bits, bit_scale),
            "known_mask": sample_known_mask(*bits.shape[:2], probability, generator, bits.device, span_fraction)}


# Encoder sizes: `tiny` trains on one CPU thread in minutes, `small` and `base` want a GPU.
SEQUENCE_MODEL_PRESETS = {
    "tiny": dict(hidden_size=64, num_layers=3, num_heads=4),
    "small": dict(hidden_size=256, num_layers=6, num_heads=4),
    "base": dict(hidden_size=512, num_layers=8, num_heads=8),
}


def build_sequence_model(preset_or_path: str, vocab_size: int, max_length: int, **overrides) -> BitSequenceTransformer:
    """A fresh `BitSequenceTransformer` from a preset name or a JSON file of its arguments; `vocab_size`,
    `max_length` and `overrides` (e.g. `bit_code`, `backbone_type`) take precedence."""
    if preset_or_path in SEQUENCE_MODEL_PRESETS:
        config = dict(SEQUENCE_MODEL_PRESETS[preset_or_path])
    elif Path(preset_or_path).is_file():
        config = json.loads(Path(preset_or_path).read_text())
    else:
        raise ValueError(f"Unknown model config {preset_or_path!r}: use one of {sorted(SEQUENCE_MODEL_PRESETS)} or "
                         "a JSON file of BitSequenceTransformer arguments.")
    config.update(vocab_size=vocab_size, max_length=max_length, **overrides)
    return BitSequenceTransformer(**config)
