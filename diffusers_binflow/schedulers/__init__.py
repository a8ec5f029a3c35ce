from .scheduling_binary_flow_match import BinaryFlowMatchScheduler, BinaryFlowMatchSchedulerOutput


__all__ = ["BinaryFlowMatchScheduler", "BinaryFlowMatchSchedulerOutput"]
