"""Fixtures for the DVC remote tests: real servers on 127.0.0.1, a reproduced workspace, remotes.

Servers (session-scoped, started only when a test needs them):
    ``ssh_server``  a private OpenSSH sshd with key auth and SFTP;
    ``s3_server``   moto_server with IAM authentication enforced.

Workspaces:
    ``team_workspace``        the offline-profile pipeline reproduced once (tests/conftest.py's
                              ``reproduced_workspace``), with its dvc.lock committed: what the GPU box
                              has after ``dvc repro && git commit``. Read-only: copy it.
    ``experiment_workspace``  a copy of it in which ``dvc exp run -n shared-exp -S ...`` has run, the
                              experiment's results left in the workspace as ``dvc exp run`` leaves them.

``REMOTE_TESTS_WORKSPACE`` changes where the reproduced workspace comes from: ``pipeline`` (the
default) reproduces it in the session; a directory path reuses one already reproduced there
(``python -m alpaca_qlora.cli.offline_workspace DIR && cd DIR && dvc repro``); ``standin`` uses a
seconds-fast stand-in project with the same outputs (tests/remotes/standin.py), for working on the
transport code alone.

Remotes: ``make_remote(kind)`` gives a fresh, empty location on the local directory, SSH or S3
server. ``Remote.configure(repo)`` points the repo's default remote ``team`` at it the documented
way, ``dvc remote modify --local`` (nothing lands in git).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import pytest

from .dvcrepo import (
    ADAPTER,
    EXPECTED_OUTPUTS,
    copy_repo,
    digest_outputs,
    digest_tree,
    dvc,
    git,
)
from .remotes import Remote, new_remote
from .servers import MotoS3Server, SSHServer, find_sshd

REPO_ROOT = Path(__file__).resolve().parents[2]
#: The experiment every experiment/run-cache test shares: a 3-step training run, cheap on a CPU
#: and certain to give an adapter different from main's.
EXPERIMENT_NAME = "shared-exp"
EXPERIMENT_OVERRIDE = "train.max_steps=3"

#: Round-trip timings collected by the tests, printed at the end of the session (and written to
#: $REMOTE_TIMINGS_JSON when set).
TIMINGS: list[dict] = []


def pytest_terminal_summary(terminalreporter):
    if not TIMINGS:
        return
    terminalreporter.section("DVC remote round trips (adapter = models/adapter)")
    terminalreporter.write_line(
        f"{'remote':<7} {'what':<9} {'files':>5} {'bytes':>10} {'push s':>7} {'pull s':>7} {'total s':>8}"
    )
    for row in TIMINGS:
        terminalreporter.write_line(
            f"{row['remote']:<7} {row['what']:<9} {row['files']:>5} {row['bytes']:>10} "
            f"{row['push_s']:>7.2f} {row['pull_s']:>7.2f} {row['push_s'] + row['pull_s']:>8.2f}"
        )
    target = os.environ.get("REMOTE_TIMINGS_JSON")
    if target:
        Path(target).write_text(json.dumps(TIMINGS, indent=2, sort_keys=True))


# --------------------------------------------------------------------------------------------
# Servers
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def ssh_server(tmp_path_factory):
    if find_sshd() is None and not os.environ.get("CI"):
        pytest.skip("sshd not installed (apt-get install -y openssh-server); CI installs it")
    with SSHServer(tmp_path_factory.mktemp("sshd")) as server:
        yield server


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    with MotoS3Server(tmp_path_factory.mktemp("moto")) as server:
        yield server


# --------------------------------------------------------------------------------------------
# Remotes
# --------------------------------------------------------------------------------------------


@pytest.fixture
def make_remote(request, tmp_path):
    """``make_remote(kind)`` -> a fresh, empty :class:`Remote` of that kind."""

    def make(kind: str) -> Remote:
        ssh = request.getfixturevalue("ssh_server") if kind == "ssh" else None
        s3 = request.getfixturevalue("s3_server") if kind == "s3" else None
        return new_remote(kind, tmp_path, ssh=ssh, s3=s3)

    return make


# --------------------------------------------------------------------------------------------
# Workspaces
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def team_workspace(request, tmp_path_factory) -> Path:
    """The reproduced pipeline with its results committed, as on the GPU box. Copy before use."""
    dest = tmp_path_factory.mktemp("team") / "gpu-box"
    choice = os.environ.get("REMOTE_TESTS_WORKSPACE", "pipeline")
    if choice == "standin":
        from .standin import make_standin_project

        return make_standin_project(dest, dvc_config=(REPO_ROOT / ".dvc" / "config").read_text())
    if choice == "pipeline":
        reproduced = request.getfixturevalue("reproduced_workspace")
    else:  # a workspace already reproduced by `python -m alpaca_qlora.cli.offline_workspace DIR && dvc repro`
        reproduced = Path(choice)
        assert (reproduced / "dvc.lock").is_file(), f"REMOTE_TESTS_WORKSPACE={choice}: no dvc.lock there"
    repo = copy_repo(reproduced, dest)
    git(repo, "add", "-A")
    git(repo, "commit", "--quiet", "-m", "Reproduce the pipeline (offline profile)")
    status = dvc(repo, "status").output
    assert "Data and pipelines are up to date." in status, status
    missing = [rel for rel in EXPECTED_OUTPUTS if not (repo / rel).exists()]
    assert not missing, f"the reproduced workspace lacks the outputs {missing}"
    return repo


@dataclass
class Experiment:
    repo: Path
    name: str
    override: str
    baseline: dict[str, str]  # sha256 of every output file on main
    outputs: dict[str, str]  # sha256 of every output file of the experiment
    metrics: str  # reports/metrics.json of the experiment


@pytest.fixture(scope="session")
def experiment_workspace(team_workspace, tmp_path_factory) -> Experiment:
    """``dvc exp run -n shared-exp -S train.learning_rate=...`` run once on a copy of the GPU box.

    The workspace keeps the experiment's results, as ``dvc exp run`` leaves them; main's own
    results are in its cache and committed dvc.lock.
    """
    repo = copy_repo(team_workspace, tmp_path_factory.mktemp("experiment") / "gpu-box")
    baseline = digest_outputs(repo)
    result = dvc(repo, "exp", "run", "-n", EXPERIMENT_NAME, "-S", EXPERIMENT_OVERRIDE)
    assert "Running stage 'train'" in result.output, result
    outputs = digest_outputs(repo)
    assert digest_tree(repo, ADAPTER) != {k: v for k, v in baseline.items() if k.startswith(ADAPTER)}, (
        f"{EXPERIMENT_OVERRIDE} produced the same adapter as main: the experiment tests would prove nothing"
    )
    return Experiment(
        repo=repo, name=EXPERIMENT_NAME, override=EXPERIMENT_OVERRIDE, baseline=baseline,
        outputs=outputs, metrics=(repo / "reports" / "metrics.json").read_text(),
    )
