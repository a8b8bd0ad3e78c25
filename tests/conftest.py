"""Shared fixtures: offline-profile workspaces (scratch copies of the repo) and the real `dvc` CLI.

One workspace is reproduced once per session (the whole pipeline, ~1 min on 2 CPU cores); tests that
change params work on their own copy of it, so every DVC behaviour is checked against a real run.
One experiment is run once per session on top of it (`experiment_workspace`): the train-key test, the
comparison tests and the sharing tests (tests/remotes/) all check that same run.

``REMOTE_TESTS_WORKSPACE`` changes where `team_workspace` comes from: ``pipeline`` (the default)
reproduces it in the session; a directory path reuses one already reproduced there
(``python -m alpaca_qlora.cli.offline_workspace DIR && cd DIR && dvc repro``); ``standin`` uses a
seconds-fast stand-in project with the same outputs (tests/remotes/standin.py), for working on the
transport code alone.
"""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pytest
from filelock import FileLock

from alpaca_qlora.cli.offline_workspace import make_offline_workspace
from tests.dvc_cli import (ADAPTER, EXPECTED_OUTPUTS, command_env, copy_repo, digest_outputs, digest_tree, dvc, git,
                           stages_run)
#: The session's one experiment: 20 steps instead of 100, cheap on a CPU and certain to give an adapter (and a
#: loss curve) different from main's.
EXPERIMENT_NAME, EXPERIMENT_OVERRIDE = "short", "train.max_steps=20"

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


def built_once(tmp_path_factory, name: str, build: Callable[[Path], dict[str, Any]]) -> tuple[Path, dict[str, Any]]:
    """`build(path)` once per test run, also when pytest-xdist spreads the tests over processes: the first
    process to ask builds under a file lock, the others wait and reuse the result (xdist's documented recipe
    for session fixtures). Returns (path, what build returned). What is built here is read-only to tests."""
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # the run's folder, shared by its worker processes
    path, record = root / name, root / f"{name}.json"
    with FileLock(str(root / f"{name}.lock")):
        if record.is_file():
            return path, json.loads(record.read_text())
        shutil.rmtree(path, ignore_errors=True)  # left by a process whose build failed
        details = build(path)
        record.write_text(json.dumps(details))
        return path, details


@pytest.fixture(scope="session")
def reproduced_workspace(tmp_path_factory) -> Path:
    """A workspace in which `dvc repro` has run the whole pipeline once. Treat as read-only."""
    def build(path: Path) -> dict[str, Any]:
        workspace = make_offline_workspace(path / "repo", [])
        output = run_dvc(workspace, "repro")
        assert stages_run(output) == PIPELINE, output
        return {}

    return built_once(tmp_path_factory, "reproduced", build)[0] / "repo"


@pytest.fixture
def workspace_copy(reproduced_workspace, tmp_path) -> Path:
    """A private copy of the reproduced workspace (git history, DVC cache and outputs) to change freely."""
    return copy_repo(reproduced_workspace, tmp_path / "repo")


@pytest.fixture(scope="session")
def team_workspace(request, tmp_path_factory) -> Path:
    """The reproduced pipeline with its results committed, as on the GPU box. Read-only: copy it."""
    choice = os.environ.get("REMOTE_TESTS_WORKSPACE", "pipeline")
    if choice == "pipeline":
        reproduced = request.getfixturevalue("reproduced_workspace")
    elif choice != "standin":  # a workspace already reproduced by `python -m alpaca_qlora.cli.offline_workspace DIR && dvc repro`
        reproduced = Path(choice)
        assert (reproduced / "dvc.lock").is_file(), f"REMOTE_TESTS_WORKSPACE={choice}: no dvc.lock there"

    def build(path: Path) -> dict[str, Any]:
        if choice == "standin":
            from tests.remotes.standin import make_standin_project

            make_standin_project(path / "gpu-box", dvc_config=(REPO_ROOT / ".dvc" / "config").read_text())
            return {}
        repo = copy_repo(reproduced, path / "gpu-box")
        git(repo, "add", "-A")
        git(repo, "commit", "--quiet", "-m", "Reproduce the pipeline (offline profile)")
        status = dvc(repo, "status").output
        assert "Data and pipelines are up to date." in status, status
        missing = [rel for rel in EXPECTED_OUTPUTS if not (repo / rel).exists()]
        assert not missing, f"the reproduced workspace lacks the outputs {missing}"
        return {}

    return built_once(tmp_path_factory, "team", build)[0] / "gpu-box"


@dataclass
class Experiment:
    repo: Path
    name: str
    override: str
    output: str  # what `dvc exp run` printed
    baseline: dict[str, str]  # sha256 of every output file on main
    outputs: dict[str, str]  # sha256 of every output file of the experiment
    metrics: str  # reports/metrics.json of the experiment


@pytest.fixture(scope="session")
def experiment_workspace(team_workspace, tmp_path_factory) -> Experiment:
    """`dvc exp run -n short -S train.max_steps=20`, run once on a copy of the GPU box. Treat as read-only.

    The workspace keeps the experiment's results, as `dvc exp run` leaves them; main's own results are in
    its cache and committed dvc.lock (HEAD).
    """
    def build(path: Path) -> dict[str, Any]:
        repo = copy_repo(team_workspace, path / "gpu-box")
        baseline = digest_outputs(repo)
        result = dvc(repo, "exp", "run", "-n", EXPERIMENT_NAME, "-S", EXPERIMENT_OVERRIDE)
        assert "Running stage 'train'" in result.output, result
        outputs = digest_outputs(repo)
        assert digest_tree(repo, ADAPTER) != {k: v for k, v in baseline.items() if k.startswith(ADAPTER)}, (
            f"{EXPERIMENT_OVERRIDE} produced the same adapter as main: the experiment tests would prove nothing")
        return {"output": result.output, "baseline": baseline, "outputs": outputs,
                "metrics": (repo / "reports" / "metrics.json").read_text()}

    path, found = built_once(tmp_path_factory, "experiment", build)
    return Experiment(repo=path / "gpu-box", name=EXPERIMENT_NAME, override=EXPERIMENT_OVERRIDE, **found)
