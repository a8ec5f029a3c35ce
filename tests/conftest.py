"""Test session set-up: a local Hub server that the in-process huggingface_hub client talks to.

huggingface_hub and diffusers read HF_ENDPOINT when they are imported, so the server starts and the environment is
set here, before any test module imports them. Nothing reaches the real Hub.
"""

import os
import tempfile

import pytest

from tests.hub_server import HubServer
from tests.hub_client import TOKEN


SESSION_HUB = HubServer(lfs_threshold=1024).start()
os.environ.update(
    HF_ENDPOINT=SESSION_HUB.endpoint,
    HF_HOME=tempfile.mkdtemp(prefix="binflow-hf-home-"),
    HF_TOKEN=TOKEN,
    HF_HUB_DISABLE_XET="1",  # the legacy LFS path: see tests/test_hub_server.py for the Xet behaviour
    HF_HUB_DISABLE_TELEMETRY="1",
    HF_HUB_DISABLE_PROGRESS_BARS="1",
)
os.environ.pop("HF_HUB_OFFLINE", None)


@pytest.fixture(scope="session")
def session_hub():
    """The Hub server the in-process client is pointed at."""
    return SESSION_HUB


@pytest.fixture(autouse=True)
def fresh_misalignment_warnings():
    """Each test sees the once-per-pair misalignment warning of `binary_flow_loss` anew, whatever ran before."""
    from diffusers_binflow import losses

    losses._warned_pairs.clear()
