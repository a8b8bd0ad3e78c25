"""Shared fixtures: offline-profile workspaces (scratch copies of the repo) and the real `dvc` CLI.

One workspace is reproduced once per session (the whole pipeline, ~1 min on 2 CPU cores); tests that
change params work on their own copy of it, so every DVC behaviour is checked against a real run.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from alpaca_qlora.cli.offline_workspace import make_offline_workspace

REPO_ROOT = Path(__file__).resolve().parent.parent


def cli_env() -> dict[str, str]:
    """The environment DVC stage commands run in: this interpreter's venv first on PATH, no network."""
    env = dict(os.environ)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env.update(DVC_NO_ANALYTICS="1", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", WANDB_MODE="disabled",
               TOKENIZERS_PARALLELISM="false")
    return env


def run_dvc(workspace: Path, *args: str, check: bool = True, timeout: float = 900,
            env: dict[str, str | None] | None = None) -> str:
    """Run `dvc <args>` in `workspace`; return stdout + stderr (asserting success when `check`).

    `env` adds variables to the CLI environment; a None value removes one.
    """
    environment = cli_env()
    for name, value in (env or {}).items():
        environment.pop(name, None) if value is None else environment.__setitem__(name, value)
    # No standard input, as on CI: nothing a stage runs may wait for an answer (a login prompt, a pager).
    done = subprocess.run(["dvc", *args], cwd=workspace, env=environment, capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)
    output = done.stdout + done.stderr
    if check and done.returncode != 0:
        raise AssertionError(f"dvc {' '.join(args)} failed ({done.returncode}) in {workspace}:\n{output}")
    return output


def stages_run(output: str) -> list[str]:
    """Names of the stages that `dvc repro` / `dvc exp run` actually executed, in order."""
    return [line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage '")]


@pytest.fixture(scope="session")
def offline_workspace_factory(tmp_path_factory):
    """Make a fresh offline-profile workspace: factory(*overrides) -> Path (nothing run yet)."""
    def make(*overrides: str) -> Path:
        return make_offline_workspace(tmp_path_factory.mktemp("workspace") / "repo", list(overrides))
    return make


@pytest.fixture(scope="session")
def reproduced_workspace(offline_workspace_factory) -> Path:
    """A workspace in which `dvc repro` has run the whole pipeline once. Treat as read-only."""
    workspace = offline_workspace_factory()
    output = run_dvc(workspace, "repro")
    assert stages_run(output) == ["sample", "format", "train", "evaluate", "card"], output
    return workspace


@pytest.fixture
def workspace_copy(reproduced_workspace, tmp_path) -> Path:
    """A private copy of the reproduced workspace (git history, DVC cache and outputs) to change freely."""
    copy = tmp_path / "repo"
    shutil.copytree(reproduced_workspace, copy, symlinks=True)
    return copy
