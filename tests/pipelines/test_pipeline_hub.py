"""Pushing pipelines to a Hub and loading them back in a fresh process, through the real huggingface_hub client.

The Hub is tests/hub_server.py on 127.0.0.1 (conftest.py points this process at it); loads run in subprocesses,
as a user on another machine would.
"""

import json
import os
import textwrap
from pathlib import Path

import pytest
import torch
from huggingface_hub import create_repo, upload_file

from diffusers_binflow import BinaryFlowPipeline
from tests.hub_client import run_client
from tests.pipelines.test_pipeline_binary_flow import conditional_pipeline

SAMPLE = dict(batch_size=2, class_labels=[0, 2], guidance_scale=2.0, num_inference_steps=3, output_type="np")
SAMPLE_CODE = f"""
import torch
def sample(pipe):
    pipe.set_progress_bar_config(disable=True)
    images = pipe(**{SAMPLE!r}, generator=torch.Generator().manual_seed(0)).images
    return images.astype(int).tolist()
"""


def sample(pipe):
    return pipe(**SAMPLE, generator=torch.Generator().manual_seed(0)).images.astype(int).tolist()


@pytest.fixture(scope="module")
def pushed(session_hub):
    """A pipeline pushed twice (the second time with other weights): its repo id, commit shas and samples."""
    repo_id = "tester/binflow-tiny"
    pipe = conditional_pipeline(prediction_type="logits")
    first = pipe.push_to_hub(repo_id)
    first_images = sample(pipe)
    with torch.no_grad():
        for p in pipe.unet.parameters():
            p.mul_(1.5)
    second = pipe.push_to_hub(repo_id)
    return {"repo_id": repo_id, "shas": [first.oid, second.oid], "images": [first_images, sample(pipe)]}


def test_push_uploads_weights_by_lfs_and_the_hub_side_code(session_hub, pushed):
    files = session_hub.files(pushed["repo_id"])
    model_index = json.loads(files["model_index.json"])
    assert model_index["_class_name"] == ["pipeline_binary_flow", "BinaryFlowPipeline"]
    assert model_index["scheduler"][0] == "diffusers_binflow.schedulers.scheduling_binary_flow_match"
    assert "pipeline_binary_flow.py" in files
    assert "scheduler/diffusers_binflow.schedulers.scheduling_binary_flow_match.py" in files
    assert {"unet/diffusion_pytorch_model.safetensors", "unet/config.json", "scheduler/scheduler_config.json",
            "README.md"} <= set(files)
    lfs_puts = [r.path for r in session_hub.requests if r.method == "PUT" and r.path.startswith("/_lfs/upload/")]
    assert lfs_puts, "the safetensors weights go through the LFS upload path"
    assert all(r.has_auth for r in session_hub.requests if r.method == "POST" and r.path.endswith("/commit/main"))


def test_fresh_process_loads_from_the_repo_id_and_pins_revisions(session_hub, pushed, tmp_path):
    seen_before = len(session_hub.requests)  # the session's Hub also serves other tests (some fetch code on purpose)
    out = run_client(session_hub, tmp_path, SAMPLE_CODE + textwrap.dedent(f"""
        import diffusers_binflow
        from diffusers_binflow import BinaryFlowPipeline
        latest = BinaryFlowPipeline.from_pretrained({pushed['repo_id']!r})
        pinned = BinaryFlowPipeline.from_pretrained({pushed['repo_id']!r}, revision={pushed['shas'][0]!r})
        emit({{"latest": sample(latest), "pinned": sample(pinned), "class": type(latest.scheduler).__name__,
              "null": latest.config.null_class_label}})
    """))
    assert out["latest"] == pushed["images"][1] and out["pinned"] == pushed["images"][0]
    assert out["latest"] != out["pinned"]
    assert out["class"] == "BinaryFlowMatchScheduler" and out["null"] == 3
    downloaded = [r.path for r in session_hub.requests[seen_before:] if r.method == "GET" and "/resolve/" in r.path]
    assert downloaded and not any(path.endswith(".py") for path in downloaded), "no code is downloaded"


def test_generic_entry_point_loads_with_trust_remote_code_only(session_hub, pushed, tmp_path):
    out = run_client(session_hub, tmp_path, SAMPLE_CODE + textwrap.dedent(f"""
        from diffusers import DiffusionPipeline
        try:
            DiffusionPipeline.from_pretrained({pushed['repo_id']!r})
            refused = None
        except ValueError as err:
            refused = str(err)
        pipe = DiffusionPipeline.from_pretrained({pushed['repo_id']!r}, trust_remote_code=True)
        # The same cache now holds the code files; our class must still load without running them.
        from diffusers_binflow import BinaryFlowPipeline
        ours = BinaryFlowPipeline.from_pretrained({pushed['repo_id']!r})
        emit({{"refused": refused, "class": type(pipe).__name__, "scheduler": type(pipe.scheduler).__name__,
              "images": sample(pipe), "ours": sample(ours)}})
    """))
    assert "trust_remote_code" in out["refused"]
    assert out["class"] == "BinaryFlowPipeline" and out["scheduler"] == "BinaryFlowMatchScheduler"
    assert out["images"] == out["ours"] == pushed["images"][1]


def test_a_repo_without_model_index_is_named_in_the_error(session_hub):
    create_repo("tester/not-a-pipeline", exist_ok=True)
    upload_file(path_or_fileobj=b"# nothing here\n", path_in_repo="README.md", repo_id="tester/not-a-pipeline")
    with pytest.raises(EnvironmentError, match="model_index.json"):
        BinaryFlowPipeline.from_pretrained("tester/not-a-pipeline")


def test_save_pretrained_with_push_keeps_the_local_folder_plain_and_never_writes_the_token(
    session_hub, tmp_path, capsys, caplog
):
    secret = "hf_secret_never_on_disk"
    pipe = conditional_pipeline()
    pipe.save_pretrained(str(tmp_path / "out"), push_to_hub=True, repo_id="tester/pushed-by-save", token=secret)
    assert "model_index.json" in session_hub.files("tester/pushed-by-save")
    assert "pipeline_binary_flow.py" in session_hub.files("tester/pushed-by-save")
    local_index = json.loads((tmp_path / "out" / "model_index.json").read_text())
    assert local_index["_class_name"] == "BinaryFlowPipeline" and not list((tmp_path / "out").rglob("*.py"))
    BinaryFlowPipeline.from_pretrained(tmp_path / "out")  # the local folder still loads without remote code
    for root in (tmp_path, os.environ["HF_HOME"]):
        for path in Path(root).rglob("*"):
            if path.is_file():
                assert secret.encode() not in path.read_bytes(), path
    captured = capsys.readouterr()
    assert secret not in captured.out + captured.err + caplog.text


def test_a_plain_push_to_hub_uploads_our_model_card_not_diffusers_generic_one(session_hub, pushed):
    import yaml

    card = session_hub.files(pushed["repo_id"])["README.md"].decode()
    metadata = yaml.safe_load(card.split("---")[1])
    assert {"diffusers", "diffusers-binflow", "diffusers_binflow", "class-conditional"} <= set(metadata["tags"])
    assert "pipeline_tag" not in metadata, "the Hub has no class-conditional image task"
    assert "pip install diffusers-binflow" in card and 'BinaryFlowPipeline.from_pretrained("tester/binflow-tiny")' in card
    assert "class_labels=list(range(8))" in card and "TODO" not in card
    assert "capped at" not in card  # a logits model has no likelihood term to cap


def test_a_push_keeps_a_card_of_ours_already_in_the_repo(session_hub, tmp_path):
    repo_id = "tester/binflow-keeps-card"
    create_repo(repo_id)
    card = "---\nlibrary_name: diffusers\ntags:\n- diffusers_binflow\n---\n\n# Trained card\n\nmetrics here\n"
    upload_file(path_or_fileobj=card.encode(), path_in_repo="README.md", repo_id=repo_id)
    conditional_pipeline().push_to_hub(repo_id)
    assert "metrics here" in session_hub.files(repo_id)["README.md"].decode()
