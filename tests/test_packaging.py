"""Packaging: what `make` installs by default, and the licence and project URLs of the distribution."""

import shutil
import subprocess
import sys
from email.parser import Parser
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
NEEDS_MAKE = pytest.mark.skipif(shutil.which("make") is None, reason="`make` is not installed")


def make_commands(target: str, tmp_path: Path) -> str:
    """The commands `make target` would run in a fresh virtual environment (a dry run: nothing is installed)."""
    return subprocess.run(["make", "--dry-run", "--always-make", f"VENV={tmp_path / 'venv'}", target], cwd=REPO,
                          check=True, capture_output=True, text=True).stdout


@NEEDS_MAKE
@pytest.mark.parametrize("target", ["install", "test", "train"])
def test_the_everyday_targets_do_not_install_the_non_commercial_peer(target, tmp_path):
    commands = make_commands(target, tmp_path)
    assert "pip install" in commands
    assert "peers" not in commands and "flow-matching" not in commands


@NEEDS_MAKE
def test_make_peers_installs_the_peer_extra(tmp_path):
    assert '-e ".[peers]"' in make_commands("peers", tmp_path)


def test_the_distribution_carries_the_apache_license_and_project_urls(tmp_path):
    subprocess.run([sys.executable, "setup.py", "--quiet", "egg_info", "--egg-base", str(tmp_path)], cwd=REPO,
                   check=True, capture_output=True)
    (pkg_info,) = tmp_path.glob("*.egg-info/PKG-INFO")
    metadata = Parser().parsestr(pkg_info.read_text())
    assert {"LICENSE", "diffusers_binflow/data/DATA_LICENSE.md"} <= set(metadata.get_all("License-File"))
    urls = dict(entry.split(", ", 1) for entry in metadata.get_all("Project-URL"))
    assert set(urls) == {"Homepage", "Source", "Issues"}
    assert all(url.startswith("https://github.com/") for url in urls.values())
    sources = next(tmp_path.glob("*.egg-info/SOURCES.txt")).read_text().splitlines()
    assert {f"diffusers_binflow/model_cards/{kind}.md" for kind in ("image", "sequence", "mimo")} <= set(sources)
    license_text = (REPO / "LICENSE").read_text()
    assert license_text.startswith("Copyright 2026 The diffusers-binflow authors\n")
    assert "Apache License\n                           Version 2.0, January 2004" in license_text
    assert "END OF TERMS AND CONDITIONS" in license_text
