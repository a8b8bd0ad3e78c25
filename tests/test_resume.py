"""Through the real `dvc` CLI on the offline profile: a killed train stage resumes where it stopped and ends
with the very adapter an uninterrupted run gives; a failing stage exits non-zero, leaves nothing half
written, and the previous outputs stay restorable; the same seed trains the same adapter."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from alpaca_qlora.training.checkpoints import is_complete
from alpaca_qlora.files import file_sha256
from alpaca_qlora.cli.offline_workspace import overlay_params, parse_override
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
    one uninterrupted run (reproduced_workspace), bit for bit, since the CPU path is deterministic."""
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
    assert stages_run(output) == ["train", "evaluate", "card"]
    assert f"removing incomplete checkpoint {run_dir.relative_to(workspace)}/checkpoint-99" in output
    meta = json.loads((workspace / "models/adapter/metadata.json").read_text())
    assert meta["resumed_from_step"] == stopped, "resumed at the last complete checkpoint, not at 0"
    assert meta["effective"]["global_steps"] == 100
    assert not run_dir.exists(), "checkpoints are deleted once the adapter is saved"

    assert file_sha256(workspace / ADAPTER) == file_sha256(reproduced_workspace / ADAPTER)
    curve = "reports/train/plots/metrics/loss.tsv"
    assert (workspace / curve).read_text() == (reproduced_workspace / curve).read_text(), \
        "the curve of the resumed run has all 100 steps, equal to the uninterrupted run's"
    assert run_dvc(workspace, "status").strip() == "Data and pipelines are up to date."


def test_same_seed_trains_the_same_adapter(workspace_copy, reproduced_workspace, tmp_path):
    subprocess.run([sys.executable, "-m", "stages.train", "--out", str(tmp_path / "again")], cwd=workspace_copy,
                   env=cli_env(), check=True, capture_output=True)
    assert file_sha256(tmp_path / "again/adapter_model.safetensors") == file_sha256(reproduced_workspace / ADAPTER)
    first = json.loads((reproduced_workspace / "models/adapter/metadata.json").read_text())
    again = json.loads((tmp_path / "again/metadata.json").read_text())
    assert again["results"]["train_loss"] == first["results"]["train_loss"]
    assert again["resumed_from_step"] is None and again["data"] == first["data"]
    assert again["reproduce"]["git"]["commit"] == first["reproduce"]["git"]["commit"]
    assert again["reproduce"]["checkpoint_run_key"] == first["reproduce"]["checkpoint_run_key"]


def write_bad_jsonl(workspace: Path) -> str:
    path = workspace / "build" / "bad.jsonl"
    path.parent.mkdir(exist_ok=True)
    path.write_text('{"instruction": "a", "input": "", "output": "b"}\n{"instruction": "c", "input": ""}\n')
    return f"data.source={path}"


@pytest.mark.parametrize("override, failing, message", [
    (write_bad_jsonl, "sample", "bad.jsonl:2: field 'output' must be a non-empty string, got None"),
    (lambda _: "data.fraction=0.99", "sample", "fewer than data.eval_size=64; lower one of them"),
    (lambda _: "model.name=unsloth/mistral-7b-instruct-v0.2-bnb-4bit", "format",
     "model.name='unsloth/mistral-7b-instruct-v0.2-bnb-4bit' is not in the local Hugging Face cache, and "
     "HF_HUB_OFFLINE=1 forbids downloading it"),
    (lambda _: "lora.target_modules=[q_proj, qkv_proj]", "train",
     "lora.target_modules lists 'qkv_proj', not a linear layer of model 'offline:tiny-mistral'. Its linear "
     "layers are: down_proj, gate_proj, k_proj, lm_head, o_proj, q_proj, up_proj, v_proj."),
])
def test_failing_stage_leaves_nothing_partial_and_previous_outputs_restore(workspace_copy, override, failing,
                                                                          message):
    before = {path: file_sha256(workspace_copy / path) for path in
              (ADAPTER, "data/sampled/train.jsonl", "data/formatted/train.jsonl", "reports/metrics.json")}
    overlay_params(workspace_copy / "params.yaml", [parse_override(override(workspace_copy))])
    done = subprocess.run(["dvc", "repro"], cwd=workspace_copy, env=cli_env(), capture_output=True, text=True)
    output = done.stdout + done.stderr
    assert done.returncode != 0 and stages_run(output)[-1] == failing, output
    assert message in output
    assert f"failed to reproduce '{failing}'" in output
    leftovers = [str(p) for p in workspace_copy.glob("**/.*.partial")]
    assert leftovers == [], "no half-written output or temporary is left behind"

    subprocess.run(["git", "checkout", "params.yaml"], cwd=workspace_copy, check=True)
    run_dvc(workspace_copy, "checkout")
    assert run_dvc(workspace_copy, "status").strip() == "Data and pipelines are up to date."
    assert {path: file_sha256(workspace_copy / path) for path in before} == before
