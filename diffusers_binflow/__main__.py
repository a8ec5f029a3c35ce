"""`python -m diffusers_binflow push FOLDER REPO_ID`: (re)try publishing a pipeline saved by one of our classes."""

import argparse
import json
from pathlib import Path

from huggingface_hub import create_repo

from . import pipelines
from .hub import upload_pipeline_folder


def saved_pipeline_class(folder) -> type:
    """Our pipeline class named by the `_class_name` of the folder's model_index.json."""
    index = Path(folder) / "model_index.json"
    if not index.is_file():
        raise SystemExit(f"{folder} has no model_index.json; pass a folder written by `save_pretrained`.")
    name = json.loads(index.read_text())["_class_name"]
    name = name[-1] if isinstance(name, list) else name
    if name not in pipelines.__all__:
        raise SystemExit(f"{folder} holds a {name}, not one of this package's pipelines {pipelines.__all__}.")
    return getattr(pipelines, name)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m diffusers_binflow", description=__doc__)
    parser.add_argument("command", choices=["push"])
    parser.add_argument("folder", help="A folder written by `save_pretrained` (e.g. a training --output_dir).")
    parser.add_argument("repo_id")
    parser.add_argument("--private", action="store_true")
    parser.add_argument("--token", default=None, help="Default: your saved login.")
    args = parser.parse_args(argv)
    repo_id = create_repo(args.repo_id, private=args.private, token=args.token, exist_ok=True).repo_id
    commit = upload_pipeline_folder(args.folder, repo_id, saved_pipeline_class(args.folder), token=args.token)
    print(f"Pushed {args.folder} to {commit.commit_url}")


if __name__ == "__main__":
    main()
