"""train_scripts/train_mimo.py end to end in subprocesses: outputs, publishing, refusals (resumption and faults:
tests/train_scripts/test_run_resilience.py).

Runs use a tiny transformer and a few steps on a 2x2 QPSK system (with a learning-rate schedule that does not
depend on --max_train_steps, so a short run resumed to a longer one is comparable); they check behaviour, not quality."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from tests.train_scripts.runs import load_script

SCRIPT = Path(__file__).resolve().parents[2] / "train_scripts" / "train_mimo.py"
TINY = ["--num_tx", "2", "--num_rx", "2", "--hidden_size", "16", "--num_layers", "1", "--num_heads", "2",
        "--train_batch_size", "16", "--lr_warmup_steps", "1", "--lr_scheduler", "constant_with_warmup", "--logging_steps", "2", "--checkpointing_steps", "2",
        "--eval_channel_uses", "32", "--eval_snr_db", "4,12"]


def train(output_dir, *extra, expect_failure=False):
    proc = subprocess.run([sys.executable, str(SCRIPT), "--output_dir", str(output_dir), *TINY, *extra],
                          capture_output=True, text=True, timeout=600)
    assert (proc.returncode != 0) == expect_failure, proc.stdout + proc.stderr
    return proc


def weights(folder: Path) -> dict:
    return load_file(str(folder / "model" / "diffusion_pytorch_model.safetensors"))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    output_dir = tmp_path_factory.mktemp("mimo") / "run"
    train(output_dir, "--max_train_steps", "4")
    return output_dir


def test_saves_a_loadable_pipeline_with_a_model_card_and_ber_table(trained):
    from diffusers_binflow.mimo import simulate
    from diffusers_binflow.pipelines import BinaryFlowMIMOPipeline

    pipe = BinaryFlowMIMOPipeline.from_pretrained(trained)
    assert pipe.model.config.num_tx == 2 and pipe.scheduler.config.prediction_type == "logits"
    batch = simulate(3, 2, 2, "qpsk", 10.0)
    assert pipe(batch.y, batch.H, batch.noise_var, num_inference_steps=2).bits.shape == (3, 4)
    summary = json.loads((trained / "training_summary.json").read_text())
    assert summary["optimizer_steps"] == 4 and set(summary["ber"]) == {"LMMSE", "ML", "ours (1 NFE)"}
    assert all(0 <= ber <= 1 for table in summary["ber"].values() for ber in table.values())
    card = (trained / "README.md").read_text()
    assert yaml.safe_load(card.split("---")[1])["library_name"] == "diffusers"
    assert "| SNR (dB) | LMMSE | ML | ours (1 NFE) |" in card and "| loss_type | bce |" in card
    log = [json.loads(line) for line in (trained / "logs" / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [2, 4] and all(r["loss"] > 0 for r in log)


def test_recipe_and_channel_options_reach_the_run(tmp_path):
    proc = train(tmp_path, "--max_train_steps", "2", "--prediction_type", "sample", "--loss_type", "mse",
                 "--loss_space", "v", "--ep_iterations", "2", "--self_conditioning", "--correlation", "0.5",
                 "--csi_error_var", "0.05")
    assert "misaligned" in proc.stderr  # the library's warning for x-prediction with a v-loss
    from diffusers_binflow.pipelines import BinaryFlowMIMOPipeline

    pipe = BinaryFlowMIMOPipeline.from_pretrained(tmp_path)
    config = pipe.model.config
    assert config.prediction_type == "sample" and config.ep_iterations == 2
    assert config.self_conditioning and pipe.config.self_conditioning
    card = (tmp_path / "README.md").read_text()
    assert "| self_conditioning | True |" in card and "self-conditioned" in card
    assert "| correlation | 0.5 |" in card and "correlation 0.5, CSI error variance 0.05" in card
    assert "Kronecker-correlated (rho = 0.5" in card and "which it was\ntrained to treat as exact" in card


def test_a_csi_aware_run_trains_and_reports_on_the_receiver_s_reading_of_its_estimate(tmp_path):
    from diffusers_binflow.checkpoints import check_checkpoint_matches
    from diffusers_binflow.training_runs import run_options

    train(tmp_path, "--max_train_steps", "2", "--csi_error_var", "0.05", "--csi_aware")
    card = (tmp_path / "README.md").read_text()
    assert "| csi_aware | True |" in card and "CSI error variance 0.05, read by a receiver that knows it" in card
    assert "channel_given_estimate(H_hat, N0, 0.05, 2)" in card
    # The card's example draws the channel the model was trained on: the estimate read with the error's variance.
    example = card.split("```python\n")[1].split("```")[0].replace(f'"{tmp_path.name}"', repr(str(tmp_path)))
    namespace = {}
    exec(example, namespace)
    batch = namespace["batch"]
    expected = torch.full_like(batch.noise_var, 2 / 10**1.2 + 2 * 0.05 / 1.05)  # N0 at 12 dB, plus the error's
    assert torch.allclose(batch.noise_var, expected) and 0 <= namespace["ber"] <= 1
    script = load_script("train_mimo")
    options = lambda *extra: run_options(  # noqa: E731
        script.parse_args(["--output_dir", "x", *TINY, "--max_train_steps", "2", "--csi_error_var", "0.05", *extra]),
        script.RESUME_OPTIONS)
    check_checkpoint_matches(tmp_path / "checkpoint-2", "train_mimo", options("--csi_aware"), 1)
    with pytest.raises(ValueError, match="--csi_aware True vs False"):
        check_checkpoint_matches(tmp_path / "checkpoint-2", "train_mimo", options(), 1)


def test_16qam_models_get_multilevel_cavities_and_an_older_16qam_checkpoint_is_resumed_only_without_them(
    trained, tmp_path
):
    from diffusers_binflow.checkpoints import check_checkpoint_matches
    from diffusers_binflow.pipelines import BinaryFlowMIMOPipeline
    from diffusers_binflow.training_runs import run_options

    script = load_script("train_mimo")

    def options(*extra):
        return run_options(script.parse_args(["--output_dir", "x", *TINY, "--max_train_steps", "4", *extra]),
                           script.RESUME_OPTIONS)

    assert options()["multilevel_cavities"] is False and options("--modulation", "16qam")["multilevel_cavities"]
    # Checkpoints from before the option: QPSK runs resume as before; a 16-QAM run had no cavities and says so.
    state = json.loads((trained / "checkpoint-4" / "training_state.json").read_text())
    del state["options"]["multilevel_cavities"], state["options"]["csi_aware"]
    older = tmp_path / "older" / "checkpoint-4"
    older.mkdir(parents=True)
    (older / "training_state.json").write_text(json.dumps(state))
    check_checkpoint_matches(older, "train_mimo", options(), 1)
    state["options"]["modulation"] = "16qam"
    (older / "training_state.json").write_text(json.dumps(state))
    with pytest.raises(ValueError, match="--multilevel_cavities False vs True"):
        check_checkpoint_matches(older, "train_mimo", options("--modulation", "16qam"), 1)
    check_checkpoint_matches(older, "train_mimo", options("--modulation", "16qam", "--no-multilevel_cavities"), 1)
    # Through the script: the option reaches the model and the card.
    train(tmp_path / "qam", "--modulation", "16qam", "--max_train_steps", "1", "--no-multilevel_cavities")
    assert not BinaryFlowMIMOPipeline.from_pretrained(tmp_path / "qam").model.fuses_state
    assert "| multilevel_cavities | False |" in (tmp_path / "qam" / "README.md").read_text()


def test_push_to_hub_uploads_pipeline_and_card_but_no_checkpoints(session_hub, tmp_path):
    train(tmp_path / "pushed", "--max_train_steps", "2", "--push_to_hub", "--hub_model_id", "tester/mimo-run")
    files = session_hub.files("tester/mimo-run")
    assert {"model_index.json", "README.md", "pipeline_binary_flow_mimo.py", "training_summary.json",
            "model/diffusion_pytorch_model.safetensors", "model/diffusers_binflow.mimo.model.py"} <= set(files)
    assert not [p for p in files if p.startswith(("checkpoint-", "logs/"))]


def test_bad_options_are_refused(capsys):
    script = load_script("train_mimo")
    for options, message in ((("--prediction_type", "sample", "--loss_type", "bce"), "needs --prediction_type logits"),
                             (("--num_tx", "3"), "--num_rx must be at least"),
                             (("--ep_iterations", "-1"), "--ep_iterations must be at least 0"),
                             (("--snr_db_min", "nan"), "must be finite"),
                             (("--correlation", "1"), "--correlation must be in [0, 1)"),
                             (("--csi_error_var", "-0.1"), "--csi_error_var must be a finite number >= 0"),
                             (("--csi_aware", "--csi_error_var", "0.1", "--correlation", "0.5"),
                              "--csi_aware reads the estimate of an i.i.d. channel"),
                             (("--csi_aware",), "--csi_aware reads a channel estimate with a known error"),
                             (("--bit_scale", "2"), "--bit_scale must be 1 for MIMO")):
        with pytest.raises(SystemExit):
            script.parse_args(["--output_dir", "x", *TINY, *options])
        assert message in capsys.readouterr().err
