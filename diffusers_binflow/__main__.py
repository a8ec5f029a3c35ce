"""`python -m diffusers_binflow push FOLDER REPO_ID`: (re)try publishing a saved BinaryFlowPipeline."""

import argparse

from huggingface_hub import create_repo

from .hub import upload_pipeline_folder
from .pipelines import BinaryFlowPipeline


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m diffusers_binflow", description=__doc__)
    parser.add_argument("command", choices=["push"])
    parser.add_argument("folder", help="A folder written by `save_pretrained` (e.g. a training --output_dir).")
    parser.add_argument("repo_id")
    parser.add_argument("--private", action="store_true")
    parser.add_argument("--token", default=None, help="Default: your saved login.")
    args = parser.parse_args(argv)
    repo_id = create_repo(args.repo_id, private=args.private, token=args.token, exist_ok=True).repo_id
    commit = upload_pipeline_folder(args.folder, repo_id, BinaryFlowPipeline, token=args.token)
    print(f"Pushed {args.folder} to {commit.commit_url}")


if __name__ == "__main__":
    main()
