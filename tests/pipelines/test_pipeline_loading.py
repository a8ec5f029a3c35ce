"""diffusers' generic entry points for all three pipelines: `DiffusionPipeline.from_pretrained` on a saved folder,
`from_pipe`, and our `from_pretrained` on a Hub repo downloaded in full with `snapshot_download(local_dir=...)`.

Loads run in a fresh interpreter, as a user's would; the Hub is tests/hub_server.py on 127.0.0.1 (see conftest.py).
"""

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler

from diffusers_binflow import BinaryFlowMIMOPipeline, BinaryFlowPipeline, BinaryFlowSequencePipeline
from diffusers_binflow.sequences import train_tokenizer
from tests.hub_client import run_client
from tests.mimo.test_model_and_pipeline import tiny_pipeline as mimo_pipeline
from tests.pipelines.test_pipeline_binary_flow import conditional_pipeline
from tests.sequences.test_pipeline_binary_flow_sequence import TASK
from tests.sequences.test_pipeline_binary_flow_sequence import make_pipeline as sequence_pipeline

# Run here and in the client: one seeded call of any of the three pipelines, as nested lists of ints.
SAMPLE_CODE = """
import torch
from diffusers_binflow.mimo import simulate

def sample(pipe):
    pipe.set_progress_bar_config(disable=True)
    generator = torch.Generator().manual_seed(0)
    kind = type(pipe).__name__
    if kind == "BinaryFlowPipeline":
        out = pipe(batch_size=2, class_labels=[0, 2], guidance_scale=2.0, num_inference_steps=3, output_type="pt",
                   generator=generator).images
    elif kind == "BinaryFlowSequencePipeline":
        out = pipe(batch_size=2, num_inference_steps=3, output_type="ids", generator=generator).sequences
    else:
        batch = simulate(4, 2, 2, "qpsk", 10.0, generator=torch.Generator().manual_seed(1))
        out = pipe(batch.y, batch.H, batch.noise_var, num_inference_steps=3, generator=generator).bits
    return out.int().tolist()
"""
namespace = {}
exec(SAMPLE_CODE, namespace)
sample = namespace["sample"]

REMOTE_CODE_RAN = "any(name.startswith('diffusers_modules') for name in sys.modules)"


@pytest.fixture(scope="module")
def pipelines():
    """One tiny pipeline of each kind, by the name of its class. The image one is self-conditioned: only its
    pipeline config says so (a diffusers UNet records nothing), and it loads only with the setting kept."""
    tokenizer = train_tokenizer(TASK.texts("all"), "char")
    made = [conditional_pipeline(prediction_type="logits", self_conditioning=True), sequence_pipeline(tokenizer),
            mimo_pipeline()]
    return {type(pipe).__name__: pipe for pipe in made}


def test_diffusers_generic_entry_point_loads_each_saved_pipeline_in_a_fresh_process(session_hub, pipelines,
                                                                                  tmp_path):
    for name, pipe in pipelines.items():
        pipe.save_pretrained(tmp_path / name)
    out = run_client(session_hub, tmp_path, SAMPLE_CODE + f"""
import sys
import diffusers_binflow
from diffusers import DiffusionPipeline
loaded = {{}}
for name in {sorted(pipelines)!r}:
    for trust_remote_code in (False, True):
        pipe = DiffusionPipeline.from_pretrained({str(tmp_path)!r} + "/" + name, trust_remote_code=trust_remote_code)
        loaded[f"{{name}} {{trust_remote_code}}"] = [type(pipe).__name__, sample(pipe)]
emit({{"loaded": loaded, "remote_code_ran": {REMOTE_CODE_RAN}}})
""")
    assert not out["remote_code_ran"]
    for name, pipe in pipelines.items():
        for trust_remote_code in (False, True):
            assert out["loaded"][f"{name} {trust_remote_code}"] == [name, sample(pipe)]


def test_from_pipe_shares_the_components_of_each_pipeline(pipelines):
    for name, pipe in pipelines.items():
        new = type(pipe).from_pipe(pipe)
        assert type(new) is type(pipe) and all(new.components[k] is v for k, v in pipe.components.items())
        assert sample(new) == sample(pipe)


def test_from_pipe_with_a_diffusers_scheduler_keeps_what_the_denoiser_predicts(pipelines):
    pipe = pipelines["BinaryFlowPipeline"]
    swapped = BinaryFlowPipeline.from_pipe(pipe, scheduler=FlowMatchEulerDiscreteScheduler())
    assert (swapped.prediction_type, swapped.config.null_class_label) == ("logits", 3)
    kwargs = dict(batch_size=2, class_labels=[0, 2], sigmas=[1.0, 0.6, 0.3], output_type="probs")
    torch.testing.assert_close(swapped(**kwargs, generator=torch.Generator().manual_seed(0)).images,
                               pipe(**kwargs, generator=torch.Generator().manual_seed(0)).images, rtol=1e-5, atol=1e-6)


def test_a_repo_downloaded_with_its_code_files_loads_with_our_classes_without_running_them(session_hub, pipelines,
                                                                                          tmp_path):
    repos = {name: f"tester/snapshot-{name.lower()}" for name in pipelines}
    for name, pipe in pipelines.items():
        pipe.push_to_hub(repos[name])
    out = run_client(session_hub, tmp_path, SAMPLE_CODE + f"""
import os
import sys
from huggingface_hub import snapshot_download
import diffusers_binflow
loaded = {{}}
for name, repo_id in {repos!r}.items():
    folder = snapshot_download(repo_id, local_dir=os.path.join("downloads", name))
    has_code = any(file.endswith(".py") for _, _, files in os.walk(folder) for file in files)
    pipe = getattr(diffusers_binflow, name).from_pretrained(folder)
    loaded[name] = [has_code, pipe.config._name_or_path == folder, sample(pipe)]
emit({{"loaded": loaded, "remote_code_ran": {REMOTE_CODE_RAN}}})
""")
    assert not out["remote_code_ran"]
    for name, pipe in pipelines.items():
        assert out["loaded"][name] == [True, True, sample(pipe)]


def test_each_pipeline_class_is_resolvable_from_the_diffusers_namespace():
    import diffusers

    for cls in (BinaryFlowPipeline, BinaryFlowSequencePipeline, BinaryFlowMIMOPipeline):
        assert getattr(diffusers, cls.__name__) is cls
