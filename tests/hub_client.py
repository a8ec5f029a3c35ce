"""Run Hugging Face client code in a fresh interpreter pointed at a test Hub server.

huggingface_hub and diffusers read ``HF_ENDPOINT`` (and ``HF_HUB_DISABLE_XET``) at import, and "load in a fresh
process" is what users do, so client scenarios run as subprocesses with their own environment.
"""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

TOKEN = "hf_dummy_token"


def run_client(hub, tmp_path: Path, code: str, *, xet: bool = False, token: str | None = TOKEN,
               home: str = "hf_home", timeout: int = 180) -> dict:
    """Run ``code`` in a fresh interpreter pointed at ``hub``; it reports back with ``emit(dict)``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING_FACE_"))}
    env.update(HF_ENDPOINT=hub.endpoint, HF_HOME=str(tmp_path / home), HF_HUB_DISABLE_TELEMETRY="1",
               HF_HUB_DISABLE_PROGRESS_BARS="1", TOKENIZERS_PARALLELISM="false")
    if token is not None:
        env["HF_TOKEN"] = token
    if not xet:
        env["HF_HUB_DISABLE_XET"] = "1"
    prelude = "import json\ndef emit(obj):\n    print('RESULT ' + json.dumps(obj), flush=True)\n"
    proc = subprocess.run([sys.executable, "-c", prelude + textwrap.dedent(code)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"client failed:\n{proc.stdout}\n{proc.stderr}"
    results = [line[7:] for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    return json.loads(results[-1]) if results else {}
