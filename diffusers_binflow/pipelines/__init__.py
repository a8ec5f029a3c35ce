from .pipeline_binary_flow import BinaryFlowPipeline


__all__ = ["BinaryFlowPipeline"]
