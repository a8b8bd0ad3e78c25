"""Checks of alpaca_qlora.patches.packed_attention that import Unsloth, run as a script in their own process by
tests/test_patches.py: importing Unsloth patches transformers and peft for the whole process, and
the other tests must not run patched. Each check_* function is one check; monkeypatching is done by hand."""
import inspect
import os
import sys

import torch
import unsloth.models  # noqa: F401  (before the dispatch module, which is circular alone)
import unsloth.utils.attention_dispatch as dispatch

from alpaca_qlora.patches import packed_attention


class Patch:
    """A tiny stand-in for pytest's monkeypatch: setattr / setenv / delenv, undone by undo()."""

    def __init__(self):
        self.undo_steps = []

    def setattr(self, target, name, value, raising=True):
        missing = object()
        old = getattr(target, name, missing)
        if old is missing and raising:
            raise AttributeError(name)
        setattr(target, name, value)
        self.undo_steps.append(lambda: delattr(target, name) if old is missing else setattr(target, name, old))

    def setenv(self, name, value):
        old = os.environ.get(name)
        os.environ[name] = value
        self.undo_steps.append(lambda: os.environ.pop(name, None) if old is None else os.environ.update({name: old}))

    def delenv(self, name, raising=False):
        if name in os.environ:
            self.setenv(name, os.environ[name])
            del os.environ[name]

    def undo(self):
        for step in reversed(self.undo_steps):
            step()
        self.undo_steps.clear()


def check_unsloth_internals_the_stand_in_uses_are_there():
    for name in ("_TORCH_VARLEN_ATTN", "_LEAN_VARLEN", "_varlen_can_use_cudnn", "_LeanFlashVarlen",
                 "_varlen_attn_call", "_torch_varlen_takes"):
        assert name in vars(dispatch), f"unsloth.utils.attention_dispatch.{name} is gone"
    forward = inspect.signature(dispatch._LeanFlashVarlen.forward).parameters
    assert list(forward) == ["ctx", "query", "key", "value", "cu_seqlens", "max_seqlen", "is_causal", "scale",
                             "window_left", "window_right"]
    # The call site that the stand-in answers: positional q, k, v, cu_q, cu_k, max_q, max_k + keywords.
    source = inspect.getsource(dispatch._varlen_attn_call)
    assert "_TORCH_VARLEN_ATTN(" in source and "enable_gqa = enable_gqa" in source


def check_without_cuda_nothing_is_patched(monkeypatch: Patch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    before = dispatch._TORCH_VARLEN_ATTN
    with packed_attention.applied() as status:
        assert status == "not applicable (no CUDA)"
        assert dispatch._TORCH_VARLEN_ATTN is before


def check_stand_in_is_installed_and_calls_unsloths_flash_path(monkeypatch: Patch):
    """With CUDA faked, the stand-in is installed and forwards Unsloth's varlen call to _LeanFlashVarlen
    with the causal flag and window unpacked as Unsloth does on torch >= 2.12."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.backends.cuda, "is_flash_attention_available", lambda: True)
    monkeypatch.setattr(dispatch, "_TORCH_VARLEN_ATTN", None)
    monkeypatch.setattr(dispatch, "_LEAN_VARLEN", False)
    monkeypatch.setattr(dispatch, "_varlen_can_use_cudnn", None, raising=False)
    monkeypatch.delenv("UNSLOTH_TORCH_VARLEN", raising=False)
    calls = []
    monkeypatch.setattr(dispatch._LeanFlashVarlen, "apply", staticmethod(lambda *args: calls.append(args) or "out"))
    with packed_attention.applied() as status:
        assert "torch 2.11 stand-in" in status
        assert dispatch._LEAN_VARLEN is True and dispatch._varlen_can_use_cudnn() is False
        out = dispatch._TORCH_VARLEN_ATTN("q", "k", "v", "cu", "cu", 300, 300, scale=None, window_size=(-1, 0),
                                          enable_gqa=True)
        assert out == "out" and calls == [("q", "k", "v", "cu", 300, True, None, -1, 0)]
    assert dispatch._TORCH_VARLEN_ATTN is None and dispatch._LEAN_VARLEN is False, "Unsloth restored on exit"
    assert dispatch._varlen_can_use_cudnn is None


def check_an_attribute_the_stand_in_adds_is_removed_on_exit(monkeypatch: Patch):
    """Unsloth 2026.10.9 has no _varlen_can_use_cudnn: the stand-in adds it, and exit removes it again."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.backends.cuda, "is_flash_attention_available", lambda: True)
    monkeypatch.setattr(dispatch, "_TORCH_VARLEN_ATTN", None)
    monkeypatch.delenv("UNSLOTH_TORCH_VARLEN", raising=False)
    had = hasattr(dispatch, "_varlen_can_use_cudnn")
    if had:
        monkeypatch.setattr(dispatch, "_varlen_can_use_cudnn", None)
        delattr(dispatch, "_varlen_can_use_cudnn")
    with packed_attention.applied():
        assert dispatch._varlen_can_use_cudnn() is False
    assert not hasattr(dispatch, "_varlen_can_use_cudnn")


def check_unsloth_switch_keeps_per_example_attention(monkeypatch: Patch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(dispatch, "_TORCH_VARLEN_ATTN", None)
    monkeypatch.setenv("UNSLOTH_TORCH_VARLEN", "0")
    with packed_attention.applied() as status:
        assert "UNSLOTH_TORCH_VARLEN=0" in status
        assert dispatch._TORCH_VARLEN_ATTN is None


if __name__ == "__main__":
    checks = [(name, fn) for name, fn in sorted(globals().items()) if name.startswith("check_")]
    for name, fn in checks:
        patch = Patch()
        try:
            fn(patch) if inspect.signature(fn).parameters else fn()
        finally:
            patch.undo()
        print("passed", name)
    print(f"{len(checks)} checks passed")
    sys.exit(0)
