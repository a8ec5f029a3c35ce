"""The MIMO channel ``y = H s + n`` in its real-valued equivalent form, and Gray-mapped modulations.

Convention (one place for it):

- A complex ``num_rx x num_tx`` channel ``H`` has CN(0, 1) entries (Rayleigh fading, ``E|h_ij|^2 = 1``), i.i.d. or
  Kronecker-correlated: ``H = R_rx^(1/2) H_w R_tx^(1/2)`` with exponential correlation ``R_ij = rho^|i - j|`` at both
  ends (Sionna's `exp_corr_mat` and `KroneckerModel`).
- The receiver knows ``H`` exactly, or an estimate ``H + E`` with ``E`` i.i.d. CN(0, csi_error_var). A receiver
  that also knows csi_error_var can read the estimate as the exact model `channel_given_estimate` derives.
- Complex symbols have unit average energy, ``E|s|^2 = Es = 1`` (QPSK: ``(+-1 +- 1j) / sqrt(2)``; 16-QAM:
  ``{-3, -1, 1, 3} / sqrt(10)`` per dimension; BPSK: ``+-1`` on the real axis only).
- The noise is CN(0, N0) per receive antenna; ``noise_var`` is always this ``N0`` (each real dimension carries
  ``N0 / 2``).
- ``snr_db`` is the average SNR per receive antenna, ``SNR = E||H s||^2 / E||n||^2 = num_tx * Es / N0``, so
  ``N0 = num_tx / 10^(snr_db / 10)``. The energy per information bit is ``Eb/N0 = SNR * num_rx / (num_tx *
  bits_per_symbol)`` (see `snr_db_to_ebn0_db`).

The real-valued equivalent stacks real and imaginary parts: ``y_r = [Re y; Im y]`` (2 num_rx),
``s_r = [Re s; Im s]`` (2 num_tx; BPSK keeps only ``Re s``, num_tx) and ``H_r = [[Re H, -Im H], [Im H, Re H]]``
(BPSK: ``[[Re H], [Im H]]``). Each real symbol is a Gray-mapped PAM level carrying ``bits_per_real`` bits, most
significant first; real symbol ``j`` holds bits ``j * bits_per_real ... (j + 1) * bits_per_real - 1``. Bit 1 is the
positive half of each axis, matching ``bits_to_signal``.
"""

import math
from dataclasses import dataclass

import torch
from diffusers.utils import BaseOutput

from ..bits import bits_to_signal


@dataclass(frozen=True)
class Modulation:
    """A square QAM (or BPSK) constellation seen as Gray-mapped PAM on each real dimension."""

    name: str
    bits_per_real: int  # bits carried by one real (PAM) symbol
    real_dims: int  # real symbols per complex symbol: 1 for BPSK, 2 for QAM

    @property
    def bits_per_symbol(self) -> int:
        return self.bits_per_real * self.real_dims

    @property
    def num_levels(self) -> int:
        return 2**self.bits_per_real

    @property
    def scale(self) -> float:
        """PAM levels are ``scale * {-(M-1), ..., -1, 1, ..., M-1}``, giving unit energy per complex symbol."""
        mean_square = (self.num_levels**2 - 1) / 3
        return math.sqrt(1 / (self.real_dims * mean_square))

    @property
    def energy_per_real(self) -> float:
        """Average energy of one real symbol: ``1 / real_dims``."""
        return 1 / self.real_dims

    def num_real_symbols(self, num_tx: int) -> int:
        return num_tx * self.real_dims

    def bits_to_symbols(self, bits: torch.Tensor) -> torch.Tensor:
        """Map bits (..., n * bits_per_real) in {0, 1} to real symbols (..., n) by Gray PAM.

        With ``x_k = 2 b_k - 1`` the Gray PAM level is ``x_0 (2^(m-1) - level(x_1 ... x_(m-1)))`` (unscaled), so
        one bit per dimension is exactly `bits_to_signal`.
        """
        m = self.bits_per_real
        if bits.shape[-1] % m:
            raise ValueError(f"{self.name} carries {m} bits per real symbol; got {bits.shape[-1]} bits.")
        dtype = bits.dtype if bits.is_floating_point() else torch.float32
        signs = bits_to_signal(bits, dtype=dtype).unflatten(-1, (-1, m))
        level = signs[..., -1]
        for k in range(m - 2, -1, -1):
            level = signs[..., k] * (2 ** (m - 1 - k) - level)
        return level * self.scale

    def constellation(self, device=None, dtype=torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
        """All PAM levels (M,) and their bit labels (M, bits_per_real), in ascending level order."""
        m = self.bits_per_real
        labels = ((torch.arange(2**m)[:, None] >> torch.arange(m - 1, -1, -1)) & 1).to(dtype)
        levels = self.bits_to_symbols(labels).flatten()
        order = levels.argsort()
        return levels[order].to(device), labels[order].to(device)

    def symbols_to_bits(self, symbols: torch.Tensor) -> torch.Tensor:
        """Hard decision: the bits (..., n * bits_per_real) of the nearest PAM level of each real symbol."""
        levels, labels = self.constellation(symbols.device, symbols.dtype)
        nearest = (symbols[..., None] - levels).abs().argmin(-1)
        return labels[nearest].flatten(-2)


MODULATIONS = {
    "bpsk": Modulation("bpsk", bits_per_real=1, real_dims=1),
    "qpsk": Modulation("qpsk", bits_per_real=1, real_dims=2),
    "16qam": Modulation("16qam", bits_per_real=2, real_dims=2),
    "64qam": Modulation("64qam", bits_per_real=3, real_dims=2),
}


def get_modulation(modulation: "str | Modulation") -> Modulation:
    if isinstance(modulation, Modulation):
        return modulation
    key = str(modulation).lower().replace("-", "")
    if key not in MODULATIONS:
        raise ValueError(f"Unknown modulation {modulation!r}; choose one of {tuple(MODULATIONS)}.")
    return MODULATIONS[key]


def snr_db_to_noise_var(snr_db, num_tx: int) -> torch.Tensor:
    """``N0`` (complex noise variance per receive antenna) for an SNR per receive antenna of `snr_db`."""
    return num_tx / 10 ** (torch.as_tensor(snr_db, dtype=torch.float32) / 10)


def snr_db_to_ebn0_db(snr_db: float, num_tx: int, num_rx: int, modulation: "str | Modulation") -> float:
    """Eb/N0 in dB of an SNR per receive antenna: the received energy per channel use over all antennas,
    ``num_rx * num_tx * Es``, shared by its ``num_tx * bits_per_symbol`` information bits."""
    bits = get_modulation(modulation).bits_per_symbol
    return snr_db + 10 * math.log10(num_rx / (num_tx * bits))


def complex_to_real(y: torch.Tensor, H: torch.Tensor, modulation: "str | Modulation"):
    """The real-valued equivalent ``(y_r (B, 2 num_rx), H_r (B, 2 num_rx, n))`` of complex ``y (B, num_rx)`` and
    ``H (B, num_rx, num_tx)``."""
    modulation = get_modulation(modulation)
    y_r = torch.cat([y.real, y.imag], dim=-1)
    top = [H.real, -H.imag] if modulation.real_dims == 2 else [H.real]
    bottom = [H.imag, H.real] if modulation.real_dims == 2 else [H.imag]
    return y_r, torch.cat([torch.cat(top, dim=-1), torch.cat(bottom, dim=-1)], dim=-2)


@dataclass
class MIMOBatch(BaseOutput):
    """
    Channel uses of the real-valued equivalent system.

    Args:
        bits (`torch.Tensor` of shape (B, num_bits)): The transmitted bits, 0/1.
        symbols (`torch.Tensor` of shape (B, n)): The real symbols ``s_r``.
        H (`torch.Tensor` of shape (B, 2 num_rx, n)): The real channel ``H_r`` as the receiver knows it: what
            detectors are given.
        y (`torch.Tensor` of shape (B, 2 num_rx)): The received ``y_r = H_true s_r + n_r``.
        noise_var (`torch.Tensor` of shape (B,)): ``N0``, the complex noise variance per receive antenna.
        H_true (`torch.Tensor` of shape (B, 2 num_rx, n)): The channel that produced `y`; `H` itself when the
            receiver knows it exactly.
    """

    bits: torch.Tensor
    symbols: torch.Tensor
    H: torch.Tensor
    y: torch.Tensor
    noise_var: torch.Tensor
    H_true: torch.Tensor | None = None

    def __post_init__(self):
        if self.H_true is None:
            self.H_true = self.H
        super().__post_init__()


def simulate(
    batch_size: int,
    num_tx: int,
    num_rx: int,
    modulation: "str | Modulation",
    snr_db,
    generator: torch.Generator | None = None,
    device: str | torch.device | None = None,
    correlation: float = 0.0,
    csi_error_var: float = 0.0,
    csi_aware: bool = False,
) -> MIMOBatch:
    """Draw `batch_size` channel uses: uniform bits, Rayleigh ``H`` and AWGN at `snr_db` (SNR per receive antenna; a
    float or one value per channel use, shape (B,)). ``H`` is i.i.d., or Kronecker-correlated with exponential
    `correlation` rho in [0, 1) at both ends; with `csi_error_var` > 0 the batch's `H` is the receiver's estimate
    ``H_true + E``, ``E`` i.i.d. CN(0, csi_error_var), and with `csi_aware` the batch's `H` and `noise_var` are that
    estimate read as `channel_given_estimate` does (i.i.d. channels only). All randomness comes from `generator`
    (the same draws as an i.i.d. channel with exact knowledge, then ``E``)."""
    modulation = get_modulation(modulation)
    if min(batch_size, num_tx, num_rx) < 1:
        raise ValueError(f"batch_size, num_tx and num_rx must be positive, got {batch_size}, {num_tx}, {num_rx}.")
    if not 0 <= correlation < 1:
        raise ValueError(f"correlation must be in [0, 1) (1 makes the channel rank one), got {correlation}.")
    if not (math.isfinite(csi_error_var) and csi_error_var >= 0):
        raise ValueError(f"csi_error_var must be a finite number >= 0, got {csi_error_var}.")
    if csi_aware and correlation > 0:
        raise ValueError("csi_aware reads the estimate of an i.i.d. CN(0, 1) channel; with correlation > 0 the "
                         "channel's posterior mean is not a scaled estimate.")
    num_bits = modulation.num_real_symbols(num_tx) * modulation.bits_per_real
    bits = torch.randint(0, 2, (batch_size, num_bits), generator=generator, device=device).float()
    symbols = modulation.bits_to_symbols(bits)
    H_c = torch.randn(batch_size, num_rx, num_tx, dtype=torch.complex64, generator=generator, device=device)
    noise_c = torch.randn(batch_size, num_rx, dtype=torch.complex64, generator=generator, device=device)
    noise_var = snr_db_to_noise_var(snr_db, num_tx).to(device).expand(batch_size).contiguous()
    if correlation > 0:
        H_c = correlate(H_c, correlation)
    _, H = complex_to_real(noise_c, H_c, modulation)
    noise = torch.cat([noise_c.real, noise_c.imag], dim=-1) * noise_var[:, None].sqrt()
    y = (H @ symbols[..., None]).squeeze(-1) + noise
    known = H
    if csi_error_var > 0:
        error = torch.randn(H_c.shape, dtype=H_c.dtype, generator=generator, device=device) * math.sqrt(csi_error_var)
        _, known = complex_to_real(noise_c, H_c + error, modulation)
    if csi_aware:
        known, noise_var = channel_given_estimate(known, noise_var, csi_error_var, num_tx)
    return MIMOBatch(bits=bits, symbols=symbols, H=known, y=y, noise_var=noise_var, H_true=H)


def channel_given_estimate(H_estimate: torch.Tensor, noise_var, csi_error_var: float, num_tx: int):
    """The linear Gaussian model of ``y`` given an estimate ``H_hat = H + E`` of an i.i.d. CN(0, 1) channel, ``E``
    i.i.d. CN(0, v): returns ``(H_hat / (1 + v), N0 + num_tx v / (1 + v))`` to give any detector in place of
    ``(H_hat, N0)``.

    Given ``H_hat``, ``H = H_hat / (1 + v) + W`` with ``W`` i.i.d. CN(0, v / (1 + v)) and independent of ``H_hat``,
    so ``y = H_hat s / (1 + v) + (W s + n)`` where ``W s + n`` is CN(0, (N0 + ||s||^2 v / (1 + v)) I). Unit-energy
    symbols give ``||s||^2 = num_tx`` on average, and exactly for BPSK and QPSK: for those the model is exact, and
    ML on it is the optimal detector given the estimate. Works on the real-valued or the complex ``H``."""
    if not (math.isfinite(csi_error_var) and csi_error_var >= 0):
        raise ValueError(f"csi_error_var must be a finite number >= 0, got {csi_error_var}.")
    shrink = 1 / (1 + csi_error_var)
    return H_estimate * shrink, noise_var + num_tx * csi_error_var * shrink


def correlate(H: torch.Tensor, rho: float) -> torch.Tensor:
    """Sionna's Kronecker model with exponential correlation ``rho^|i - j|`` at both ends, applied to i.i.d. complex
    ``H (B, num_rx, num_tx)``; each entry keeps ``E|h_ij|^2 = 1``."""
    # Imported here: Sionna takes a second to import, and only correlated channels need it.
    from sionna.phy.channel import KroneckerModel, exp_corr_mat

    num_rx, num_tx = H.shape[-2:]
    where = dict(precision="double" if H.dtype == torch.complex128 else "single", device=str(H.device))
    model = KroneckerModel(exp_corr_mat(rho, num_tx, **where), exp_corr_mat(rho, num_rx, **where), **where)
    return model(H)


def check_channel_inputs(y: torch.Tensor, H: torch.Tensor, noise_var, num_bits_per_real: int | None = None):
    """Validate a real-valued batch: ``y (B, 2 num_rx)``, ``H (B, 2 num_rx, n)``, ``noise_var`` a positive float or
    (B,). Returns `noise_var` as a (B,) tensor."""
    if y.ndim != 2 or H.ndim != 3:
        raise ValueError(f"Expected y of shape (B, 2*num_rx) and H of shape (B, 2*num_rx, n); got y "
                         f"{tuple(y.shape)} and H {tuple(H.shape)}.")
    if H.shape[0] != y.shape[0] or H.shape[1] != y.shape[1]:
        raise ValueError(f"y {tuple(y.shape)} and H {tuple(H.shape)} disagree: H must be (B, y.shape[1], n) with "
                         "the same batch size B.")
    if H.shape[2] > H.shape[1]:
        raise ValueError(f"H {tuple(H.shape)} has more real symbols than real observations; this system is not "
                         "supported (num_rx must be at least num_tx).")
    if torch.as_tensor(noise_var).is_complex():
        # Converting it to a real tensor would silently drop the imaginary part.
        raise ValueError("`noise_var` (N0) is the real noise variance per receive antenna, E|n|^2 of the complex "
                         f"noise; got a complex value {noise_var}.")
    noise_var = torch.as_tensor(noise_var, dtype=y.dtype, device=y.device)
    noise_var = noise_var.expand(y.shape[0]) if noise_var.ndim == 0 else noise_var
    if noise_var.shape != (y.shape[0],):
        raise ValueError(f"noise_var must be a float or hold one value per channel use ({y.shape[0]}), got shape "
                         f"{tuple(noise_var.shape)}.")
    for name, tensor in (("y", y), ("H", H), ("noise_var", noise_var)):
        if not torch.isfinite(tensor).all():
            raise ValueError(f"`{name}` contains non-finite values (NaN or inf).")
    if (noise_var <= 0).any():
        raise ValueError("noise_var (N0) must be positive.")
    return noise_var


__all__ = ["MIMOBatch", "MODULATIONS", "Modulation", "channel_given_estimate", "check_channel_inputs", "complex_to_real",
           "correlate",
           "get_modulation", "simulate", "snr_db_to_ebn0_db", "snr_db_to_noise_var"]
