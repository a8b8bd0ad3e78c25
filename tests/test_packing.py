"""Packing keeps examples apart: per-example loss of a packed batch equals each example's loss alone.

Runs on a CPU with the offline profile, on the formatted rows of the session's reproduced workspace (the
real `dvc repro`); everything the check writes goes to a temporary folder. The packed batch is the one TRL's SFTTrainer builds
for the train stage (bfd packing, padding-free collator, completion-only labels) and the model is loaded by
the backend's `load_for_training` ("hf" backend: Unsloth turns packing off on a CPU, so "hf" is the
backend that packs here). The check runs in a subprocess so that no Unsloth import elsewhere in the test
session can patch TRL under it. The GPU run of the same check is in BENCHMARKS.md.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import cli_env

def run(command: list[str], cwd: Path) -> subprocess.CompletedProcess:
    done = subprocess.run(command, cwd=cwd, env={**cli_env(), "PYTHONPATH": str(cwd)}, capture_output=True, text=True)
    assert done.returncode == 0, f"{' '.join(command)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-6000:]}"
    return done


@pytest.fixture(scope="module")
def workspace(reproduced_workspace) -> Path:
    """The offline profile's params.yaml and data/formatted, as `dvc repro` made them. Read only."""
    return reproduced_workspace


@pytest.fixture(scope="module")
def check(workspace: Path, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("packing") / "packing_check.json"
    run([sys.executable, "-m", "benchmarks.packing_check", "--backend", "hf", "--rows", "24", "--max-examples", "8",
         "--out", str(out)], workspace)
    return json.loads(out.read_text())


def test_the_checked_batch_is_really_packed(check):
    assert check["effective"]["packing"] is True
    assert check["effective"]["padding_free"] is True  # one flattened row, position ids restarting per example
    assert check["summary"]["examples"] >= 6
    assert all(e["scored_tokens"] > 0 for e in check["examples"])


def test_packed_loss_equals_each_example_alone(check):
    for example in check["examples"]:
        assert example["packed"] == pytest.approx(example["alone"], rel=1e-5), example
    assert check["summary"]["max_rel_diff_packed_vs_alone"] < 1e-5


def test_packing_without_separation_would_be_caught(check):
    """The control: the same packed row with position ids 0..N-1 (no reset) lets examples see each other.

    Every example after the first of its row then gets a different loss, by far more than the tolerance
    above, so the equality test can fail when separation is missing.
    """
    later = [e for e in check["examples"][1:]]
    differing = [e for e in later if abs(e["unseparated"] - e["alone"]) > 1e-3 * abs(e["alone"])]
    assert len(differing) >= len(later) - 1, later
    assert check["summary"]["max_rel_diff_unseparated_vs_alone"] > 1e-2


def test_benchmark_runs_on_cpu_with_the_tiny_model(workspace, tmp_path):
    """benchmarks.train_step works end to end on a CPU (CI); its timings mean nothing here."""
    out = tmp_path / "train_step.json"
    done = run([sys.executable, "-m", "benchmarks.train_step", "--model", "offline:tiny-mistral", "--max-length", "256",
                "--rows", "48", "--steps", "1", "--warmup", "0", "--modes", "full_row,padded_b2,packed",
                "--out", str(out)], workspace)
    results = {r["backend"]: r for r in json.loads(out.read_text())}
    assert set(results) == {"unsloth", "hf"}
    assert results["unsloth"]["modes"]["full_row"]["real_tokens_per_step"] == 2 * 256
    assert "skipped" in results["unsloth"]["modes"]["packed"]  # Unsloth turns packing off on a CPU
    assert results["hf"]["modes"]["packed"]["real_tokens_per_s"] > 0
    assert "| hf | packed |" in done.stdout
