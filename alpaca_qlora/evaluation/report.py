"""Readable views of reports/generations.jsonl: base vs adapter in one run (reports/generations.md), and one
run's answers against another's (alpaca_qlora/cli/compare_generations.py), each showing where they differ most.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from alpaca_qlora.evaluation.scores import summarize
from alpaca_qlora.files import atomic_write_bytes

LABELS = {"eval_loss": "held-out loss", "eval_perplexity": "held-out perplexity", "rouge_l": "ROUGE-L F1",
          "exact_match": "exact match", "eos_stop_rate": "EOS-stop rate", "mean_answer_tokens": "answer tokens (mean)"}


def write_generations_report(path: Path, metrics: dict[str, Any], records: list[dict[str, Any]], model_name: str,
                             inference_path: str, *, shown: int = 20) -> None:
    lines = ["# Held-out answers: base model vs adapter\n",
             f"Base model `{model_name}`, inference path `{inference_path}`, greedy; all {len(records)} rows of "
             "data/formatted/eval.jsonl. Every answer and score: reports/generations.jsonl.\n",
             figures_table(("base", "adapter", "adapter − base"),
                           [metrics["base"], metrics["adapter"], metrics["adapter_minus_base"]]),
             tally(records, lambda r: r["base"]["rouge_l"], lambda r: r["adapter"]["rouge_l"], "the adapter",
                   "the base"),
             f"## The {min(shown, len(records))} rows where base and adapter differ most\n",
             "Largest |ROUGE-L adapter − base| first.\n",
             *most_different_rows(records, ("base", "adapter"), ("base", "adapter"), shown)]
    atomic_write_bytes(path, "\n".join(lines).encode("utf-8"))


def compare_runs(first: list[dict[str, Any]], second: list[dict[str, Any]], names: tuple[str, str], *,
                 model: str = "adapter", shown: int = 10) -> str:
    """Markdown: `model`'s answers in run `names[0]` against run `names[1]`, record by record."""
    if [row["id"] for row in first] != [row["id"] for row in second]:
        raise ValueError(f"{names[0]} and {names[1]} answered different held-out rows (data.* differs between "
                         "them): record-by-record comparison needs the same held-out set")
    pairs = [{"id": a["id"], "prompt": a["prompt"], "reference": a["reference"], "a": a[model], "b": b[model]}
             for a, b in zip(first, second)]
    lines = [f"# {model} answers: {names[0]} vs {names[1]}\n",
             figures_table(names, [summarize(row["a"] for row in pairs), summarize(row["b"] for row in pairs)]),
             tally(pairs, lambda p: p["a"]["rouge_l"], lambda p: p["b"]["rouge_l"], names[1], names[0]),
             f"## The {min(shown, len(pairs))} rows where they differ most\n",
             *most_different_rows(pairs, ("a", "b"), names, shown)]
    return "\n".join(lines)


def most_different_rows(rows: list[dict[str, Any]], keys: tuple[str, str], names: tuple[str, str],
                        shown: int) -> list[str]:
    """Markdown of the `shown` rows whose two answers (rows[i][keys[0]], rows[i][keys[1]]) differ most in
    ROUGE-L: the prompt, the reference, then the second answer and the first."""
    first, second = keys
    lines = []
    for row in most_different(rows, lambda r: r[first]["rouge_l"], lambda r: r[second]["rouge_l"])[:shown]:
        lines += [f"### Record {row['id']}: ROUGE-L {row[first]['rouge_l']:.3f} ({names[0]}) → "
                  f"{row[second]['rouge_l']:.3f} ({names[1]})\n",
                  "**Prompt**\n", fenced(row["prompt"]), "**Reference**\n", fenced(row["reference"]),
                  f"**{names[1]}** ({answer_end(row[second])})\n", fenced(row[second]["answer"]),
                  f"**{names[0]}** ({answer_end(row[first])})\n", fenced(row[first]["answer"])]
    return lines


def figures_table(columns: tuple[str, ...], values: list[dict[str, float]]) -> str:
    keys = [key for key in LABELS if all(key in column for column in values)]
    rows = ["| figure | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    rows += [f"| {LABELS[key]} | " + " | ".join(f"{column[key]:.4f}" for column in values) + " |" for key in keys]
    return "\n".join(rows) + "\n"


def tally(rows, first, second, second_name: str, first_name: str) -> str:
    """How many rows each side wins on ROUGE-L."""
    better = sum(second(row) > first(row) for row in rows)
    worse = sum(second(row) < first(row) for row in rows)
    return (f"ROUGE-L per row: {second_name} higher in {better}, {first_name} higher in {worse}, "
            f"equal in {len(rows) - better - worse} of {len(rows)}.\n")


def most_different(rows, first, second) -> list:
    return sorted(rows, key=lambda row: (-abs(second(row) - first(row)), row["id"]))


def answer_end(answer: dict[str, Any]) -> str:
    end = "stopped at EOS" if answer["stopped_at_eos"] else "cut at max_new_tokens"
    return f"{answer['answer_tokens']} tokens, {end}, exact match: {'yes' if answer['exact_match'] else 'no'}"


def fenced(text: str) -> str:
    return "````text\n" + text + "\n````\n"
