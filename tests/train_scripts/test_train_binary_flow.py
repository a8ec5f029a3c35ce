"""The training script end to end, as users run it: in subprocesses, on the bundled digits or small folders.

Runs use a very small UNet and a few steps; they check behaviour (outputs, fine-tuning, publishing, refusals), not
quality; resumption, data parallelism and faults are in test_run_resilience.py. The Hub is tests/hub_server.py (see conftest.py).
"""

import contextlib
import importlib.util
import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
import yaml
from safetensors.torch import load_file

from tests.hub_client import run_client
from tests.train_scripts.runs import TINY_UNET, binary_shapes_folder, load_script

SCRIPT = Path(__file__).resolve().parents[2] / "train_scripts" / "train_binary_flow.py"

@pytest.fixture(scope="module")
def tiny_config(tmp_path_factory):
    path = tmp_path_factory.mktemp("configs") / "tiny_unet.json"
    path.write_text(json.dumps(TINY_UNET))
    return str(path)


def command(output_dir, tiny_config, *extra, launcher=(sys.executable,)):
    return [*launcher, str(SCRIPT), "--output_dir", str(output_dir), "--model_config", tiny_config,
            "--train_batch_size", "8", "--max_train_steps", "4", "--num_inference_steps", "2",
            "--validation_steps", "2", "--logging_steps", "2", "--checkpointing_steps", "2", *extra]


def train(output_dir, tiny_config, *extra, expect_failure=False, launcher=(sys.executable,)):
    proc = subprocess.run(command(output_dir, tiny_config, *extra, launcher=launcher), capture_output=True,
                          text=True, timeout=600)
    if expect_failure:
        assert proc.returncode != 0, proc.stdout + proc.stderr
    else:
        assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def card_metadata(readme: Path) -> dict:
    return yaml.safe_load(readme.read_text().split("---")[1])


def unet_weights(folder: Path) -> dict:
    return load_file(str(folder / "unet" / "diffusion_pytorch_model.safetensors"))


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_config):
    """A class-conditional run on the bundled digits (4 steps, checkpoints at 2 and 4)."""
    output_dir = tmp_path_factory.mktemp("runs") / "digits"
    proc = train(output_dir, tiny_config, "--class_conditional", "--metrics_num_samples", "200")
    return output_dir, proc


def test_a_short_run_writes_a_loadable_pipeline_grids_logs_and_card(trained):
    output_dir, proc = trained
    from diffusers_binflow import BinaryFlowPipeline

    pipe = BinaryFlowPipeline.from_pretrained(output_dir)
    images = pipe(batch_size=2, class_labels=[3, 7], guidance_scale=2.0, num_inference_steps=2,
                  output_type="np").images
    assert images.shape == (2, 28, 28, 1) and set(np.unique(images)) <= {0.0, 1.0}
    assert pipe.config.null_class_label == 10 and pipe.unet.config.num_class_embeds == 11
    # The image default: a likelihood-residual model, sampled with the likelihood term in full and capped at 1 nat
    # at the last step, the one the bits are read from.
    assert pipe.prediction_type == pipe.scheduler.config.prediction_type == "likelihood_residual"
    assert pipe.readout() == ("likelihood_residual", 1.0, 50.0) and pipe.readout(final=True)[2] == 1.0
    assert {p.name for p in (output_dir / "samples").iterdir()} == {"step_000002.png", "step_000004.png"}
    assert (output_dir / "sample_grid.png").is_file()
    assert sorted(p.name for p in output_dir.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]

    records = [json.loads(line) for line in (output_dir / "logs" / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [2, 4]
    bins = records[0]["output_grad_norm_per_sigma_bin"]
    assert len(bins) == 10 and sum(b["count"] for b in bins) == 16  # 2 steps x 8 images, binned by sigma
    assert all(np.isfinite(r["loss"]) and r["grad_norm"] > 0 for r in records)
    assert "Steps" in proc.stderr  # the progress bar
    if importlib.util.find_spec("tensorboard") is not None:
        assert list((output_dir / "logs").rglob("events.out.tfevents.*")), "TensorBoard logs when it is installed"

    metadata = card_metadata(output_dir / "README.md")
    assert metadata["library_name"] == "diffusers" and metadata["license"] == "apache-2.0"
    # The Hub has no class-conditional image task: no pipeline tag rather than an untrue one.
    assert "pipeline_tag" not in metadata and metadata["datasets"] == ["mnist"]
    assert {"diffusers_binflow", "binary-flow-matching", "class-conditional"} <= set(metadata["tags"])
    body = (output_dir / "README.md").read_text()
    assert "trust_remote_code=True" in body and "BinaryFlowPipeline.from_pretrained" in body
    assert "| prediction_type | likelihood_residual |" in body and "| sampling_final_likelihood_cap | 1.0 |" in body
    assert "| sampling_likelihood_cap |" not in body  # none on the other steps
    assert "capped at 1.0 nats at the last step, which the bits are read from" in " ".join(body.split())
    assert "likelihood_cap=50" in body  # how to read the likelihood in full
    assert "| heun_first_step | False |" in body and "Heun's method" not in body
    assert "| solver | multistep |" in body and "integrates with its multistep solver" in " ".join(body.split())
    assert "final_training_loss" in body and "sample_grid.png" in body
    summary = json.loads((output_dir / "training_summary.json").read_text())
    assert summary["digits_fd"] > 0 and 0 <= summary["digits_precision"] <= 1 and "| digits_fd |" in body


@pytest.mark.parametrize("saved_sampler", [{}, {"solver": "euler", "heun_first_step": True},
                                           {"solver": "euler", "s_churn": 4.0}],
                         ids=["as trained (multistep)", "a Heun first step", "corrector"])
def test_the_sampling_script_writes_a_grid_and_completions_that_keep_the_known_bits(trained, tmp_path, saved_sampler):
    """The second half of `make train`: samples and completions from the saved pipeline, whatever sampler it saved
    (the completions' stochastic steps replace it)."""
    output_dir, _ = trained
    if saved_sampler:
        output_dir = Path(shutil.copytree(output_dir, tmp_path / "saved",
                                          ignore=shutil.ignore_patterns("checkpoint-*")))
        config_file = output_dir / "scheduler" / "scheduler_config.json"
        config_file.write_text(json.dumps({**json.loads(config_file.read_text()), **saved_sampler}))
    script = Path(__file__).resolve().parents[2] / "train_scripts" / "sample_binary_flow.py"
    proc = subprocess.run([sys.executable, str(script), "--pipeline", str(output_dir), "--output_dir",
                           str(tmp_path / "again"), "--num_inference_steps", "2"], capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert "Known bits kept exactly: True" in proc.stdout
    assert PIL.Image.open(tmp_path / "again" / "samples.png").size == (8 * 28 * 3, 10 * 28 * 3)  # a row per class
    assert PIL.Image.open(tmp_path / "again" / "completion.png").size == (8 * 28 * 3, 5 * 28 * 3)


def test_fine_tuning_a_saved_pipeline_on_a_new_image_folder(trained, tmp_path, tiny_config):
    base, _ = trained
    data = binary_shapes_folder(tmp_path / "shapes")
    output_dir = tmp_path / "fine-tuned"
    train(output_dir, tiny_config, "--pretrained_model_name_or_path", str(base), "--train_data_dir", str(data),
          "--class_conditional")
    from diffusers_binflow import BinaryFlowPipeline

    assert BinaryFlowPipeline.from_pretrained(output_dir).config.null_class_label == 10  # the base model's
    before, after = unet_weights(base), unet_weights(output_dir)
    assert before.keys() == after.keys() and any(not torch.equal(before[k], after[k]) for k in before)
    assert "base_model" not in card_metadata(output_dir / "README.md"), "a local path is no Hub id"
    assert str(tmp_path) not in (output_dir / "training_config.json").read_text()


def test_push_to_hub_publishes_the_pipeline_and_card_but_no_checkpoints(session_hub, trained, tmp_path,
                                                                          tiny_config):
    output_dir = tmp_path / "published"
    token = "hf_publish_token_not_in_files"
    train(output_dir, tiny_config, "--push_to_hub", "--hub_model_id", "tester/digits-tiny", "--hub_token", token,
          "--logging_dir", "tb_logs", "--report_to", "tensorboard", "--self_conditioning")
    assert (output_dir / "tb_logs" / "train_log.jsonl").is_file() and not (output_dir / "logs").exists()
    assert list((output_dir / "tb_logs").rglob("events.out.tfevents.*")), "TensorBoard writes into --logging_dir"
    files = session_hub.files("tester/digits-tiny")
    assert {"model_index.json", "README.md", "sample_grid.png", "pipeline_binary_flow.py",
            "unet/diffusion_pytorch_model.safetensors", "training_summary.json"} <= set(files)
    assert not [p for p in files if p.startswith(("checkpoint-", "tb_logs/", "samples/"))]
    assert str(tmp_path) not in files["training_config.json"].decode(), "no local paths are published"
    assert all(token.encode() not in content for content in files.values())
    assert all(token.encode() not in p.read_bytes() for p in output_dir.rglob("*") if p.is_file())
    card = files["README.md"].decode()
    assert "| self_conditioning | True |" in card and "self-conditioned" in card

    out = run_client(session_hub, tmp_path, """
        import torch, diffusers_binflow
        from diffusers_binflow import BinaryFlowPipeline
        pipe = BinaryFlowPipeline.from_pretrained("tester/digits-tiny")
        images = pipe(batch_size=2, num_inference_steps=2, output_type="np",
                      generator=torch.Generator().manual_seed(0)).images
        emit({"shape": list(images.shape), "self_conditioning": pipe.config.self_conditioning,
              "in_channels": pipe.unet.config.in_channels})
    """)
    assert out == {"shape": [2, 28, 28, 1], "self_conditioning": True, "in_channels": 2}


def test_a_failed_upload_keeps_the_output_and_says_how_to_retry(session_hub, tmp_path, tiny_config):
    output_dir = tmp_path / "upload-fails"
    session_hub.fail_next_commits = 1
    try:
        proc = train(output_dir, tiny_config, "--push_to_hub", "--hub_model_id", "tester/fails",
                     expect_failure=True)
    finally:
        session_hub.fail_next_commits = 0
    assert f"retry with: python -m diffusers_binflow push {output_dir} tester/fails --token" in proc.stderr
    assert "HF_TOKEN" in proc.stderr
    assert (output_dir / "model_index.json").is_file() and (output_dir / "README.md").is_file()
    retry = subprocess.run([sys.executable, "-m", "diffusers_binflow", "push", str(output_dir), "tester/fails"],
                           capture_output=True, text=True, timeout=300)
    assert retry.returncode == 0, retry.stderr
    assert "model_index.json" in session_hub.files("tester/fails")


# ------------------------------------------------------------------------------------------ bad input


def refused(tmp_path, tiny_config, *extra) -> str:
    """The script's message for options it must refuse, checked in-process (argparse's on stderr, the others as the
    exception); nothing may be written."""
    output_dir = tmp_path / "out"
    output_dir.mkdir(exist_ok=True)
    (output_dir / "keep.txt").write_text("earlier work")
    script, stderr = load_script("train_binary_flow"), io.StringIO()
    with pytest.raises((SystemExit, ValueError)) as caught, contextlib.redirect_stderr(stderr):
        script.main(script.parse_args(command(output_dir, tiny_config, *extra)[2:]))
    assert sorted(p.name for p in output_dir.iterdir()) == ["keep.txt"], "nothing is written before the error"
    assert (output_dir / "keep.txt").read_text() == "earlier work"
    return f"{caught.value}\n{stderr.getvalue()}"


def test_an_empty_data_folder_is_refused(tmp_path, tiny_config):
    (tmp_path / "empty").mkdir()
    assert "holds no image files" in refused(tmp_path, tiny_config, "--train_data_dir", str(tmp_path / "empty"))


def test_mixed_image_sizes_need_a_resolution(tmp_path, tiny_config):
    folder = tmp_path / "mixed"
    folder.mkdir()
    PIL.Image.new("L", (28, 28)).save(folder / "a.png")
    PIL.Image.new("L", (32, 32)).save(folder / "b.png")
    assert "resolution" in refused(tmp_path, tiny_config, "--train_data_dir", str(folder))


def test_a_missing_column_and_an_unsuitable_resolution_are_refused(tmp_path, tiny_config):
    import datasets

    ds = datasets.Dataset.from_dict({"img": [PIL.Image.new("L", (28, 28))] * 2},
                                    features=datasets.Features({"img": datasets.Image()}))
    ds.save_to_disk(str(tmp_path / "ds"))
    assert "img" in refused(tmp_path, tiny_config, "--dataset_name", str(tmp_path / "ds"))
    assert "multiple of 2" in refused(tmp_path, tiny_config, "--resolution", "27")


def test_unknown_option_values_are_refused(tmp_path, tiny_config):
    assert "invalid choice" in refused(tmp_path, tiny_config, "--loss_space", "eps")
    assert "at least 200" in refused(tmp_path, tiny_config, "--metrics_num_samples", "50")
    assert "needs --prediction_type logits" in refused(tmp_path, tiny_config, "--prediction_type", "sample")
    assert "--sampling_likelihood_cap must be in (0, 50.0]" in refused(tmp_path, tiny_config,
                                                                       "--sampling_likelihood_cap", "0")


def test_a_local_datasets_folder_trains_with_its_cache_dir_and_the_card_names_no_local_dataset(tmp_path,
                                                                                            tiny_config):
    """`--dataset_name` with a local image folder goes through `datasets` (imagefolder: labels from subfolders);
    `--cache_dir` is where `datasets` caches it."""
    data = binary_shapes_folder(tmp_path / "shapes")
    output_dir = tmp_path / "from-datasets"
    train(output_dir, tiny_config, "--dataset_name", str(data), "--label_column", "label", "--class_conditional",
          "--cache_dir", str(tmp_path / "hf-cache"), "--max_train_steps", "2")
    assert any((tmp_path / "hf-cache").rglob("*.arrow")), "datasets wrote its cache into --cache_dir"
    metadata = card_metadata(output_dir / "README.md")
    assert "datasets" not in metadata and "pipeline_tag" not in metadata  # a local folder is no Hub id


def test_a_pretrained_model_of_another_size_is_refused(trained, tmp_path, tiny_config):
    base, _ = trained
    message = refused(tmp_path, tiny_config, "--pretrained_model_name_or_path", str(base), "--resolution", "32")
    assert "works on 1 channel(s) at 28px" in message
    message = refused(tmp_path, tiny_config, "--pretrained_model_name_or_path", str(base), "--class_conditional",
                      "--prediction_type", "logits")
    assert ("The pretrained model predicts 'likelihood_residual' at bit_scale 1.0: pass --prediction_type "
            "likelihood_residual --bit_scale 1.0.") in message
    message = refused(tmp_path, tiny_config, "--pretrained_model_name_or_path", str(base), "--class_conditional",
                      "--self_conditioning")
    assert "The pretrained model is not self-conditioned: drop --self_conditioning." in message


def test_a_fresh_run_never_overwrites_checkpoints(trained, tmp_path, tiny_config):
    source, _ = trained
    output_dir = tmp_path / "busy"
    output_dir.mkdir()
    (output_dir / "checkpoint-2").symlink_to(source / "checkpoint-2")
    script = load_script("train_binary_flow")
    with pytest.raises(SystemExit, match="--resume_from_checkpoint latest"):
        script.main(script.parse_args(command(output_dir, tiny_config)[2:]))
    assert sorted(p.name for p in output_dir.iterdir()) == ["checkpoint-2"]


def test_resuming_a_finished_run_trains_no_further(trained, tiny_config):
    output_dir, _ = trained
    before = unet_weights(output_dir)
    train(output_dir, tiny_config, "--class_conditional", "--resume_from_checkpoint", "latest")
    after = unet_weights(output_dir)
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert json.loads((output_dir / "training_summary.json").read_text())["optimizer_steps"] == 4
