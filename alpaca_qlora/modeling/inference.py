"""The inference rule, in one place: how the evaluate stages, the generate command and the generation
benchmark load a model to answer with.

Paths (`evaluate.backend`, `generate --backend`), each for the base model alone or base + adapter:
- `unsloth`: Unsloth's `FastLanguageModel.for_inference`, 4-bit base + LoRA unmerged: the model training ran.
- `hf`: transformers + bitsandbytes 4-bit + peft LoRA unmerged: the same weights through plain libraries.
- `merged`: the base loaded in 4-bit exactly as training did, dequantized to 16-bit (float32 on a CPU),
  the adapter merged in (alpaca_qlora/cli/merge.py's default): plain transformers, no 4-bit kernels and
  no LoRA branch at decode time. Rounding differs from the 4-bit path; benchmarks/generation_paths.py
  measures how often greedy answers differ.
- `auto` (the default): `merged` on a CPU and on a GPU of at least MERGED_MIN_GPU_GIB, else `unsloth`.
  Measured on an H200 with the Mistral-7B geometry (BENCHMARKS.md, benchmarks/generation_paths.py), 100
  held-out prompts, 256 new tokens, batch 64: `merged` with static-cache CUDA-graph decoding 2,178 new
  tokens/s and 89 single-stream, peak 17.0 GiB; `unsloth` 929 and 23, peak 11.1 GiB; the same merged model
  through `model.generate` 675 and 21. A 16-bit copy of a 7B model does not fit a 16-24 GB card, where
  Unsloth's 4-bit path stays. The rule reads the card's total memory, not its free memory, so the two
  evaluate stages always agree. On a CPU bitsandbytes' 4-bit kernels make the 4-bit paths several times
  slower than plain float32.
  Faithfulness: `merged` adds the adapter to the very weights training saw (dequantized NF4), so it
  computes the trained model up to 16-bit rounding; greedy answers of a random-weight benchmark model,
  whose logits have near-ties everywhere, diverge from the 4-bit path's within a few tokens (and even
  between two 16-bit kernels), so that measurement says little about a trained model's answers.

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
MERGED_MIN_GPU_GIB = 40  # a 7B model in 16 bits peaked at 17.0 GiB answering 64 prompts of 256 tokens


def resolve(requested: str, *, cuda_available: bool | None = None, gpu_total_gib: float | None = None) -> str:
    """The path `requested` names; `auto` -> merged on a CPU or a GPU of MERGED_MIN_GPU_GIB, else unsloth."""
    if requested not in CHOICES:
        raise ValueError(f"evaluate.backend / --backend must be one of {', '.join(CHOICES)}, got {requested!r}")
    if requested != "auto":
        return requested
    if cuda_available is None:
        import torch

        cuda_available = torch.cuda.is_available()
    if not cuda_available:
        return "merged"
    if gpu_total_gib is None:
        import torch

        gpu_total_gib = torch.cuda.get_device_properties(0).total_memory / 2**30
    return "merged" if gpu_total_gib >= MERGED_MIN_GPU_GIB else "unsloth"


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
