"""Stage `evaluate`: held-out loss and perplexity of the base model and of base + adapter, and generations.

Reads params `evaluate.*`; the base model and backend are those the adapter's metadata.json records. Writes reports/metrics.json (declared as DVC
metrics, so `dvc metrics diff` and `dvc exp show` compare runs), reports/plots/eval.json (the same loss and
perplexity, one row per model, declared as plots for `dvc plots diff`) and reports/generations.md (greedy
generations of the first held-out prompts, each beside its reference output, for base and fine-tuned).
"""
from __future__ import annotations

import argparse
from pathlib import Path

from alpaca_qlora import progress
from alpaca_qlora.errors import run_main
from alpaca_qlora.files import atomic_write_bytes, read_jsonl, write_json
from alpaca_qlora.modeling import backends
from alpaca_qlora.modeling.adapter import AdapterMetadata
from alpaca_qlora.params import load_section


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--formatted", type=Path, default=Path("data/formatted"))
    parser.add_argument("--adapter", type=Path, default=Path("models/adapter"))
    parser.add_argument("--out", type=Path, default=Path("reports"))
    args = parser.parse_args()
    params, adapter = load_section("evaluate"), AdapterMetadata.read(args.adapter)
    model_params = adapter.model_params
    backend = backends.get(adapter.backend)  # imports Unsloth before transformers
    from alpaca_qlora.evaluation.generation import greedy_generations
    from alpaca_qlora.evaluation.loss import heldout_loss

    rows = read_jsonl(args.formatted / "eval.jsonl")
    shown = rows[:params["num_generations"]]
    prompts = [row["prompt"] for row in shown]
    generate = dict(max_new_tokens=params["max_new_tokens"], batch_size=params["batch_size"])

    model, tokenizer = backend.load_for_inference(model_params)
    base = heldout_loss(model, rows, batch_size=params["batch_size"], pad_token_id=tokenizer.pad_token_id)
    base_texts, _ = greedy_generations(model, tokenizer, prompts, **generate)
    model = backend.attach_adapter(model, args.adapter)
    tuned = heldout_loss(model, rows, batch_size=params["batch_size"], pad_token_id=tokenizer.pad_token_id)
    tuned_texts, speed = greedy_generations(model, tokenizer, prompts, **generate)

    write_json(args.out / "metrics.json", {
        "eval_loss": tuned["loss"], "eval_perplexity": tuned["perplexity"],
        "base_eval_loss": base["loss"], "base_eval_perplexity": base["perplexity"],
        "eval_loss_reduction": round(base["loss"] - tuned["loss"], 6),
        "eval_rows": len(rows), "eval_response_tokens": tuned["tokens"],
        "generation_prompts_per_s": speed["prompts_per_s"],
        "generation_new_tokens_per_s": speed["new_tokens_per_s"],
    })
    # One row per model, so `dvc plots diff` draws base vs adapter as bars, one bar per experiment.
    write_json(args.out / "plots" / "eval.json", [
        {"model": "base", "loss": base["loss"], "perplexity": base["perplexity"]},
        {"model": "adapter", "loss": tuned["loss"], "perplexity": tuned["perplexity"]},
    ])
    write_generations_report(args.out / "generations.md", shown, base_texts, tuned_texts, model_params["name"])
    print(progress.summary(f"evaluate: held-out loss {base['loss']:.4f} (base) -> {tuned['loss']:.4f} (adapter), "
                           f"perplexity {base['perplexity']:.2f} -> {tuned['perplexity']:.2f}; "
                           f"{speed['prompts_per_s']:.2f} prompts/s; wrote {args.out}/"))


def write_generations_report(path: Path, rows, base_texts, tuned_texts, model_name: str) -> None:
    lines = ["# Greedy generations on held-out prompts\n",
             f"Base model `{model_name}`; the first {len(rows)} rows of data/formatted/eval.jsonl.\n"]
    for row, base_text, tuned_text in zip(rows, base_texts, tuned_texts):
        reference = row["completion"]
        lines += [f"## Record {row['id']}\n", "**Prompt**\n", fenced(row["prompt"]),
                  "**Reference**\n", fenced(reference), "**Fine-tuned (base + adapter)**\n", fenced(tuned_text),
                  "**Base model**\n", fenced(base_text)]
    atomic_write_bytes(path, "\n".join(lines).encode("utf-8"))


def fenced(text: str) -> str:
    return "````text\n" + text + "\n````\n"


if __name__ == "__main__":
    run_main(main)
