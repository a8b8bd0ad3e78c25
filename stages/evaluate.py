"""Stage `evaluate`: held-out loss and perplexity of the base model and of base + adapter, and generations.

Reads params `evaluate.*` (base model and backend: the adapter's metadata.json). Writes reports/metrics.json
(DVC metrics), reports/plots/eval.json (one row per model, for `dvc plots diff`), reports/generations.md
(greedy generations of the first held-out prompts, base and fine-tuned) and reports/timelines/evaluate.json.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from alpaca_qlora.evaluation.report import write_generations_report
from alpaca_qlora.fast_exit import exit_now
from alpaca_qlora.files import read_jsonl, write_json
from alpaca_qlora.modeling import backends
from alpaca_qlora.modeling.adapter import AdapterMetadata
from alpaca_qlora.params import load_section
from alpaca_qlora.timeline import Timeline


def main() -> None:
    timeline = Timeline()
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
    timeline.mark("imports")

    rows = read_jsonl(args.formatted / "eval.jsonl")
    shown = rows[:params["num_generations"]]
    prompts = [row["prompt"] for row in shown]
    generate = dict(max_new_tokens=params["max_new_tokens"], batch_size=params["batch_size"])

    model, tokenizer = backend.load_for_inference(model_params)
    timeline.mark("model_load")
    base = heldout_loss(model, rows, batch_size=params["batch_size"], pad_token_id=tokenizer.pad_token_id)
    base_texts, _ = greedy_generations(model, tokenizer, prompts, **generate)
    timeline.mark("base_model")
    model = backend.attach_adapter(model, args.adapter)
    tuned = heldout_loss(model, rows, batch_size=params["batch_size"], pad_token_id=tokenizer.pad_token_id)
    tuned_texts, speed = greedy_generations(model, tokenizer, prompts, **generate)
    timeline.mark("adapter")

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
    timeline.write("evaluate", args.out / "timelines", last_phase="save")
    print(f"evaluate: held-out loss {base['loss']:.4f} (base) -> {tuned['loss']:.4f} (adapter), "
          f"perplexity {base['perplexity']:.2f} -> {tuned['perplexity']:.2f}; {speed['prompts_per_s']:.2f} "
          f"prompts/s; {timeline.summary()}")


if __name__ == "__main__":
    main()
    exit_now()  # outputs are complete: skip the interpreter's teardown (alpaca_qlora/fast_exit.py)
