"""alpaca_qlora/patches/: each patch still fits the library it changes, does what it says, and is undone on exit.

An upgrade of Unsloth or TRL that moves what a patch leans on must fail here, not silently change what
training runs. The packed-attention checks import Unsloth, which patches transformers and peft for the
whole process, so they run in their own process (tests/isolated/packed_attention_checks.py). Their
numerics are checked on the GPU (benchmarks/packed_attention_probe.py, benchmarks/packing_check.py).
"""
import inspect
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_packed_attention_stand_in_matches_unsloths_internals():
    done = subprocess.run([sys.executable, "-m", "tests.isolated.packed_attention_checks"], cwd=ROOT,
                          capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    passed = [line for line in done.stdout.splitlines() if line.startswith("passed check_")]
    assert len(passed) == 5 and "5 checks passed" in done.stdout, done.stdout


def test_trl_loss_kernel_is_still_where_the_cpu_patch_replaces_it():
    """The patch swaps trl.trainer.utils._ChunkedLogProbFunction, which TRL's loss calls as `.apply(...)` with
    the arguments of ChunkedLogProbFunction.forward; our stand-in must take the same ones."""
    import trl.kernels
    import trl.trainer.utils as trl_utils

    from alpaca_qlora.patches.trl_cpu_loss import TorchChunkedLogProb

    assert trl_utils._ChunkedLogProbFunction is trl.kernels.ChunkedLogProbFunction
    assert "_ChunkedLogProbFunction.apply(" in inspect.getsource(trl_utils)
    theirs = list(inspect.signature(trl.kernels.ChunkedLogProbFunction.forward).parameters)[1:]  # minus ctx
    assert list(inspect.signature(TorchChunkedLogProb.apply).parameters) == theirs


def test_trl_cpu_loss_computes_log_probs_and_entropy_and_is_undone_on_exit():
    import torch
    import trl.trainer.utils as trl_utils

    from alpaca_qlora.patches import trl_cpu_loss

    original = trl_utils._ChunkedLogProbFunction
    torch.manual_seed(0)
    hidden, weight, targets = torch.randn(5, 8), torch.randn(11, 8), torch.tensor([0, 3, 10, 2, 7])
    with trl_cpu_loss.applied() as status:
        assert status.startswith("applied (CPU")
        log_probs, entropy, _, _, is_top1 = trl_utils._ChunkedLogProbFunction.apply(
            hidden, weight, None, targets, 2.0, 4, None, 1.0, ("log_probs", "entropy", "is_top1"))
    assert trl_utils._ChunkedLogProbFunction is original, "TRL's kernel is back once the run is over"
    logits = hidden @ weight.T / 2.0
    expected = -torch.nn.functional.cross_entropy(logits, targets, reduction="none")
    assert torch.allclose(log_probs, expected, atol=1e-6)
    probabilities = logits.softmax(-1)
    assert torch.allclose(entropy, -(probabilities * probabilities.log()).sum(-1), atol=1e-6)
    assert is_top1.tolist() == (logits.argmax(-1) == targets).float().tolist()


@pytest.mark.parametrize("backend, patch", [("unsloth", "packed_attention"), ("hf", "trl_cpu_loss")])
def test_training_applies_the_patches_its_backend_needs(backend, patch, monkeypatch):
    """Each backend's patch, and only it; the status line lands in metadata.json's effective.patches."""
    from alpaca_qlora import patches
    from alpaca_qlora.patches import packed_attention, trl_cpu_loss

    module = {"packed_attention": packed_attention, "trl_cpu_loss": trl_cpu_loss}[patch]
    entered = []

    def fake():
        from contextlib import contextmanager

        @contextmanager
        def applied():
            entered.append(patch)
            yield f"{patch} status"
        return applied()

    monkeypatch.setattr(module, "applied", fake)
    with patches.for_training(backend) as statuses:
        assert statuses == {patch: f"{patch} status"}
    assert entered == [patch]
