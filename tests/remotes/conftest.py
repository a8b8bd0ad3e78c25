"""Fixtures for the DVC remote tests: real servers on 127.0.0.1 and remotes on them.

Servers (session-scoped, started only when a test needs them):
    ``ssh_server``  a private OpenSSH sshd with key auth and SFTP;
    ``s3_server``   moto_server with IAM authentication enforced.

Workspaces (tests/conftest.py, shared with the pipeline tests):
    ``team_workspace``        the offline-profile pipeline reproduced once, with its dvc.lock committed:
                              what the GPU box has after ``dvc repro && git commit``. Read-only: copy it.
    ``experiment_workspace``  a copy of it in which ``dvc exp run -n short -S train.max_steps=20`` has
                              run, the results left in the workspace as ``dvc exp run`` leaves them.
    ``REMOTE_TESTS_WORKSPACE=standin`` swaps in a seconds-fast stand-in project (tests/remotes/standin.py).

Remotes: ``make_remote(kind)`` gives a fresh, empty location on the local directory, SSH or S3
server. ``Remote.configure(repo)`` points the repo's default remote ``team`` at it the documented
way, ``dvc remote modify --local`` (nothing lands in git).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from .remotes import Remote, new_remote
from .servers import MotoS3Server, SSHServer, find_sshd

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
