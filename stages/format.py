"""Stage `format`: render every sampled record with the prompt template, tokenize it, append EOS.

Reads params `format.*` and the `model.*` keys that decide tokenization. Writes
data/formatted/{train,eval}.jsonl (text for people, input_ids + completion_mask for training) and
stats.json (token-length statistics, rows over max_seq_length, truncated and dropped ids), and the stage's
timeline in reports/timelines/format.json.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from alpaca_qlora import progress
from alpaca_qlora.data.formatting import TooLongError, format_records
from alpaca_qlora.data.template import PromptTemplate
from alpaca_qlora.errors import run_main
from alpaca_qlora.fast_exit import exit_now
from alpaca_qlora.files import atomic_directory, read_json, read_jsonl, write_json, write_jsonl
from alpaca_qlora.modeling.tokenizer import load_tokenizer
from alpaca_qlora.params import load_section
from alpaca_qlora.timeline import Timeline


def main() -> None:
    timeline = Timeline()
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sampled", type=Path, default=Path("data/sampled"))
    parser.add_argument("--out", type=Path, default=Path("data/formatted"))
    args = parser.parse_args()
    params, model_params = load_section("format"), load_section("model")

    template = PromptTemplate.load(params["template"])  # before the seconds a tokenizer takes to load
    tokenizer = load_tokenizer(model_params)
    timeline.mark("tokenizer_load")
    # The sample's own stats (source, fraction, seed, fingerprints) travel on, so the adapter can name its data.
    stats = {"template": template.as_dict(), "input_free_variant": params["input_free_variant"],
             "too_long": params["too_long"], "eos_token": tokenizer.eos_token,
             "sample": read_json(args.sampled / "stats.json")}
    outputs = {}
    for split in ("train", "eval"):
        records = read_jsonl(args.sampled / f"{split}.jsonl")
        rows, report = format_records(
            records, tokenizer=tokenizer, template=template,
            input_free_variant=params["input_free_variant"], max_seq_length=model_params["max_seq_length"],
            too_long=params["too_long"])
        if not rows:
            raise TooLongError(f"format: every one of the {len(records)} {split} rows is over model.max_seq_length="
                               f"{model_params['max_seq_length']} and was dropped; raise it, or set "
                               "format.too_long to truncate")
        outputs[f"{split}.jsonl"] = rows
        stats[split] = report.summary(model_params["max_seq_length"])
        print(f"format: {split}: {len(rows)} rows, mean {stats[split]['tokens_mean']} tokens, "
              f"{stats[split]['rows_over_max_seq_length']} over max_seq_length "
              f"({len(report.truncated_ids)} truncated, {len(report.dropped_ids)} dropped)")
    timeline.mark("format")
    with atomic_directory(args.out) as staging:  # nothing is written until every row is formatted
        for name, rows in outputs.items():
            write_jsonl(staging / name, rows)
        write_json(staging / "stats.json", stats)
    timeline.write("format", last_phase="save")
    print(progress.summary(f"format: wrote {args.out}/ (train.jsonl, eval.jsonl, stats.json); {timeline.summary()}"))


if __name__ == "__main__":
    run_main(main)
    exit_now()  # outputs are complete: skip the interpreter's teardown (alpaca_qlora/fast_exit.py)
