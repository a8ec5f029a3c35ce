"""train_scripts/train_sequence.py end to end, in subprocesses as users run it: tiny model, a few steps.

Runs check behaviour (outputs, text files with their own tokenizers, publishing, refusals), not
quality. The Hub is tests/hub_server.py (see conftest.py).
"""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml
from safetensors.torch import load_file

from tests.hub_client import run_client
from tests.train_scripts.runs import load_script

SCRIPT = Path(__file__).resolve().parents[2] / "train_scripts" / "train_sequence.py"
TINY = {"hidden_size": 32, "num_layers": 1, "num_heads": 2}


@pytest.fixture(scope="module")
def tiny_config(tmp_path_factory):
    path = tmp_path_factory.mktemp("configs") / "tiny_sequence.json"
    path.write_text(json.dumps(TINY))
    return str(path)


def command(output_dir, tiny_config, *extra):
    return [sys.executable, str(SCRIPT), "--output_dir", str(output_dir), "--model_config", tiny_config,
            "--max_operand", "9", "--train_batch_size", "8", "--max_train_steps", "4", "--num_inference_steps", "2",
            "--num_validation_samples", "8", "--validation_steps", "2", "--logging_steps", "2",
            "--checkpointing_steps", "2", *extra]


def train(output_dir, tiny_config, *extra):
    proc = subprocess.run(command(output_dir, tiny_config, *extra), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def denoiser_weights(folder: Path) -> dict:
    return load_file(str(folder / "denoiser" / "diffusion_pytorch_model.safetensors"))


@pytest.fixture(scope="module")
def published(tmp_path_factory, tiny_config, session_hub):
    """A run on the bundled arithmetic task (4 steps, checkpoints at 2 and 4), pushed to the test Hub."""
    output_dir = tmp_path_factory.mktemp("runs") / "arithmetic"
    proc = train(output_dir, tiny_config, "--push_to_hub", "--hub_model_id", "tester/arithmetic-tiny",
                 "--hub_token", "hf_secret_sequence_token")
    return output_dir, proc


def test_a_short_run_writes_a_loadable_pipeline_samples_logs_and_card(published):
    output_dir, proc = published
    from diffusers_binflow.pipelines import BinaryFlowSequencePipeline

    pipe = BinaryFlowSequencePipeline.from_pretrained(output_dir)
    assert pipe.denoiser.config.vocab_size == len(pipe.tokenizer) == 14 and pipe.denoiser.config.max_length == 6
    assert pipe.scheduler.config.prediction_type == "logits"
    # the corrector on a grid shifted towards the data: of 2 steps the second is at sigma 0.25 * 0.5 / (1 - 0.75 * 0.5)
    # = 0.2, not 0.5, and inside the corrector's window, so it is evaluated after re-noising to
    # 0.2 + gamma * 0.2 * (1 - 0.2), gamma = min(64 / 2, sqrt(2) - 1)
    assert (pipe.scheduler.config.solver, pipe.scheduler.config.s_churn) == ("euler", 64.0)
    timesteps = []
    record = lambda pipe, i, t, tensors: timesteps.append(float(t)) or tensors  # noqa: E731
    assert len(pipe(batch_size=2, num_inference_steps=2, callback_on_step_end=record).sequences) == 2
    assert timesteps == pytest.approx([1000.0, 1000 * (0.2 + (2 ** 0.5 - 1) * 0.2 * 0.8)])
    assert sorted(p.name for p in (output_dir / "samples").iterdir()) == ["step_000002.txt", "step_000004.txt"]
    assert len((output_dir / "samples.txt").read_text().splitlines()) == 8
    assert sorted(p.name for p in output_dir.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]
    records = [json.loads(line) for line in (output_dir / "logs" / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "loss" in r] == [2, 4]
    assert [r["step"] for r in records if "valid_fraction" in r] == [2, 4]
    assert "Steps" in proc.stderr and "14 token ids in 4 bits" in proc.stderr
    summary = json.loads((output_dir / "training_summary.json").read_text())
    assert summary["optimizer_steps"] == 4 and 0 <= summary["valid_fraction"] <= 1 and summary["num_bits"] == 4
    metadata = yaml.safe_load((output_dir / "README.md").read_text().split("---")[1])
    assert metadata["pipeline_tag"] == "text-generation" and "binary-flow-matching" in metadata["tags"]
    body = (output_dir / "README.md").read_text()
    assert "| loss_type | bce |" in body and "| valid_fraction |" in body and "BinaryFlowSequencePipeline" in body
    # the default recipe: sigma around 0.5, and a denoiser that reads given tokens
    assert "| logit_std | 0.5 |" in body and "| known_probability | 0.5 |" in body
    assert "| known_span_fraction | 0.5 |" in body
    # self-conditioned by default (the sequence benchmarks' choice), and the card says so
    assert pipe.config.self_conditioning and pipe.denoiser.config.self_conditioning
    assert "| self_conditioning | True |" in body
    # the sampler, and how to turn it off
    assert "| s_churn | 64.0 |" in body and "| sampling_shift | 0.25 |" in body and "s_churn=0.0, shift=1.0" in body
    assert pipe.denoiser.config.known_conditioning


def test_the_published_pipeline_loads_in_a_fresh_process_without_checkpoints_or_token(
    published, session_hub, tmp_path
):
    output_dir, _ = published
    files = session_hub.files("tester/arithmetic-tiny")
    assert {"model_index.json", "README.md", "pipeline_binary_flow_sequence.py", "tokenizer/tokenizer.json",
            "denoiser/diffusion_pytorch_model.safetensors", "samples.txt"} <= set(files)
    assert not [p for p in files if p.startswith(("checkpoint-", "logs/", "samples/"))]
    assert all(b"hf_secret_sequence_token" not in content for content in files.values())
    out = run_client(session_hub, tmp_path, textwrap.dedent("""
        import torch
        from diffusers_binflow.pipelines import BinaryFlowSequencePipeline
        pipe = BinaryFlowSequencePipeline.from_pretrained("tester/arithmetic-tiny")
        ids = pipe(batch_size=2, num_inference_steps=2, output_type="ids",
                   generator=torch.Generator().manual_seed(0)).sequences
        emit({"shape": list(ids.shape)})
    """))
    assert out["shape"] == [2, 6]


def test_a_text_file_trains_with_a_tokenizer_folder(tmp_path, tiny_config):
    from diffusers_binflow.pipelines import BinaryFlowSequencePipeline
    from diffusers_binflow.sequences import train_tokenizer

    lines = ["the cat sat", "a dog ran far", "the dog sat", "a cat ran"] * 4
    (tmp_path / "lines.txt").write_text("\n".join(lines) + "\n\n")
    train_tokenizer(lines, "word").save_pretrained(tmp_path / "word-tokenizer")
    train(tmp_path / "words", tiny_config, "--train_file", str(tmp_path / "lines.txt"), "--tokenizer_name_or_path",
          str(tmp_path / "word-tokenizer"), "--bit_code", "gray", "--max_length", "5", "--no-self_conditioning")
    pipe = BinaryFlowSequencePipeline.from_pretrained(tmp_path / "words")
    assert pipe.denoiser.config.max_length == 5 and pipe.denoiser.codec.bit_code == "gray"
    assert not pipe.config.self_conditioning and not pipe.denoiser.config.self_conditioning
    assert "| self_conditioning | False |" in (tmp_path / "words" / "README.md").read_text()
    assert set(pipe.tokenizer.get_vocab()) == {"[PAD]", "[UNK]", "the", "a", "cat", "dog", "sat", "ran", "far"}
    assert "valid_fraction" not in json.loads((tmp_path / "words" / "training_summary.json").read_text())
    assert all(len(text.split()) <= 5 for text in (tmp_path / "words" / "samples.txt").read_text().splitlines())


# ------------------------------------------------------------------------------------------ bad input


def refused(tmp_path, tiny_config, *extra) -> str:
    """The script's message for options it must refuse, checked in-process; nothing may be written."""
    output_dir = tmp_path / "out"
    output_dir.mkdir(exist_ok=True)
    (output_dir / "keep.txt").write_text("earlier work")
    script = load_script("train_sequence")
    with pytest.raises((ValueError, SystemExit)) as caught:
        script.main(script.parse_args(command(output_dir, tiny_config, *extra)[2:]))
    assert sorted(p.name for p in output_dir.iterdir()) == ["keep.txt"], "nothing is written before the error"
    return str(caught.value)


def test_sequences_longer_than_max_length_are_refused(tmp_path, tiny_config):
    assert "longer than 4 tokens" in refused(tmp_path, tiny_config, "--max_length", "4")


def test_fine_tuning_refuses_a_length_beyond_the_pretrained_maximum(published, tmp_path, tiny_config):
    output_dir, _ = published
    message = refused(tmp_path, tiny_config, "--pretrained_model_name_or_path", str(output_dir), "--max_length", "7")
    assert "exceeds the pretrained model's maximum 6" in message


def test_fine_tuning_must_keep_how_the_model_reads_given_tokens_and_its_estimate(published, tmp_path, tiny_config):
    output_dir, _ = published
    message = refused(tmp_path, tiny_config, "--pretrained_model_name_or_path", str(output_dir),
                      "--known_probability", "0")
    assert "reads given tokens: pass --known_probability > 0" in message
    message = refused(tmp_path, tiny_config, "--pretrained_model_name_or_path", str(output_dir),
                      "--no-self_conditioning")
    assert "The pretrained model is self-conditioned: pass --self_conditioning." in message


def test_an_empty_text_file_is_refused(tmp_path, tiny_config):
    (tmp_path / "empty.txt").write_text("\n\n")
    assert "no non-empty lines" in refused(tmp_path, tiny_config, "--train_file", str(tmp_path / "empty.txt"))


def test_a_fresh_run_never_overwrites_checkpoints(published, tmp_path, tiny_config):
    output_dir, _ = published
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "checkpoint-2").symlink_to(output_dir / "checkpoint-2")
    script = load_script("train_sequence")
    with pytest.raises(SystemExit, match="--resume_from_checkpoint latest"):
        script.main(script.parse_args(command(tmp_path / "out", tiny_config)[2:]))
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["checkpoint-2"]


def test_bce_without_logits_and_a_known_probability_outside_0_1_are_refused(capsys):
    script = load_script("train_sequence")
    with pytest.raises(SystemExit):
        script.parse_args(["--output_dir", "x", "--prediction_type", "sample"])
    assert "needs --prediction_type logits" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        script.parse_args(["--output_dir", "x", "--known_probability", "1.5"])
    assert "--known_probability must be in [0, 1]" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        script.parse_args(["--output_dir", "x", "--known_span_fraction", "-0.1"])
    assert "--known_span_fraction must be in [0, 1]" in capsys.readouterr().err
