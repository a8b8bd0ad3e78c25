"""The inference rule, in one place: how the evaluate stages, the generate command and the generation
benchmark load a model to answer with.

Paths (`evaluate.backend`, `generate --backend`), each for the base model alone or base + adapter:
- `unsloth`: Unsloth's `FastLanguageModel.for_inference`, 4-bit base + LoRA unmerged: the model training ran.
- `hf`: transformers + bitsandbytes 4-bit + peft LoRA unmerged: the same weights through plain libraries.
- `merged`: the base loaded in 4-bit exactly as training did, dequantized to 16-bit (float32 on a CPU),
  the adapter merged in (alpaca_qlora/cli/merge.py's default): plain transformers, no 4-bit kernels and
  no LoRA branch at decode time. Rounding differs from the 4-bit path; benchmarks/generation_paths.py
  measures how often greedy answers differ.
- `auto` (the default): `unsloth` on a GPU, `merged` on a CPU. On a GPU Unsloth's path is the trained
  model itself and was the fastest batched path measured (NOTES: 1,265 new tokens/s at batch 64 on an
  H200); on a CPU bitsandbytes' 4-bit kernels make the 4-bit paths several times slower than plain
  float32 (benchmarks/generation_paths.py prints the figures).

Both evaluate stages resolve the same `evaluate.backend` here, so base and adapter figures always come
from the same path and compare. The adapter's own training backend (train.backend) does not enter: the
LoRA file is the same for both backends, and the base stage must not depend on train.* at all.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from alpaca_qlora.modeling import backends
from alpaca_qlora.modeling.preflight import check_before_loading
from alpaca_qlora.modeling.tokenizer import ensure_pad_token
from alpaca_qlora.params import CHOICES as PARAM_CHOICES

CHOICES = PARAM_CHOICES[("evaluate", "backend")]
PATHS = tuple(choice for choice in CHOICES if choice != "auto")
AUTO = {"cuda": "unsloth", "cpu": "merged"}


def resolve(requested: str, *, cuda_available: bool | None = None) -> str:
    """The path `requested` names; `auto` -> AUTO for this machine."""
    if requested not in CHOICES:
        raise ValueError(f"evaluate.backend / --backend must be one of {', '.join(CHOICES)}, got {requested!r}")
    if requested != "auto":
        return requested
    if cuda_available is None:
        import torch

        cuda_available = torch.cuda.is_available()
    return AUTO["cuda" if cuda_available else "cpu"]


def static_decoding(path: str) -> bool:
    """Whether greedy answers on `path` go through evaluation/static_decoding.py (a static KV cache, each
    decode step one CUDA graph replay on a GPU). Only `merged` is a plain transformers model it can drive:
    Unsloth's inference mode brings its own cache, and bitsandbytes' 4-bit kernels were not shown to replay
    in a graph."""
    return path == "merged"


def import_libraries(path: str) -> None:
    """Import what `path` runs on (Unsloth first where it is used), so that load time is only loading."""
    backends.get("unsloth" if path == "unsloth" else "hf")
    import peft  # noqa: F401
    import transformers  # noqa: F401


def load(path: str, model_params: dict[str, Any], adapter_dir: Path | None = None):
    """(model, tokenizer) in eval mode: the base model of `model_params`, plus the adapter when given.

    For `unsloth` Unsloth is imported here before transformers and peft, as it must be.
    """
    if path not in PATHS:
        raise ValueError(f"unknown inference path {path!r}; one of {', '.join(PATHS)} (resolve 'auto' first)")
    if path != "merged":
        backend = backends.get(path)
        model, tokenizer = backend.load_for_inference(model_params)
        return (backend.attach_adapter(model, adapter_dir) if adapter_dir else model), tokenizer
    check_before_loading("hf", model_params)
    model, tokenizer = backends.load_for_merge(model_params, dequantize_4bit=model_params["load_in_4bit"])
    if adapter_dir:
        # attach_adapter: the same safetensors-only loading as the other paths and cli/merge.py.
        model = backends.HF().attach_adapter(model, adapter_dir).merge_and_unload()
    model.eval()
    return model, ensure_pad_token(tokenizer)
