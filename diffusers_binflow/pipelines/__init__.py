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
