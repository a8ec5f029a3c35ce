# Hub-side entry point for `DiffusionPipeline.from_pretrained(repo, trust_remote_code=True)`.
# The pipeline lives in the `diffusers-binflow` package (pip install diffusers-binflow); this file only re-exports it.
from diffusers_binflow.pipelines.pipeline_binary_flow_mimo import BinaryFlowMIMOPipeline  # noqa: F401
