"""Train-step throughput on Alpaca-length rows: each backend x batching mode, real (non-pad) tokens/s.

    python -m benchmarks.train_step --out build/bench/train_step.json                       # GPU: 7B geometry
    python -m benchmarks.train_step --model offline:tiny-mistral --steps 2 --warmup 1      # CPU smoke (CI)

Model: `offline:mistral-7b-geometry` (Mistral-7B-v0.2 shapes, random weights, built locally; the hub is
not needed) or any `model.name`, loaded in 4-bit through the backend's `load_for_training` (alpaca_qlora.modeling.backends) with
params.yaml's `lora` section, exactly as the train stage loads it. Rows: random token ids with
Alpaca-like lengths (benchmarks.alpaca_length_data; mean ~205, p95 ~317 tokens), prompt masked.

A step is forward + backward + optimizer step (bitsandbytes AdamW8bit on a GPU, torch AdamW on a CPU),
timed with CUDA synchronisation; the figure is real tokens over wall time of the steps after warm-up.
Modes:
- `full_row`: batch 2 x max_seq_length random tokens, no padding. The raw ceiling the issue compares to.
- `padded_b2`: the seed's batching: 2 Alpaca rows padded to the longer one.
- `padded_b16`: 16 Alpaca rows padded to the longest.
- `packed`: the train stage's packing: batches from TRL's SFTTrainer dataloader (bfd packing into rows of
  max_seq_length, batch 2, padding-free collator, plus Unsloth's packed lengths on a GPU).
- `packed_unseparated`: the same batches with position ids 0..N-1 and no per-example lengths, so attention
  is one causal pass over the whole row. Wrong math (examples see each other): a timing reference only,
  whose difference to `packed` is the cost of keeping examples apart.

Gradient checkpointing is on (the backend's memory-saving kind, as in the seed: Unsloth's offloaded one),
switched on the way Trainer.train() does it, so activation memory and recomputation are those of a
checkpointed train stage.

Each backend runs in its own process, because importing Unsloth patches transformers for the whole
process. Ratios are to the `unsloth` `full_row` step of the same run. On a CPU the timings mean nothing;
the run only proves the benchmark works.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

MODES = ("full_row", "padded_b2", "padded_b16", "packed", "packed_unseparated")


class PackingOff(RuntimeError):
    """The libraries turned packing off (Unsloth does on a CPU)."""


def padded_batch(rows: list[dict[str, Any]], pad_token_id: int) -> dict:
    import torch

    width = max(len(r["input_ids"]) for r in rows)
    ids = torch.full((len(rows), width), pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    labels = torch.full((len(rows), width), -100, dtype=torch.long)
    for i, row in enumerate(rows):
        n = len(row["input_ids"])
        ids[i, :n], mask[i, :n] = torch.tensor(row["input_ids"]), 1
        labels[i, :n] = torch.where(torch.tensor(row["completion_mask"], dtype=torch.bool), ids[i, :n], -100)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def real_tokens(batch: dict) -> int:
    """Tokens that are not padding: the attention mask's sum, else every token of a padding-free row."""
    if "real_tokens" in batch:
        return batch["real_tokens"]
    if "attention_mask" in batch:
        return int(batch["attention_mask"].sum())
    if "packed_seq_lengths" in batch:
        return int(batch["packed_seq_lengths"].sum())
    return int(batch["input_ids"].numel())


def batches_for(mode: str, *, rows, tokenizer, max_length: int, count: int, seed: int, packed: dict):
    import torch

    if mode == "full_row":
        generator = torch.Generator().manual_seed(seed)
        for _ in range(count):
            ids = torch.randint(3, len(tokenizer), (2, max_length), generator=generator)
            yield {"input_ids": ids, "labels": ids.clone()}
    elif mode.startswith("padded_b"):
        size = int(mode[len("padded_b"):])
        for i in range(count):
            yield padded_batch(rows[i * size:(i + 1) * size], tokenizer.pad_token_id)
    elif mode in ("packed", "packed_unseparated"):
        if not packed["effective"]["packing"]:  # Unsloth on a CPU: padded batches instead, nothing to measure
            raise PackingOff(f"packing was turned off by the libraries: {packed['effective']}")
        for _ in range(count):
            batch = next(packed["batches"])
            if mode == "packed_unseparated":
                batch = {k: v for k, v in batch.items() if k != "packed_seq_lengths"}
                batch["position_ids"] = torch.arange(batch["input_ids"].shape[1]).unsqueeze(0)
                batch["real_tokens"] = batch["input_ids"].numel()
            yield batch
    else:
        raise ValueError(f"unknown mode {mode!r}; known: {', '.join(MODES)}")


def measure(model, optimizer, batches, *, warmup: int, steps: int) -> dict[str, Any]:
    import torch

    device = next(model.parameters()).device
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    model.train()
    times, tokens, losses = [], [], []
    for index, batch in enumerate(batches):
        batch = {k: v.to(device) if hasattr(v, "to") else v for k, v in batch.items()}
        inputs = {k: v for k, v in batch.items() if k != "real_tokens"}
        if cuda:
            torch.cuda.synchronize()
        started = time.perf_counter()
        loss = model(**inputs).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if cuda:
            torch.cuda.synchronize()
        if index >= warmup:
            times.append(time.perf_counter() - started)
            tokens.append(real_tokens(batch))
            losses.append(round(float(loss.detach()), 4))
        if index + 1 >= warmup + steps:
            break
    result = {"steps": len(times), "real_tokens_per_step": round(sum(tokens) / len(tokens), 1),
              "step_s_median": round(sorted(times)[len(times) // 2], 4),
              "real_tokens_per_s": round(sum(tokens) / sum(times), 1), "losses": losses}
    if cuda:
        result["peak_gpu_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 3)
    return result


def run_backend(backend: str, args) -> dict[str, Any]:
    """Load once, then measure every mode; returns {mode: result}."""
    from alpaca_qlora import patches
    from alpaca_qlora.modeling import backends

    loader = backends.get(backend)  # Unsloth first, then transformers and TRL
    import torch

    from alpaca_qlora.params import load_section
    from alpaca_qlora.provenance import device_description, library_versions
    from benchmarks.alpaca_length_data import make_token_rows
    from alpaca_qlora.training.memory import BatchPlan
    from benchmarks.packing_check import packed_batches

    model_params, lora_params = load_section("model"), load_section("lora")
    model_params.update(name=args.model, max_seq_length=args.max_length, load_in_4bit=True)
    train_params = {**load_section("train"), "batch_size": 2, "seed": 0, "packing": True}
    patched = patches.for_training(backend)
    patched.__enter__()  # for the whole process, as in the train stage; each backend runs in its own process
    started = time.perf_counter()
    model, tokenizer = loader.load_for_training(model_params, lora_params, seed=3407)
    load_s = time.perf_counter() - started
    rows = make_token_rows(args.rows, vocab_size=len(tokenizer), seed=0)
    # Built before the optimizer: SFTTrainer casts a quantized model's LoRA weights to bf16 (QLoRA practice),
    # so every mode then trains the same bf16 adapters the train stage trains.
    batches, effective, trainer = packed_batches(model, tokenizer, rows, model_params=model_params,
                                                 train_params=train_params, runtime_params=load_section("runtime"),
                                                 plan=BatchPlan.fixed(2, 1, loader.saving_checkpointing))
    packed = {"batches": batches, "effective": effective}
    if trainer.args.gradient_checkpointing:  # as Trainer.train() does before its first step
        gc_kwargs = dict(trainer.args.gradient_checkpointing_kwargs or {})
        every_n_layers, offload = gc_kwargs.pop("every_n_layers", 1), gc_kwargs.pop("offload", False)
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=gc_kwargs or None,
                                            every_n_layers=every_n_layers, offload=offload)
    effective["gradient_checkpointing"] = bool(getattr(model, "is_gradient_checkpointing", False))
    trainable = [p for p in model.parameters() if p.requires_grad]
    if torch.cuda.is_available():
        import bitsandbytes as bnb

        optimizer = bnb.optim.AdamW8bit(trainable, lr=2e-4, weight_decay=0.01)
    else:
        optimizer = torch.optim.AdamW(trainable, lr=2e-4, weight_decay=0.01)
    results = {"backend": backend, "model": args.model, "model_load_s": round(load_s, 1),
               "trainable_params": sum(p.numel() for p in trainable), "device": device_description(),
               "libraries": library_versions(), "packing_effective": effective, "modes": {}}
    for mode in args.modes:
        count = args.warmup + args.steps
        batches = batches_for(mode, rows=rows, tokenizer=tokenizer, max_length=args.max_length, count=count,
                              seed=0, packed=packed)
        try:
            results["modes"][mode] = measure(model, optimizer, batches, warmup=args.warmup, steps=args.steps)
        except PackingOff as why:
            if torch.cuda.is_available():
                raise
            results["modes"][mode] = {"skipped": str(why)}
        print(f"{backend:8s} {mode:11s} {json.dumps(results['modes'][mode])}", flush=True)
    return results


def table(results: list[dict[str, Any]]) -> str:
    reference = next((r["modes"].get("full_row") for r in results if r["backend"] == "unsloth"), None)
    lines = ["| backend | mode | real tokens/step | step (median) | real tokens/s | vs unsloth full_row | peak GiB |",
             "|---|---|---|---|---|---|---|"]
    for result in results:
        for mode, m in ((mode, result["modes"][mode]) for mode in MODES if mode in result["modes"]):
            if "skipped" in m:
                lines.append(f"| {result['backend']} | {mode} | skipped: {m['skipped']} ||||| ")
                continue
            ratio = f"{m['real_tokens_per_s'] / reference['real_tokens_per_s']:.0%}" if reference else "n/a"
            lines.append(f"| {result['backend']} | {mode} | {m['real_tokens_per_step']:,.0f} | "
                         f"{m['step_s_median']:.3f} s | {m['real_tokens_per_s']:,.0f} | {ratio} | "
                         f"{m.get('peak_gpu_memory_gib', 'n/a')} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backends", default="unsloth,hf")
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--model", default="offline:mistral-7b-geometry")
    parser.add_argument("--max-length", type=int, default=2048)
    parser.add_argument("--rows", type=int, default=3000, help="Alpaca-length rows to draw batches from")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--out", type=Path, default=Path("build/bench/train_step.json"))
    parser.add_argument("--only", choices=("unsloth", "hf"), help=argparse.SUPPRESS)  # child process
    args = parser.parse_args()
    args.modes = [m for m in args.modes.split(",") if m]

    if args.only:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(run_backend(args.only, args), indent=2, sort_keys=True) + "\n")
        return
    results = []
    for backend in [b for b in args.backends.split(",") if b]:
        part = args.out.with_name(f"{args.out.stem}.{backend}.json")
        child = [sys.executable, "-m", "benchmarks.train_step", "--only", backend, "--out", str(part),
                 "--modes", ",".join(args.modes), "--model", args.model, "--max-length", str(args.max_length),
                 "--rows", str(args.rows), "--warmup", str(args.warmup), "--steps", str(args.steps)]
        started = time.perf_counter()
        subprocess.run(child, check=True, env=os.environ.copy())
        result = json.loads(part.read_text())
        result["process_s"] = round(time.perf_counter() - started, 1)
        results.append(result)
    args.out.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    print(table(results))


if __name__ == "__main__":
    main()
