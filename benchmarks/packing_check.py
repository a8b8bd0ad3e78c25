"""Do packed examples stay apart? Per-example summed loss of a packed batch vs each example run alone.

The packed batch is the one the train stage really trains on: the stage's own trainer and SFTConfig
(alpaca_qlora.training.trainer: bfd packing, completion-only loss, padding-free collator, plus whatever
Unsloth adds on a GPU) builds it, and the model comes from the backend's `load_for_training`. For each example in the batch the loss
is summed over its own tokens three ways:

- `packed`: in the packed row, as trained (position ids restart per example);
- `alone`: the example by itself, batch of one, no padding: the ground truth;
- `unseparated`: the same packed row with position ids 0..N-1 over the whole row and no per-example lengths,
  i.e. packing without separation. It must differ from `alone`, or the check could not fail.

`packed` equal to `alone` at a tight tolerance, and `unseparated` different, proves no cross-contamination.

    python -m benchmarks.packing_check --out build/packing_check.json            # reads ./params.yaml
    python -m benchmarks.packing_check --synthetic-rows 600 --model offline:mistral-7b-geometry ...

It reads params.yaml of the current directory (an offline workspace on CPU, say) and the formatted
training rows, or makes Alpaca-length rows itself with --synthetic-rows.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any


def packed_batches(model, tokenizer, rows: list[dict[str, Any]], *, model_params: dict, train_params: dict,
                   runtime_params: dict, plan):
    """The train stage's own packed batches (an iterator), the packing switches in effect, and the trainer.

    `plan`: the micro-batch and checkpointing (alpaca_qlora.training.memory.BatchPlan) the trainer runs with."""
    from alpaca_qlora.training import trainer as training

    if not train_params["packing"]:
        raise SystemExit("packing_check: train.packing is false in params.yaml; there is nothing to check")
    config = training.sft_config(model_params=model_params, train_params=train_params,
                                 runtime_params={**runtime_params, "save_steps": 0}, plan=plan,
                                 output_dir=Path("build/packing-check"), report_to=[])
    trainer = training.pipeline_trainer(model=model, args=config, train_dataset=training.training_dataset(rows),
                                        processing_class=tokenizer)
    effective = {"packing": bool(trainer.args.packing),
                 "padding_free": bool(getattr(trainer, "padding_free", False)),
                 "attn_implementation": str(getattr(model.config, "_attn_implementation", None))}
    return iter(trainer.get_train_dataloader()), effective, trainer


def _summed_loss(model, input_ids, labels, **kwargs) -> tuple[float, int]:
    """Sum of the token losses the model reports for `labels` (its mean x the tokens it scored)."""
    import torch

    scored = int((labels[:, 1:] != -100).sum())  # the model shifts labels by one
    with torch.no_grad():
        out = model(input_ids=input_ids, labels=labels, **kwargs)
    return float(out.loss) * scored, scored


def segments(position_ids) -> list[tuple[int, int]]:
    """(start, end) of each example in a flattened packed row, from where the position ids restart."""
    starts = (position_ids[0] == 0).nonzero().flatten().tolist() + [position_ids.shape[1]]
    return [(a, b) for a, b in zip(starts[:-1], starts[1:]) if b > a]


def compare_packed_to_alone(model, batch: dict, *, max_examples: int = 12) -> list[dict[str, float]]:
    """Per-example summed losses: packed (as trained), alone (ground truth), unseparated (the control)."""
    import torch

    device = next(model.parameters()).device
    batch = {k: v.to(device) if hasattr(v, "to") else v for k, v in batch.items()}
    if "position_ids" not in batch or batch["input_ids"].shape[0] != 1:
        raise ValueError(f"not a padding-free packed batch: keys {sorted(batch)}, shape "
                         f"{tuple(batch['input_ids'].shape)}; packing was turned off somewhere")
    input_ids, labels, positions = batch["input_ids"], batch["labels"], batch["position_ids"]
    extra = {k: v for k, v in batch.items() if k not in ("input_ids", "labels", "position_ids")}
    flat_positions = torch.arange(input_ids.shape[1], device=device).unsqueeze(0)
    model.train()  # the training forward (Unsloth's varlen path is the training one)
    results = []
    for start, end in segments(positions)[:max_examples]:
        own = torch.full_like(labels, -100)
        own[:, start:end] = labels[:, start:end]
        if int((own[:, 1:] != -100).sum()) == 0:
            continue  # a prompt-only example: no loss to compare
        packed, scored = _summed_loss(model, input_ids, own, position_ids=positions, **extra)
        unseparated, _ = _summed_loss(model, input_ids, own, position_ids=flat_positions)
        alone, scored_alone = _summed_loss(model, input_ids[:, start:end], labels[:, start:end])
        if scored != scored_alone:
            raise AssertionError(f"example at {start}:{end} scores {scored} tokens packed, {scored_alone} alone")
        results.append({"tokens": end - start, "scored_tokens": scored, "packed": packed, "alone": alone,
                        "unseparated": unseparated})
    return results


def summarize(results: list[dict[str, float]]) -> dict[str, float]:
    def worst(key):
        return max(abs(r[key] - r["alone"]) / abs(r["alone"]) for r in results)

    return {"examples": len(results), "max_rel_diff_packed_vs_alone": worst("packed"),
            "max_rel_diff_unseparated_vs_alone": worst("unseparated")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backend", choices=("unsloth", "hf"), default=None, help="default: train.backend")
    parser.add_argument("--model", default=None, help="default: model.name of params.yaml")
    parser.add_argument("--max-length", type=int, default=None, help="default: model.max_seq_length")
    parser.add_argument("--formatted", type=Path, default=Path("data/formatted"))
    parser.add_argument("--synthetic-rows", type=int, default=0, help="use N Alpaca-length random-token rows")
    parser.add_argument("--rows", type=int, default=64, help="formatted rows to pack (without --synthetic-rows)")
    parser.add_argument("--max-examples", type=int, default=12)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    from alpaca_qlora import patches
    from alpaca_qlora.modeling import backends
    from alpaca_qlora.params import load_section
    from alpaca_qlora.provenance import device_description, library_versions

    model_params, lora_params, train_params = load_section("model"), load_section("lora"), load_section("train")
    backend = backends.get(args.backend or train_params["backend"])  # Unsloth first, then TRL
    if args.model:
        model_params["name"] = args.model
    if args.max_length:
        model_params["max_seq_length"] = args.max_length

    from alpaca_qlora.training.memory import plan_for_run

    # The stage's own plan (train.batch_size / gradient_checkpointing, auto or not), for one process; packed
    # rows are max_seq_length long whatever the data.
    plan = plan_for_run(backend=backend.name, model_params=model_params, lora_params=lora_params,
                        train_params=train_params, rows=[])
    started = time.perf_counter()
    with patches.for_training(backend.name):  # as the train stage runs
        model, tokenizer = backend.load_for_training(model_params, lora_params, seed=train_params["seed"],
                                                     gradient_checkpointing=plan.gradient_checkpointing)
        if args.synthetic_rows:
            from benchmarks.alpaca_length_data import make_token_rows

            rows = make_token_rows(args.synthetic_rows, vocab_size=len(tokenizer), seed=1)
        else:
            from alpaca_qlora.files import read_jsonl

            rows = read_jsonl(args.formatted / "train.jsonl")[:args.rows]
        batches, effective, _ = packed_batches(model, tokenizer, rows, model_params=model_params,
                                               train_params=train_params, runtime_params=load_section("runtime"),
                                               plan=plan)
        results = compare_packed_to_alone(model, next(batches), max_examples=args.max_examples)
    report = {"backend": backend.name, "model": model_params["name"], "effective": effective,
              "summary": summarize(results), "examples": results, "device": device_description(),
              "libraries": library_versions(), "seconds": round(time.perf_counter() - started, 1)}
    text = json.dumps(report, indent=2, sort_keys=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n", encoding="utf-8")
    print(json.dumps({"backend": backend.name, "model": model_params["name"], **report["summary"],
                      **effective}, sort_keys=True), file=sys.stdout)


if __name__ == "__main__":
    main()
