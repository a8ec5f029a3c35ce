"""A sequence denoiser for binary flow matching built around a `transformers` encoder.

Each position carries the noisy signal of its token's bits, shape (B, L, num_bits), with ``num_bits`` from the
vocabulary size (see `TokenBitCodec`). A linear layer lifts it to the encoder's width, the embedding of the model
timestep ``sigma * num_train_timesteps`` is added at every position, a `transformers` encoder (BERT by default,
built from a config: nothing is downloaded) mixes the positions with full attention, and a linear layer returns one
value per bit: per-bit logits or ``x_hat``, as the scheduler's `prediction_type` reads them.
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
    ):
        super().__init__()
        self.codec = TokenBitCodec(vocab_size, bit_code)
        self.in_features = self.codec.num_bits * (2 if self_conditioning else 1)
        self.proj_in = nn.Linear(self.in_features, hidden_size)
        self.backbone = SequenceBackbone(backbone_type, hidden_size, num_layers, num_heads, intermediate_size,
                                         max_length, dropout, backbone_kwargs)
        self.proj_out = nn.Linear(hidden_size, self.codec.num_bits)
        # Starts at x_hat = 0 (logit 0): the posterior mean of a fair bit.
        nn.init.zeros_(self.proj_out.weight)
        nn.init.zeros_(self.proj_out.bias)

    @property
    def num_bits(self) -> int:
        return self.codec.num_bits

    def forward(self, sample: torch.Tensor, timestep, return_dict: bool = True):
        """
        Args:
            sample (`torch.Tensor` of shape (B, L, num_bits)): The noisy signal ``x_sigma``, L <= `max_length`; with
                `self_conditioning`, (B, L, 2 * num_bits), from `self_conditioned_input`.
            timestep (`float` or `torch.Tensor` of shape () or (B,)): ``sigma * num_train_timesteps``.
        """
        if sample.ndim != 3 or sample.shape[-1] != self.in_features:
            raise ValueError(f"`sample` must have shape (batch, length, {self.in_features}), got {tuple(sample.shape)}"
                             + (" (a self-conditioned model takes `self_conditioned_input(x_sigma, x_hat_prev)`)."
                                if self.config.self_conditioning else "."))
        if sample.shape[1] > self.config.max_length:
            raise ValueError(f"Sequences of {sample.shape[1]} positions are longer than the model's maximum "
                             f"{self.config.max_length}.")
        timestep = torch.as_tensor(timestep, device=sample.device, dtype=sample.dtype).flatten()
        hidden = self.backbone(self.proj_in(sample), timestep.expand(sample.shape[0]))
        output = self.proj_out(hidden)
        if not return_dict:
            return (output,)
        return BitSequenceTransformerOutput(sample=output)


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
