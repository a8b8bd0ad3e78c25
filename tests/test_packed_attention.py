"""alpaca_qlora.packed_attention leans on Unsloth internals: these checks fail when an Unsloth upgrade moves
them, instead of letting GPU training fall back silently to one attention call per packed example. They run
in their own process (tests/isolated/packed_attention_checks.py), because importing Unsloth patches
transformers and peft for the whole process. The numerics are checked on the GPU
(benchmarks/packed_attention_probe.py, benchmarks/packing_check.py; results in BENCHMARKS.md)."""
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_packed_attention_stand_in_matches_unsloths_internals():
    done = subprocess.run([sys.executable, "-m", "tests.isolated.packed_attention_checks"], cwd=ROOT,
                          capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    passed = [line for line in done.stdout.splitlines() if line.startswith("passed check_")]
    assert len(passed) == 4 and "4 checks passed" in done.stdout, done.stdout
