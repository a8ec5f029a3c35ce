"""Running a benchmark the documented way: ``python -m benchmarks.<name>`` from the repository root."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run_benchmark(name: str, *args, timeout: int = 600) -> str:
    """Run benchmark module `name` with `args` in a fresh interpreter; fail the test unless it succeeds. Its stdout."""
    proc = subprocess.run([sys.executable, "-m", f"benchmarks.{name}", *map(str, args)], cwd=ROOT, check=False,
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout
