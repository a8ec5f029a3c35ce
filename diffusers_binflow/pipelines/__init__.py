import diffusers

from .pipeline_binary_flow import BinaryFlowPipeline
from .pipeline_binary_flow_mimo import BinaryFlowMIMOPipeline, MIMODetectionOutput
from .pipeline_binary_flow_sequence import (
    BinaryFlowSequencePipeline,
    BinaryFlowSequencePipelineOutput,
)

__all__ = [
    "BinaryFlowMIMOPipeline",
    "BinaryFlowPipeline",
    "BinaryFlowSequencePipeline",
    "BinaryFlowSequencePipelineOutput",
    "MIMODetectionOutput",
]

# `DiffusionPipeline.from_pretrained` resolves a saved folder's `_class_name` as an attribute of the `diffusers` module
# (diffusers has no registry for other packages' pipelines): importing this package makes ours resolvable there.
for _pipeline_class in (BinaryFlowPipeline, BinaryFlowMIMOPipeline, BinaryFlowSequencePipeline):
    setattr(diffusers, _pipeline_class.__name__, _pipeline_class)
