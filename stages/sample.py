"""Stage `sample`: a seeded random fraction of the source for training, plus a disjoint held-out set.

Reads params `data.*` only. Writes data/sampled/{train,eval}.jsonl and stats.json; the same params and
the same source give byte-identical files on any machine. Its timeline: reports/timelines/sample.json.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from alpaca_qlora import progress
from alpaca_qlora.data.records import load_records, validate_records
from alpaca_qlora.data.sampling import find_duplicates, fingerprint, sample_indices
from alpaca_qlora.errors import run_main
from alpaca_qlora.fast_exit import exit_now
from alpaca_qlora.files import atomic_directory, write_json, write_jsonl
from alpaca_qlora.params import load_section
from alpaca_qlora.timeline import Timeline


def main() -> None:
    timeline = Timeline()
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("data/sampled"))
    args = parser.parse_args()
    params = load_section("data")

    rows, where = load_records(params["source"], split=params["split"])
    records = validate_records(rows, where)
    timeline.mark("load")
    duplicates = find_duplicates(records, where)
    if duplicates:
        shown = "; ".join(f"{repeat} repeats {first}" for repeat, first in duplicates[:5])
        print(f"sample: warning: {len(duplicates)} duplicate record(s) in {params['source']}, kept and counted "
              f"in stats.json ({shown}{'; ...' if len(duplicates) > 5 else ''})")
    train_ids, eval_ids = sample_indices(len(records), fraction=params["fraction"],
                                         eval_size=params["eval_size"], seed=params["seed"])
    # "id" is the record's position in the source: it traces any row back to where it came from.
    train = [{"id": i, **records[i]} for i in train_ids]
    held_out = [{"id": i, **records[i]} for i in eval_ids]

    timeline.mark("sample")
    with atomic_directory(args.out) as staging:  # all three files appear together, or none
        write_outputs(staging, params, records, train, held_out, len(duplicates))
    timeline.write("sample", last_phase="save")
    print(progress.summary(f"sample: wrote {args.out}/: {len(train)} train + {len(held_out)} eval records of "
                           f"{len(records)} from {params['source']}"))


def write_outputs(out: Path, params, records, train, held_out, duplicate_records: int) -> None:
    write_jsonl(out / "train.jsonl", train)
    write_jsonl(out / "eval.jsonl", held_out)
    write_json(out / "stats.json", {
        "source": params["source"], "split": params["split"], "fraction": params["fraction"], "seed": params["seed"],
        "source_records": len(records),
        "source_fingerprint": fingerprint(records), "duplicate_records": duplicate_records,
        "train_records": len(train), "eval_records": len(held_out),
        "train_with_input": sum(bool(r["input"].strip()) for r in train),
        "train_fingerprint": fingerprint(train), "eval_fingerprint": fingerprint(held_out),
    })


if __name__ == "__main__":
    run_main(main)
    exit_now()  # outputs are complete: skip the interpreter's teardown (alpaca_qlora/fast_exit.py)
