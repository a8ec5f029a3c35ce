"""One pipeline object called from several threads at once returns what the same calls return one after another."""

import threading

import pytest
import torch

from diffusers_binflow.sequences import train_tokenizer
from tests.mimo.test_model_and_pipeline import channel
from tests.mimo.test_model_and_pipeline import tiny_pipeline as mimo_pipeline
from tests.pipelines.test_pipeline_binary_flow import conditional_pipeline
from tests.sequences.test_pipeline_binary_flow_sequence import TASK
from tests.sequences.test_pipeline_binary_flow_sequence import make_pipeline as sequence_pipeline

THREADS, CALLS = 8, 4


def image_sampler(solver="heun"):
    pipe = conditional_pipeline(solver=solver)  # Heun's corrector and the multistep solver keep state between steps
    return lambda seed: pipe(batch_size=2, class_labels=[0, 1], guidance_scale=1.5, num_inference_steps=3,
                             output_type="probs", generator=torch.Generator().manual_seed(seed)).images


def sequence_sampler():
    pipe = sequence_pipeline(train_tokenizer(TASK.texts("all"), "char"))
    return lambda seed: pipe(batch_size=2, num_inference_steps=3, output_type="bits",
                             generator=torch.Generator().manual_seed(seed)).sequences


def mimo_sampler():
    pipe, batch = mimo_pipeline(), channel(num=4)
    return lambda seed: pipe(batch.y, batch.H, batch.noise_var, num_inference_steps=3, num_samples=2,
                             generator=torch.Generator().manual_seed(seed)).probabilities


@pytest.mark.parametrize("make_sampler", [image_sampler, lambda: image_sampler("multistep"), sequence_sampler,
                                          mimo_sampler], ids=["image", "image, multistep", "sequence", "mimo"])
def test_concurrent_calls_of_one_pipeline_equal_sequential_calls(make_sampler):
    sample = make_sampler()
    seeds = [[THREADS * call + thread for call in range(CALLS)] for thread in range(THREADS)]
    expected = {seed: sample(seed) for row in seeds for seed in row}
    results, errors = {}, []
    start = threading.Barrier(THREADS)

    def worker(row):
        start.wait()
        try:
            for seed in row:
                results[seed] = sample(seed)
        except Exception as error:  # noqa: BLE001 -- reported below with the thread's seeds
            errors.append(f"seeds {row}: {error!r}")

    threads = [threading.Thread(target=worker, args=(row,)) for row in seeds]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    differing = [seed for seed, value in expected.items() if not torch.equal(results[seed], value)]
    assert not differing, f"{len(differing)} of {len(expected)} concurrent calls differ from sequential ones"
