"""reports/generations.md: the held-out prompts' greedy generations, base and fine-tuned, beside the reference."""
from __future__ import annotations

from pathlib import Path

from alpaca_qlora.files import atomic_write_bytes


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
