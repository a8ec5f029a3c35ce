"""Hub I/O for pipelines whose components come from this package.

diffusers refuses a Hub repo whose `model_index.json` names a component library other than diffusers/transformers
unless the repo ships ``<component>/<library>.py``, and `DiffusionPipeline.from_pretrained` can only find a
third-party pipeline class through a ``["<module>", "<class>"]`` `_class_name` and a ``<module>.py`` file. So:

- pushing uploads the saved folder plus the Hub-side files of the top-level `pipelines/` folder (shipped in the
  package as `diffusers_binflow.hub_code`) and a `model_index.json` whose `_class_name` points at them, in one
  commit; the local folder is left as `save_pretrained` wrote it;
- our pipelines' `from_pretrained` downloads with `snapshot_pipeline`, which never fetches code or pickles, and
  loads our classes from the installed package (no remote code runs unless the user asks diffusers for it), also
  from a folder that holds the code files (`code_free_folder`).
"""

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import resources
from pathlib import Path

from huggingface_hub import CommitOperationAdd, create_commit, snapshot_download
from huggingface_hub.utils import filter_repo_objects


HUB_CODE_PACKAGE = "diffusers_binflow.hub_code"
OUR_LIBRARY_PREFIX = "diffusers_binflow."
# What from_pretrained never downloads: code, pickled weights, training leftovers.
DOWNLOAD_IGNORE_PATTERNS = ["*.py", "*.bin", "*.pt", "*.pth", "*.ckpt", "*.pkl", "checkpoint-*", "logs/*"]
# What a push never uploads from the saved folder.
UPLOAD_IGNORE_PATTERNS = [".git/*", ".cache/*", "checkpoint-*", "logs/*", "samples/*", "*.pkl"]


def hub_code_dir() -> Path:
    """The folder of Hub-side code files (the repo's top-level `pipelines/`)."""
    return Path(str(resources.files(HUB_CODE_PACKAGE)))


def hub_code_files(model_index: dict, pipeline_class: type) -> dict[str, Path]:
    """Repo path -> local file of the Hub-side code a pipeline with this `model_index` needs."""
    code_dir = hub_code_dir()
    module = pipeline_class.__module__.rsplit(".", 1)[-1]
    files = {f"{module}.py": code_dir / f"{module}.py"}
    for component, value in model_index.items():
        if isinstance(value, list) and isinstance(value[0], str) and value[0].startswith(OUR_LIBRARY_PREFIX):
            files[f"{component}/{value[0]}.py"] = code_dir / "components" / f"{value[0]}.py"
    missing = [str(path) for path in files.values() if not path.is_file()]
    if missing:
        raise FileNotFoundError(f"Hub-side code files are missing from {code_dir}: {missing}.")
    return files


def upload_pipeline_folder(
    folder: str | os.PathLike,
    repo_id: str,
    pipeline_class: type,
    token: str | None = None,
    commit_message: str | None = None,
    create_pr: bool = False,
    ignore_patterns: list[str] | None = None,
):
    """Upload a `save_pretrained` folder to `repo_id` with the Hub-side code, in one commit. Returns the CommitInfo."""
    folder = Path(folder)
    model_index_path = folder / "model_index.json"
    if not model_index_path.is_file():
        raise FileNotFoundError(f"{folder} holds no model_index.json: save the pipeline with `save_pretrained` first.")
    model_index = json.loads(model_index_path.read_text())
    code_files = hub_code_files(model_index, pipeline_class)
    model_index["_class_name"] = [pipeline_class.__module__.rsplit(".", 1)[-1], pipeline_class.__name__]

    local_files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    keep = filter_repo_objects(local_files, ignore_patterns=UPLOAD_IGNORE_PATTERNS + list(ignore_patterns or []))
    operations = [CommitOperationAdd(path_in_repo=rel, path_or_fileobj=str(folder / rel))
                  for rel in keep if rel != "model_index.json" and rel not in code_files]
    operations += [CommitOperationAdd(path_in_repo=rel, path_or_fileobj=str(path)) for rel, path in code_files.items()]
    operations.append(CommitOperationAdd(path_in_repo="model_index.json",
                                         path_or_fileobj=json.dumps(model_index, indent=2, sort_keys=True).encode()))
    return create_commit(repo_id, operations, commit_message=commit_message or f"Upload {pipeline_class.__name__}",
                         token=token, create_pr=create_pr)


def snapshot_pipeline(
    repo_id: str,
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    token: str | bool | None = None,
    local_files_only: bool = False,
    force_download: bool = False,
) -> str:
    """Download a pipeline repo (no code, no pickles, no checkpoints) and return its local folder.

    The folder is the repo's snapshot in the shared cache: it holds code files too when an earlier
    `trust_remote_code` load fetched them, so load it through `code_free_folder`.
    """
    folder = snapshot_download(repo_id, revision=revision, cache_dir=cache_dir, token=token,
                               local_files_only=local_files_only, force_download=force_download,
                               ignore_patterns=DOWNLOAD_IGNORE_PATTERNS)
    if not os.path.isfile(os.path.join(folder, "model_index.json")):
        raise EnvironmentError(f"{repo_id} has no model_index.json at revision {revision or 'main'}: "
                               "it is not a saved pipeline.")
    return folder


@contextmanager
def code_free_folder(folder: str | os.PathLike) -> Iterator[str]:
    """`folder` itself or, when it holds `.py` files, a temporary mirror of its other files (symlinks) for as long as
    the context lasts.

    diffusers treats a ``<_class_name[0]>.py`` or ``<component>/<library>.py`` it finds in a folder as code to run
    (with `trust_remote_code`) or refuses the folder; a pushed repo downloaded in full (`snapshot_download`, or a cache
    that a `trust_remote_code` load filled) has those files, and our classes must come from the installed package.
    """
    folder = Path(folder)
    if not any(folder.rglob("*.py")):
        yield str(folder)
        return
    with tempfile.TemporaryDirectory(prefix="binflow-code-free-") as view:
        for path in folder.rglob("*"):
            if path.is_file() and path.suffix != ".py":
                link = Path(view) / path.relative_to(folder)
                link.parent.mkdir(parents=True, exist_ok=True)
                link.symlink_to(path.resolve())
        yield view

