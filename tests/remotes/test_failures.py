"""Failures must be clear, bounded in time, and lose nothing.

- an unreachable remote (nothing listening, or a host that never answers) fails within its timeout;
- bad credentials are refused with the server's reason;
- a push killed half way leaves the remote incomplete, and running it again completes it;
- a pull with one object missing on the remote names the object, writes no partial file, and
  ``dvc status`` / ``dvc checkout`` then say which output is affected.
"""

from __future__ import annotations

import os
import re
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .remotes import REMOTE_KINDS, new_remote
from .dvcrepo import (
    ADAPTER,
    ADAPTER_WEIGHTS,
    DVC,
    colleague_clone,
    command_env,
    copy_repo,
    dir_manifest_entry,
    digest_outputs,
    dvc,
    dvc_cache_files,
    lock_out_md5,
    lock_outputs,
    object_relpath,
    pushed_count,
)
from .dvcrepo import gpu_box as make_gpu_box
from .servers import SilentTCPServer, ThrottlingProxy, free_port

#: Connection timeouts the tests configure, and how long a failure may take at most with them.
SSH_TIMEOUT_S = 5
S3_TIMEOUT_S = 1
FAIL_WITHIN_S = 60


def _cache_objects(repo: Path) -> set[str]:
    return {p.relative_to(repo / ".dvc" / "cache").as_posix() for p in dvc_cache_files(repo)}


def _stray_files(repo: Path) -> list[str]:
    """Files in the work tree that look like an interrupted write (DVC and fsspec temp names)."""
    return sorted(
        p.relative_to(repo).as_posix() for p in repo.rglob("*")
        if p.is_file() and ".git" not in p.parts and ".dvc" not in p.parts
        and (p.name.endswith(".tmp") or p.name.startswith(".") and p.name not in (".gitignore", ".dvcignore"))
    )


# ------------------------------------------------------------------------------------------------
# Unreachable remotes
# ------------------------------------------------------------------------------------------------

UNREACHABLE = [
    # (remote kind, what listens on the port, words the error must contain; {port} is filled in)
    pytest.param("ssh", "nothing", ["Connect call failed", "'127.0.0.1', {port}"], id="ssh-refused"),
    pytest.param("s3", "nothing", ["Could not connect to the endpoint URL", "127.0.0.1:{port}"], id="s3-refused"),
    pytest.param("s3", "silent", ["timeout on endpoint URL", "127.0.0.1:{port}"], id="s3-silent"),
]


def _unreachable_push(kind, listener, remote, gpu_box):
    """Point ``gpu_box`` at a dead port or a silent listener and push; return (result, port)."""
    timeouts = {"timeout": str(SSH_TIMEOUT_S)} if kind == "ssh" else {
        "connect_timeout": str(S3_TIMEOUT_S), "read_timeout": str(S3_TIMEOUT_S)}
    with SilentTCPServer() as silent:
        port = silent.port if listener == "silent" else free_port()
        remote.configure(gpu_box, **remote.via(port), **timeouts)
        # Each S3 request is retried by botocore (AWS_MAX_ATTEMPTS) and again by s3fs (5 times):
        # one botocore attempt keeps the worst case at about 5 x read_timeout.
        result = dvc(gpu_box, "push", check=False, timeout=FAIL_WITHIN_S * 3, env={"AWS_MAX_ATTEMPTS": "1"})
    return result, port


@pytest.mark.parametrize(("kind", "listener", "words"), UNREACHABLE)
def test_unreachable_remote_fails_within_the_configured_timeout(
        kind, listener, words, team_workspace, make_remote, tmp_path):
    remote = make_remote(kind)
    result, port = _unreachable_push(kind, listener, remote, copy_repo(team_workspace, tmp_path / "gpu-box"))

    assert result.returncode != 0, f"push to an unreachable remote claimed success:\n{result}"
    assert result.seconds < FAIL_WITHIN_S, f"took {result.seconds:.0f}s to give up:\n{result}"
    if listener == "silent":
        assert result.seconds >= S3_TIMEOUT_S, f"gave up before the configured timeout:\n{result}"
    assert "ERROR" in result.output and "Traceback" not in result.output, result
    for word in words:
        assert word.format(port=port) in result.output, f"{word!r} not in the error:\n{result}"


def test_pull_from_an_unmounted_directory_remote_names_every_missing_output(team_workspace, make_remote, tmp_path):
    """A directory remote whose NFS share is not mounted looks empty: the pull says what it lacks."""
    remote = make_remote("local")
    gpu_box = make_gpu_box(team_workspace, tmp_path)
    colleague = colleague_clone(tmp_path)
    remote.configure(colleague)  # nothing was ever pushed there: the path does not even exist
    assert not remote.path.exists()

    pull = dvc(colleague, "pull", check=False)

    assert pull.returncode != 0, pull
    assert "Missing cache files" in pull.output and "Traceback" not in pull.output, pull
    failed = pull.output.split("Checkout failed for following targets:", 1)[-1]
    for out in lock_outputs(gpu_box):
        assert f"\n{out}\n" in failed, f"{out} not named among the outputs that could not be restored:\n{pull}"
    assert digest_outputs(colleague) == {}, "nothing may be written from an empty remote"


@pytest.fixture(scope="module")
def ssh_silent_push(team_workspace, ssh_server, tmp_path_factory):
    """``dvc push`` to an SSH port that accepts the connection and never answers (run once)."""
    scratch = tmp_path_factory.mktemp("ssh-silent")
    remote = new_remote("ssh", scratch, ssh=ssh_server)
    result, _ = _unreachable_push("ssh", "silent", remote, copy_repo(team_workspace, scratch / "gpu-box"))
    return result


def test_ssh_host_that_never_answers_fails_after_the_configured_timeout(ssh_silent_push):
    result = ssh_silent_push
    assert result.returncode != 0, f"push to a silent host claimed success:\n{result}"
    assert SSH_TIMEOUT_S <= result.seconds < SSH_TIMEOUT_S + 30, (
        f"expected to give up after the {SSH_TIMEOUT_S}s `timeout`, took {result.seconds:.1f}s:\n{result}"
    )
    assert "ERROR" in result.output, result


@pytest.mark.xfail(strict=True, reason=(
    "DVC 3.67.1 / dvc-ssh 4.3.0 print 'ERROR: unexpected error - : :' when the SSH connection set-up "
    "times out (an empty fsspec FSTimeoutError; `dvc push -v` shows its name); docs/sharing.md explains it. "
    "Strict: when a DVC upgrade names the host or the timeout, this passes and the docs' caveat can go."))
def test_ssh_connect_timeout_error_names_the_host(ssh_silent_push):
    output = ssh_silent_push.output
    assert "127.0.0.1" in output or "timed out" in output.lower() or "timeout" in output.lower(), output


# ------------------------------------------------------------------------------------------------
# Bad credentials
# ------------------------------------------------------------------------------------------------

BAD_CREDENTIALS = [
    pytest.param("ssh", "wrong_key", ["Permission denied for user", "on host 127.0.0.1"], id="ssh-unknown-key"),
    pytest.param("s3", "wrong_secret", ["Forbidden", "403"], id="s3-wrong-secret"),
    pytest.param("s3", "unknown_key_id", ["Forbidden", "403"], id="s3-unknown-key-id"),
]


@pytest.mark.parametrize(("kind", "mistake", "words"), BAD_CREDENTIALS)
def test_bad_credentials_are_refused_with_the_servers_reason(
        kind, mistake, words, team_workspace, make_remote, tmp_path):
    remote = make_remote(kind)
    gpu_box = make_gpu_box(team_workspace, tmp_path)
    if mistake == "wrong_key":
        remote.configure(gpu_box, keyfile=str(remote.ssh.wrong_key))
    elif mistake == "wrong_secret":
        remote.configure(gpu_box, secret_access_key="not-the-secret")
    else:
        remote.configure(gpu_box, access_key_id="AKIAUNKNOWNKEY000000")

    result = dvc(gpu_box, "push", check=False, timeout=FAIL_WITHIN_S * 3)

    assert result.returncode != 0, f"push with bad credentials claimed success:\n{result}"
    assert result.seconds < FAIL_WITHIN_S, result
    for word in words:
        assert word in result.output, f"{word!r} not in the error:\n{result}"
    assert "Traceback" not in result.output, result
    assert remote.data_objects() == set(), "a refused push must store nothing"


# ------------------------------------------------------------------------------------------------
# A push interrupted half way
# ------------------------------------------------------------------------------------------------

#: Run the real `dvc` CLI entry point with SIGXFSZ's default action restored (Python ignores it):
#: with RLIMIT_FSIZE set, the kernel then kills the process at that byte of a file it writes.
_DVC_DIES_AT_FILE_SIZE_LIMIT = (
    "import signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_DFL); "
    "from dvc.cli import main; sys.exit(main())"
)


def _kill_push_at_size_limit(gpu_box: Path, limit: int) -> int:
    """Local remote: ``dvc push`` killed by the kernel after writing ``limit`` bytes of one object."""
    def set_limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    proc = subprocess.run(
        [sys.executable, "-c", _DVC_DIES_AT_FILE_SIZE_LIMIT, "push"], cwd=gpu_box, env=command_env(),
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        timeout=300, preexec_fn=set_limit,
    )
    return proc.returncode


def _kill_push_through_slow_link(gpu_box: Path, remote, total_bytes: int) -> tuple[int, int]:
    """SSH/S3: ``dvc push`` through a throttled proxy, SIGKILLed once half the bytes went through."""
    rate = max(total_bytes // 5, 64 * 1024)  # about 5 s for the whole push
    with ThrottlingProxy(remote.ssh.port if remote.kind == "ssh" else remote.s3.port, rate=rate) as proxy:
        remote.configure(gpu_box, **remote.via(proxy.port))
        proc = subprocess.Popen(
            [DVC, "push"], cwd=gpu_box, env=command_env(), stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
        )
        deadline = time.monotonic() + 120
        while proxy.uploaded < total_bytes // 2 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert proc.poll() is None, (
            f"push finished before it could be interrupted ({proxy.uploaded} of {total_bytes} bytes):\n"
            + proc.stdout.read().decode(errors="replace")
        )
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        sent = proxy.uploaded
    remote.configure(gpu_box, **remote.via(remote.ssh.port if remote.kind == "ssh" else remote.s3.port))
    return proc.returncode, sent


@pytest.mark.parametrize("kind", REMOTE_KINDS)
def test_push_killed_half_way_completes_when_run_again(kind, team_workspace, make_remote, tmp_path):
    remote = make_remote(kind)
    gpu_box = make_gpu_box(team_workspace, tmp_path)
    remote.configure(gpu_box)
    expected = _cache_objects(gpu_box)
    sizes = [p.stat().st_size for p in dvc_cache_files(gpu_box)]

    if kind == "local":
        limit = max(sizes) // 2
        returncode = _kill_push_at_size_limit(gpu_box, limit)
        assert returncode == -signal.SIGXFSZ, f"push was not killed mid-write (exit {returncode})"
        partial = [p for p in remote.path.rglob("*.tmp") if p.stat().st_size == limit]
        assert partial, "the kill left no partially written object: it did not happen half way"
    else:
        returncode, sent = _kill_push_through_slow_link(gpu_box, remote, sum(sizes))
        assert returncode == -signal.SIGKILL
        assert 0 < sent < sum(sizes), f"{sent} of {sum(sizes)} bytes sent before the kill"

    stored = remote.data_objects()
    assert stored < expected, f"the remote holds {len(stored)} of {len(expected)} objects after the kill"

    again = dvc(gpu_box, "push")
    assert pushed_count(again.output) == len(expected - stored), (
        f"the second push should upload exactly the {len(expected - stored)} missing objects:\n{again}"
    )
    assert remote.data_objects() == expected, "the remote is still incomplete after the second push"

    colleague = colleague_clone(tmp_path)
    remote.configure(colleague)
    dvc(colleague, "pull")
    assert digest_outputs(colleague) == digest_outputs(gpu_box), "pulled outputs differ from the pushed ones"
    assert dvc(colleague, "status").output.strip() == "Data and pipelines are up to date."


# ------------------------------------------------------------------------------------------------
# An object missing on the remote
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", REMOTE_KINDS)
def test_pull_with_an_object_missing_names_it_and_writes_no_partial_output(
        kind, team_workspace, make_remote, tmp_path):
    remote = make_remote(kind)
    gpu_box = make_gpu_box(team_workspace, tmp_path)
    remote.configure(gpu_box)
    dvc(gpu_box, "push")
    pushed = digest_outputs(gpu_box)
    weights_md5 = dir_manifest_entry(gpu_box, ADAPTER_WEIGHTS)
    remote.delete(object_relpath(weights_md5))  # e.g. a botched manual clean-up of the bucket

    colleague = colleague_clone(tmp_path)
    remote.configure(colleague)
    pull = dvc(colleague, "pull", check=False)

    assert pull.returncode != 0, f"pull with a missing object claimed success:\n{pull}"
    assert weights_md5 in pull.output, f"the error does not name the missing object {weights_md5}:\n{pull}"
    assert "failed to pull data from the cloud" in pull.output, pull
    # Nothing half-written: the pull stops before checkout, so the adapter is absent, not partial.
    assert not (colleague / ADAPTER).exists(), f"pull left a partial {ADAPTER}: {list((colleague / ADAPTER).iterdir())}"
    assert _stray_files(colleague) == []
    status = dvc(colleague, "status").output
    assert re.search(r"not in cache:\s+models/adapter\n", status), status

    # Everything that is on the remote can still be checked out; DVC names the output it cannot.
    checkout = dvc(colleague, "checkout", check=False)
    assert checkout.returncode != 0
    assert "Checkout failed for following targets:\nmodels/adapter\n" in checkout.output, checkout
    restored = digest_outputs(colleague)
    assert restored == {path: digest for path, digest in pushed.items() if not path.startswith(ADAPTER + "/")}

    # Repair (docs/sharing.md): `dvc push` trusts the adapter's .dir manifest on the remote and
    # uploads nothing, so delete the manifest and push again.
    assert dvc(gpu_box, "push").output.strip() == "Everything is up to date.", (
        "DVC now re-checks directory contents on push: simplify the repair in docs/sharing.md"
    )
    adapter_dir_md5 = lock_out_md5(gpu_box, ADAPTER)
    remote.delete(object_relpath(adapter_dir_md5))
    repaired = dvc(gpu_box, "push")
    assert pushed_count(repaired.output) == 2, f"expected the weights and the manifest:\n{repaired}"
    dvc(colleague, "pull")
    assert digest_outputs(colleague) == pushed
    assert dvc(colleague, "status").output.strip() == "Data and pipelines are up to date."
