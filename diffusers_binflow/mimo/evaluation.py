"""Bit error rates by Monte Carlo, shared by the training script's model card and the benchmark."""

import time
from dataclasses import asdict, dataclass

import torch

from .channel import get_modulation, simulate


@dataclass
class BERResult:
    snr_db: float
    bit_errors: int
    bits: int
    channel_uses: int
    seconds: float  # detection time only (simulation excluded)
    stopped_by: str  # "errors", "bits" or "time"

    @property
    def ber(self) -> float:
        return self.bit_errors / self.bits

    @property
    def channel_uses_per_second(self) -> float:
        return self.channel_uses / max(self.seconds, 1e-9)

    def to_dict(self) -> dict:
        return {**asdict(self), "ber": self.ber, "channel_uses_per_second": round(self.channel_uses_per_second, 1)}


def measure_ber(detect, num_tx: int, num_rx: int, modulation, snr_db: float, *, min_errors: int = 200,
                max_bits: int = 1_000_000, batch_size: int = 4096, max_seconds: float | None = None,
                seed: int = 0, device=None, correlation: float = 0.0, csi_error_var: float = 0.0,
                csi_aware: bool = False) -> BERResult:
    """Count bit errors of ``detect(y, H, noise_var) -> bits`` over fresh channel uses at `snr_db` until at least
    `min_errors` errors, `max_bits` bits, or `max_seconds` of detection time. Batch i of a given `seed` is the
    same channel realisation for every detector, so detectors are compared on identical data. `correlation`,
    `csi_error_var` and `csi_aware` choose the channel and what the receiver makes of its estimate of ``H``
    (`simulate`); detectors see that."""
    modulation = get_modulation(modulation)
    errors = bits = uses = 0
    seconds, stopped_by, index = 0.0, "bits", 0
    while bits < max_bits:
        generator = torch.Generator(device or "cpu").manual_seed(seed * 1_000_003 + index)
        batch = simulate(batch_size, num_tx, num_rx, modulation, snr_db, generator=generator, device=device,
                         correlation=correlation, csi_error_var=csi_error_var, csi_aware=csi_aware)
        start = time.perf_counter()
        detected = detect(batch.y, batch.H, batch.noise_var)
        seconds += time.perf_counter() - start
        errors += int((detected != batch.bits).sum())
        bits, uses, index = bits + batch.bits.numel(), uses + batch_size, index + 1
        if errors >= min_errors:
            stopped_by = "errors"
            break
        if max_seconds is not None and seconds >= max_seconds:
            stopped_by = "time"
            break
    return BERResult(snr_db=float(snr_db), bit_errors=errors, bits=bits, channel_uses=uses,
                     seconds=round(seconds, 3), stopped_by=stopped_by)
