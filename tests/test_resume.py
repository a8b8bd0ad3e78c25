"""Through the real `dvc` CLI on the offline profile: a killed train stage resumes where it stopped and ends
with the very adapter an uninterrupted run gives; the same seed trains the same adapter. (A stage failing on
a mistake leaves nothing half written and the previous outputs restorable: tests/test_errors.py.)"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

from alpaca_qlora.training.checkpoints import is_complete
from alpaca_qlora.files import file_sha256
from tests.conftest import cli_env, run_dvc, stages_run

ADAPTER = "models/adapter/adapter_model.safetensors"


def run_until_checkpoint(workspace: Path, step: int, sig: signal.Signals) -> str:
    """Start `dvc repro`, wait until checkpoint-<step> is complete, then send `sig` to DVC and the stage."""
    log = workspace / f"killed-{step}.log"
    with open(log, "w") as handle:
        process = subprocess.Popen(["dvc", "repro"], cwd=workspace, env=cli_env(), stdout=handle,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 600
    pattern = f"build/checkpoints/*/checkpoint-{step}/checkpoint_complete.json"
    while not list(workspace.glob(pattern)):
        assert process.poll() is None, f"dvc repro ended before checkpoint-{step}:\n{log.read_text()}"
        assert time.monotonic() < deadline
        time.sleep(0.02)
    os.killpg(process.pid, sig)
    process.wait(timeout=60)
    while True:  # the stage is in DVC's process group: wait until it is gone too
        try:
            os.killpg(process.pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.05)
    return log.read_text()


def test_killed_training_resumes_from_the_last_complete_checkpoint(offline_workspace_factory,
                                                                   reproduced_workspace):
    """SIGKILL after step 20, SIGTERM after step 60, then `dvc repro` finishes: same adapter and curves as
    one uninterrupted run (reproduced_workspace), bit for bit, since the CPU path is deterministic. The two
    runs are in different workspaces, so this also proves that the same seed trains the same adapter."""
    workspace = offline_workspace_factory()
    run_dvc(workspace, "repro", "format")
    run_until_checkpoint(workspace, 20, signal.SIGKILL)
    assert not (workspace / "models/adapter").exists()
    run_dir = next((workspace / "build/checkpoints").iterdir())
    output = run_until_checkpoint(workspace, 60, signal.SIGTERM)
    assert f"train: resuming from {run_dir.relative_to(workspace)}/checkpoint-" in output
    # SIGTERM (a preemption notice) lets the step finish, saves a checkpoint there and exits without an adapter
    stopped = int(re.search(r"train: SIGTERM: stopped at step (\d+), checkpoint saved", output).group(1))
    assert 60 <= stopped < 100 and is_complete(run_dir / f"checkpoint-{stopped}")
    assert not (workspace / "models/adapter").exists()
    partial = run_dir / "checkpoint-99"  # as if killed while the Trainer was writing it: never to be used
    partial.mkdir()
    (partial / "adapter_model.safetensors").write_bytes(b"half")

    output = run_dvc(workspace, "repro")
    assert stages_run(output) == ["train", "evaluate_base", "evaluate", "card"]
    assert f"removing incomplete checkpoint {run_dir.relative_to(workspace)}/checkpoint-99" in output
    meta = json.loads((workspace / "models/adapter/metadata.json").read_text())
    assert meta["resumed_from_step"] == stopped, "resumed at the last complete checkpoint, not at 0"
    assert meta["effective"]["global_steps"] == 100
    assert not run_dir.exists(), "checkpoints are deleted once the adapter is saved"

    assert file_sha256(workspace / ADAPTER) == file_sha256(reproduced_workspace / ADAPTER)
    first = json.loads((reproduced_workspace / "models/adapter/metadata.json").read_text())
    assert first["resumed_from_step"] is None and meta["data"] == first["data"]
    assert meta["reproduce"]["checkpoint_run_key"] == first["reproduce"]["checkpoint_run_key"]
    curve = "reports/train/plots/metrics/loss.tsv"
    assert (workspace / curve).read_text() == (reproduced_workspace / curve).read_text(), \
        "the curve of the resumed run has all 100 steps, equal to the uninterrupted run's"
    assert run_dvc(workspace, "status").strip() == "Data and pipelines are up to date."
