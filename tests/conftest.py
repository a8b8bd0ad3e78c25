"""Shared fixtures: offline-profile workspaces (scratch copies of the repo) and the real `dvc` CLI.

One workspace is reproduced once per session (the whole pipeline, ~1 min on 2 CPU cores); tests that
change params work on their own copy of it, so every DVC behaviour is checked against a real run.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from alpaca_qlora.cli.offline_workspace import make_offline_workspace
from tests.dvc_cli import command_env, dvc, stages_run  # noqa: F401  (stages_run: for the tests)

REPO_ROOT = Path(__file__).resolve().parent.parent


def cli_env() -> dict[str, str]:
    """The environment DVC stage commands run in (tests/dvc_cli.py): this venv first on PATH, no network."""
    return command_env()


def run_dvc(workspace: Path, *args: str, check: bool = True, timeout: float = 900,
            env: dict[str, str | None] | None = None) -> str:
    """Run `dvc <args>` in `workspace`; return its output (asserting success when `check`).

    `env` adds variables to the CLI environment; a None value removes one.
    """
    return dvc(workspace, *args, check=check, timeout=timeout, env=env).output


# The order `dvc repro` runs the stages in (dvc.yaml's order where the graph leaves a choice).
PIPELINE = ["sample", "format", "train", "evaluate_base", "evaluate", "card"]


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
    assert stages_run(output) == PIPELINE, output
    return workspace


@pytest.fixture
def workspace_copy(reproduced_workspace, tmp_path) -> Path:
    """A private copy of the reproduced workspace (git history, DVC cache and outputs) to change freely."""
    copy = tmp_path / "repo"
    shutil.copytree(reproduced_workspace, copy, symlinks=True)
    return copy
