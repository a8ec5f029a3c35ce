"""diffusers-binflow: binary flow matching (arXiv 2602.10420) as diffusers components.

Import this package before loading a saved pipeline: diffusers resolves our classes from the module paths that
`model_index.json` records, and it only looks at modules that are already imported. Importing it also lets
`DiffusionPipeline.from_pretrained(folder)` find our pipeline classes (see `pipelines/__init__.py`).
"""

from .bits import bits_to_signal, signal_to_bits, signal_to_probabilities
from .losses import binary_flow_loss, implied_weight, inverse_square_weight
from .pipelines import BinaryFlowMIMOPipeline, BinaryFlowPipeline, BinaryFlowSequencePipeline
from .schedulers import BinaryFlowMatchScheduler, BinaryFlowMatchSchedulerOutput
from .timestep_sampling import sample_sigmas


__version__ = "0.1.0"

__all__ = [
    "BinaryFlowMatchScheduler",
    "BinaryFlowMIMOPipeline",
    "BinaryFlowPipeline",
    "BinaryFlowSequencePipeline",
    "BinaryFlowMatchSchedulerOutput",
    "binary_flow_loss",
    "bits_to_signal",
    "implied_weight",
    "inverse_square_weight",
    "sample_sigmas",
    "signal_to_bits",
    "signal_to_probabilities",
]
