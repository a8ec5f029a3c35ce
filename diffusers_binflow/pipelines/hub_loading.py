"""Loading and pushing for pipelines whose components come from this package (see `diffusers_binflow.hub`)."""

import os

from ..hub import snapshot_pipeline, upload_pipeline_folder


class BinflowHubMixin:
    """Put before `DiffusionPipeline` in a pipeline's bases: safetensors-only, code-free loading from folders and
    Hub repo ids, and pushes that carry the Hub-side code files."""

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs):
        """Load from a folder or a Hub repo id (import `diffusers_binflow` first). Weights load from safetensors only;
        no code from the repo runs."""
        kwargs.setdefault("use_safetensors", True)
        return super().from_pretrained(pretrained_model_name_or_path, **kwargs)

    @classmethod
    def download(cls, pretrained_model_name, **kwargs) -> str:
        """Fetch a Hub repo without its code files (diffusers' own `download` refuses our components)."""
        return snapshot_pipeline(
            pretrained_model_name,
            revision=kwargs.get("revision"),
            cache_dir=kwargs.get("cache_dir"),
            token=kwargs.get("token"),
            local_files_only=kwargs.get("local_files_only", False),
            force_download=kwargs.get("force_download", False),
        )

    def _upload_folder(self, working_dir: str | os.PathLike, repo_id: str, token=None, commit_message=None,
                       create_pr=False, subfolder=None):
        """Used by `push_to_hub` and `save_pretrained(push_to_hub=True)`: upload with the Hub-side code files."""
        if subfolder is not None:
            raise ValueError("Pushing a pipeline into a subfolder of a repo is not supported.")
        return upload_pipeline_folder(working_dir, repo_id, type(self), token=token, commit_message=commit_message,
                                      create_pr=create_pr)
