"""Merge a trained adapter into its base model: one standalone 16-bit safetensors model plus the tokenizer.

    python -m alpaca_qlora.cli.merge --adapter models/adapter --out build/merged
    python -m alpaca_qlora.cli.merge --adapter models/adapter --out build/merged \\
        --base-weights original --base mistralai/Mistral-7B-Instruct-v0.2

The result loads with plain transformers, no peft: `AutoModelForCausalLM.from_pretrained("build/merged")`.

The QLoRA caveat, and why the default is what it is. The adapter was trained on top of the base model's
4-bit NF4 weights Q(W), not on its 16-bit weights W, and NF4 rounding is far from small (on the offline
tiny model it moves weights by up to 12% of their largest value). There are three ways to merge, and
only two are sound:
- merge into the 4-bit model itself (what `merge_and_unload()` on the training model does): W + BA is
  re-quantized to NF4 and the adapter's small delta is largely rounded away. Never done here.
- `--base-weights dequantized` (the default when model.load_in_4bit was true): load the base in 4-bit
  exactly as training did, dequantize it to 16-bit, then add BA. The merged model computes what the
  trained QLoRA model computed, up to 16-bit rounding. Works from pre-quantized checkpoints such as
  unsloth/...-bnb-4bit too.
- `--base-weights original`: add BA to the original 16-bit weights W. The adapter then sits on weights
  it never saw, so outputs differ from the trained model by the base's quantization error; choose it
  when you want the full-precision base's knowledge and accept that shift. A pre-quantized base has no
  16-bit weights: name its 16-bit original with --base.
Both need the memory of the 16-bit model (about 15 GB for 7B), on a GPU or in CPU RAM.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from alpaca_qlora import progress
from alpaca_qlora.errors import UserError, run_main
from alpaca_qlora.files import write_json
from alpaca_qlora.modeling import backends
from alpaca_qlora.modeling.adapter import AdapterMetadata

BASE_WEIGHTS = ("dequantized", "original")
SAVE_DTYPES = ("bfloat16", "float16", "float32")


def merge_adapter(adapter_dir: Path, out_dir: Path, *, base_weights: str | None = None, base: str | None = None,
                  save_dtype: str = "bfloat16") -> dict[str, Any]:
    """Write base + adapter, merged, to `out_dir`; return what was done (also saved as merge.json there).

    The merge runs in the compute dtype (float32 on a CPU, bfloat16 on a recent GPU) and the result is
    cast to `save_dtype` once at the end.
    """
    metadata = AdapterMetadata.read(adapter_dir)  # a wrong folder fails before torch loads
    model_params = metadata.model_params
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"--out {out_dir} is a file; give the folder to write the merged model to")
    import torch
    from transformers import AutoTokenizer

    if base_weights is None:
        base_weights = "dequantized" if model_params["load_in_4bit"] else "original"
    if base_weights not in BASE_WEIGHTS:
        raise ValueError(f"--base-weights must be one of {', '.join(BASE_WEIGHTS)}, got {base_weights!r}")
    if save_dtype not in SAVE_DTYPES:
        raise ValueError(f"--dtype must be one of {', '.join(SAVE_DTYPES)}, got {save_dtype!r}")
    if base:
        model_params["name"] = base

    progress.note(f"merge: loading {model_params['name']} ({base_weights} weights)")
    model, _ = backends.load_for_merge(model_params, dequantize_4bit=base_weights == "dequantized")
    tokenizer = AutoTokenizer.from_pretrained(str(adapter_dir))  # the one training used, pad token included
    # attach_adapter: the same safetensors-only loading as evaluation and generation.
    merged = backends.HF().attach_adapter(model, adapter_dir).merge_and_unload(progressbar=progress.bars_shown())
    merged = merged.to(getattr(torch, save_dtype))
    merged.config.dtype = getattr(torch, save_dtype)
    out_dir.mkdir(parents=True, exist_ok=True)
    progress.note(f"merge: saving {merged.num_parameters() * merged.dtype.itemsize / 1e9:.1f} GB to {out_dir}")
    merged.save_pretrained(str(out_dir), safe_serialization=True)
    tokenizer.save_pretrained(str(out_dir))
    # The template and EOS travel with the merged model: gguf_export writes the Ollama Modelfile from them.
    summary = {"adapter": str(adapter_dir), "base_model": model_params["name"], "base_weights": base_weights,
               "dtype": save_dtype, "template": metadata.template,
               "input_free_variant": metadata.format["input_free_variant"], "eos_token": tokenizer.eos_token}
    write_json(out_dir / "merge.json", summary)
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--adapter", type=Path, default=Path("models/adapter"))
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--base-weights", choices=BASE_WEIGHTS,
                        help="dequantized: the 4-bit weights training saw, in 16-bit (default when the adapter "
                             "was trained in 4-bit); original: the base's own 16-bit weights")
    parser.add_argument("--base", help="base model to merge into instead of the adapter's own (metadata.json), "
                                       "e.g. the 16-bit original of a pre-quantized checkpoint")
    parser.add_argument("--dtype", default="bfloat16", choices=SAVE_DTYPES, help="saved dtype (default bfloat16)")
    args = parser.parse_args()
    summary = merge_adapter(args.adapter, args.out, base_weights=args.base_weights, base=args.base,
                            save_dtype=args.dtype)
    print(progress.summary(f"merge: {summary['base_model']} ({summary['base_weights']} weights) + {args.adapter} "
                           f"-> {args.out} ({summary['dtype']} safetensors + tokenizer)"))


if __name__ == "__main__":
    run_main(main)
