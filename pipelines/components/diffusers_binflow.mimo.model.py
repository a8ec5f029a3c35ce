# Hub-side file for the `model` component (diffusers loads it with `trust_remote_code=True`).
# The model lives in the `diffusers-binflow` package (pip install diffusers-binflow); this file only re-exports it.
from diffusers import ConfigMixin, ModelMixin  # noqa: F401  (diffusers looks these up in this module)

from diffusers_binflow.mimo.model import MIMOFlowTransformer  # noqa: F401
