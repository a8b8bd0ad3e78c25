"""One flash-attention call per layer for packed rows under Unsloth on torch 2.11.

Why: with packing, each row holds ~10 Alpaca examples that must not attend to each other. Unsloth keeps
them apart in one kernel call through torch's `varlen_attn` (torch >= 2.12), flash-attn or xformers. On
torch 2.11 (the H200 image here) it has none of them and falls back to one SDPA call per example and
layer, which costs 35% of a packed step (BENCHMARKS.md). Unsloth's own fast path for torch >= 2.12
(`_LeanFlashVarlen` in `unsloth/utils/attention_dispatch.py`) calls torch's bundled flash kernel directly
through `torch.ops.aten._flash_attention_forward/_backward` with `cu_seqlens`, and those ops exist in
torch 2.11 too. So on torch 2.11 + CUDA we hand Unsloth a `varlen_attn` stand-in that runs exactly that
path, and Unsloth's own checks (`_torch_varlen_takes`: bf16/fp16, head dim, sm80+, causal, no dropout)
still decide per call whether it is used. Examples stay apart: the flash kernel's causal mask is applied
within each `cu_seqlens` segment; `benchmarks/packing_check.py` proves it on the GPU by loss equality.

Off when: no CUDA, torch already has a usable `varlen_attn`, Unsloth's internals moved (checked by name),
or `UNSLOTH_TORCH_VARLEN=0` (Unsloth's own switch for this path).
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Iterator

# The attributes of unsloth.utils.attention_dispatch that the stand-in replaces, restored on exit.
REPLACED = ("_TORCH_VARLEN_ATTN", "_LEAN_VARLEN", "_varlen_can_use_cudnn")
ABSENT = object()  # an attribute the stand-in adds (Unsloth 2026.10.9 has no _varlen_can_use_cudnn)


@contextmanager
def applied() -> Iterator[str]:
    """Install the stand-in where it applies; yield what packed attention runs as; restore Unsloth on exit."""
    saved: dict = {}
    try:
        yield _install(saved)
    finally:
        for (module, name), value in saved.items():
            if value is ABSENT:
                delattr(module, name)
            else:
                setattr(module, name, value)


def _install(saved: dict) -> str:
    import torch

    if not torch.cuda.is_available():
        return "not applicable (no CUDA)"
    try:
        import unsloth.models  # noqa: F401  (imported first, as Unsloth does: the dispatch module is circular alone)
        import unsloth.utils.attention_dispatch as dispatch
    except ImportError:
        return "not applicable (Unsloth not importable)"
    if dispatch._TORCH_VARLEN_ATTN is not None:
        return "unsloth: torch varlen_attn"
    if os.environ.get("UNSLOTH_TORCH_VARLEN", "1").lower() in ("0", "false", "no", "off"):
        return "unsloth: per-example SDPA (UNSLOTH_TORCH_VARLEN=0)"
    needed = ("_LeanFlashVarlen", "_varlen_attn_call", "_torch_varlen_takes")
    if not all(hasattr(dispatch, name) for name in needed) or not hasattr(torch.ops.aten, "_flash_attention_forward"):
        return "unsloth: per-example SDPA (internals not as expected; stand-in not installed)"
    if not torch.backends.cuda.is_flash_attention_available():
        return "unsloth: per-example SDPA (torch built without flash attention)"

    def varlen_attn(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, *, scale=None, window_size=(-1, -1),
                    enable_gqa=False):
        # Same call Unsloth makes on torch >= 2.12 when the kernel is flash (GQA is native to it).
        return dispatch._LeanFlashVarlen.apply(query, key, value, cu_seq_q, max_q, tuple(window_size) == (-1, 0),
                                               scale, window_size[0], window_size[1])

    saved.update({(dispatch, name): getattr(dispatch, name, ABSENT) for name in REPLACED})
    dispatch._TORCH_VARLEN_ATTN = varlen_attn
    dispatch._LEAN_VARLEN = True
    dispatch._varlen_can_use_cudnn = lambda *args, **kwargs: False
    return "unsloth: one flash call per layer via torch.ops.aten._flash_attention_forward (torch 2.11 stand-in)"
