"""MIMO detection with conditional binary flow matching: the channel, classic detectors and the denoiser."""

from .channel import (
    MODULATIONS,
    MIMOBatch,
    Modulation,
    channel_given_estimate,
    complex_to_real,
    get_modulation,
    simulate,
    snr_db_to_ebn0_db,
    snr_db_to_noise_var,
)
from .detectors import (
    DETECTORS,
    DetectionOutput,
    expectation_propagation,
    k_best,
    lmmse,
    lmmse_estimate,
    maximum_likelihood,
    zero_forcing,
)

__all__ = [
    "DETECTORS",
    "DetectionOutput",
    "MIMOBatch",
    "MODULATIONS",
    "Modulation",
    "channel_given_estimate",
    "complex_to_real",
    "expectation_propagation",
    "get_modulation",
    "k_best",
    "lmmse",
    "lmmse_estimate",
    "maximum_likelihood",
    "simulate",
    "snr_db_to_ebn0_db",
    "snr_db_to_noise_var",
    "zero_forcing",
]
