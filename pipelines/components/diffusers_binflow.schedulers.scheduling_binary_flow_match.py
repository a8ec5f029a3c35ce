# Hub-side file for the `scheduler` component (diffusers loads it with `trust_remote_code=True`).
# The scheduler lives in the `diffusers-binflow` package (pip install diffusers-binflow); this file only re-exports it.
from diffusers import ConfigMixin, SchedulerMixin  # noqa: F401  (diffusers looks these up in this module)
from diffusers_binflow.schedulers.scheduling_binary_flow_match import BinaryFlowMatchScheduler  # noqa: F401
