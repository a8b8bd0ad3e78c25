"""Merge models/adapter into its base model and save a standalone model (for serving, vLLM, GGUF export).

    python -m scripts.merge_adapter --adapter models/adapter --out build/merged

The base is read from the adapter's own metadata.json and loaded in 16-bit (merging into 4-bit weights
would round the adapter away), so this needs the memory of the unquantized model (~15 GB for 7B).
For the "unsloth/...-bnb-4bit" base, pass --base mistralai/Mistral-7B-Instruct-v0.2 (its 16-bit original).
"""
from __future__ import annotations

import argparse
from pathlib import Path


def merge(adapter_dir: Path, out_dir: Path, base: str | None = None) -> Path:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from alpaca_qlora.data import read_json
    from alpaca_qlora.offline import resolve_model_path

    metadata = read_json(adapter_dir / "metadata.json")
    model_params = metadata["params"]["model"]
    if base:
        model_params = {**model_params, "name": base}
    dtype = torch.bfloat16 if torch.cuda.is_available() else torch.float32
    model = AutoModelForCausalLM.from_pretrained(  # safetensors only; remote code only if the adapter's run allowed it
        resolve_model_path(model_params), dtype=dtype, use_safetensors=True,
        trust_remote_code=bool(model_params.get("trust_remote_code", False)))
    merged = PeftModel.from_pretrained(model, str(adapter_dir)).merge_and_unload()
    merged.save_pretrained(str(out_dir), safe_serialization=True)
    AutoTokenizer.from_pretrained(str(adapter_dir)).save_pretrained(str(out_dir))
    return out_dir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--adapter", type=Path, default=Path("models/adapter"))
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--base", help="16-bit base model to merge into (default: the adapter's own base)")
    args = parser.parse_args()
    print(f"merged model written to {merge(args.adapter, args.out, args.base)}")


if __name__ == "__main__":
    main()
