"""Loading and pushing for pipelines whose components come from this package (see `diffusers_binflow.hub`)."""

import os
from pathlib import Path

from ..hub import code_free_folder, snapshot_pipeline, upload_pipeline_folder
from ..model_cards import is_our_model_card, pipeline_model_card


class BinflowHubMixin:
    """Put before `DiffusionPipeline` in a pipeline's bases: safetensors-only, code-free loading from folders and
    Hub repo ids, `from_pipe` for any denoiser, and pushes that carry the Hub-side code files."""

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs):
        """Load from a folder (saved by `save_pretrained`, or a downloaded Hub repo) or a Hub repo id (import
        `diffusers_binflow` first). Weights load from safetensors only; no code from the folder or repo runs: the
        classes come from the installed package."""
        kwargs.setdefault("use_safetensors", True)
        folder = str(pretrained_model_name_or_path)
        if not os.path.isdir(folder):
            folder = cls.download(folder, **kwargs)
        with code_free_folder(folder) as loadable:
            pipeline = super().from_pretrained(loadable, **kwargs)
        pipeline.register_to_config(_name_or_path=str(pretrained_model_name_or_path))
        return pipeline

    @classmethod
    def from_pipe(cls, pipeline, **kwargs):
        """diffusers' `from_pipe`, carrying over the components of the same names: diffusers switches a model over only
        when its exact type is annotated in the new pipeline's `__init__`, and ours take any denoiser."""
        expected_modules, _ = cls._get_signature_keys(cls)
        components = {name: module for name, module in pipeline.components.items() if name in expected_modules}
        return super().from_pipe(pipeline, **{**components, **kwargs})

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
        """Used by `push_to_hub` and `save_pretrained(push_to_hub=True)`: upload with the Hub-side code files, and
        with our model card (install note, usage, tags) where diffusers wrote its generic one; a card of ours already
        in the repo (e.g. a training run's) is kept."""
        if subfolder is not None:
            raise ValueError("Pushing a pipeline into a subfolder of a repo is not supported.")
        readme = Path(working_dir) / "README.md"
        if not is_our_model_card(readme):
            readme.write_text(pipeline_model_card(self, repo_id), encoding="utf-8")
        return upload_pipeline_folder(working_dir, repo_id, type(self), token=token, commit_message=commit_message,
                                      create_pr=create_pr)
