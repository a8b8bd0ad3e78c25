"""Stage `format`: render every sampled record with the prompt template, tokenize it, append EOS.

Reads params `format.*` and the `model.*` keys that decide tokenization. Writes
data/formatted/{train,eval}.jsonl (text for people, input_ids + completion_mask for training) and
stats.json (token-length statistics, rows over max_seq_length, truncated and dropped ids).
"""
from __future__ import annotations

import argparse
from pathlib import Path

from alpaca_qlora.data.formatting import format_records
from alpaca_qlora.data.template import PromptTemplate
from alpaca_qlora.files import atomic_directory, read_json, read_jsonl, write_json, write_jsonl
from alpaca_qlora.modeling.tokenizer import load_tokenizer
from alpaca_qlora.params import load_section


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sampled", type=Path, default=Path("data/sampled"))
    parser.add_argument("--out", type=Path, default=Path("data/formatted"))
    args = parser.parse_args()
    params, model_params = load_section("format"), load_section("model")

    tokenizer = load_tokenizer(model_params)
    template = PromptTemplate.load(params["template"])
    # The sample's own stats (source, fraction, seed, fingerprints) travel on, so the adapter can name its data.
    stats = {"template": template.as_dict(), "input_free_variant": params["input_free_variant"],
             "too_long": params["too_long"], "eos_token": tokenizer.eos_token,
             "sample": read_json(args.sampled / "stats.json")}
    outputs = {}
    for split in ("train", "eval"):
        rows, report = format_records(
            read_jsonl(args.sampled / f"{split}.jsonl"), tokenizer=tokenizer, template=template,
            input_free_variant=params["input_free_variant"], max_seq_length=model_params["max_seq_length"],
            too_long=params["too_long"])
        if not rows:
            raise ValueError(f"format: every {split} row was dropped as too long; raise model.max_seq_length")
        outputs[f"{split}.jsonl"] = rows
        stats[split] = report.summary(model_params["max_seq_length"])
        print(f"format: {split}: {len(rows)} rows, mean {stats[split]['tokens_mean']} tokens, "
              f"{stats[split]['rows_over_max_seq_length']} over max_seq_length "
              f"({len(report.truncated_ids)} truncated, {len(report.dropped_ids)} dropped)")
    with atomic_directory(args.out) as staging:  # nothing is written until every row is formatted
        for name, rows in outputs.items():
            write_jsonl(staging / name, rows)
        write_json(staging / "stats.json", stats)


if __name__ == "__main__":
    main()
