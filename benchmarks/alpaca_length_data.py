"""Synthetic data with the length profile of Alpaca after the template: records for the pipeline, rows for the benchmark.

Throughput on Alpaca-format data depends on row lengths, not on the text, so the GPU measurements use data
made here instead of the hub (unreachable from the GPU machine). Lengths follow a log-normal fitted to
Alpaca-format rows with the Mistral tokenizer and our template (../shared/NOTES.md: mean 206, median 194,
p95 317, max 529 tokens, EOS included): median 194, sigma 0.3 (so p95 ~ 318), clipped to [48, 529].

    python -m benchmarks.alpaca_length_data build/gpu-bench/alpaca_length.jsonl   # 51,760 records

Records are built from words that are one Mistral token each, so a record's token count is known without
a tokenizer; `format` then reports the real lengths in data/formatted/stats.json. The response is a
fixed rule of the input (the words of the instruction and input, cycled), so that even a random-weight
model has something to learn and its loss curve moves.
"""
from __future__ import annotations

import argparse
import math
import random
from pathlib import Path

# One Mistral v0.2 token each, with a leading space (checked with the tokenizer shipped by mistral-common).
WORDS = ("the of and to in is was for on are with as by at from that this be or an it not have has but they "
         "which one all were we when there can more other some time what so if about would up out them into do "
         "then like these two may first any new than only also people could well way made many after most over "
         "water long little very even day where much good just great work through back year same while help "
         "three house small world place again line right might old away light under last river stone city "
         "number part name sound air land home round hand high since large turn word page food earth open north "
         "tree school plant state story paper music book sea young color letter field family body power game "
         "green table garden window forest ocean bridge silver thunder").split()
MEDIAN_TOKENS, SIGMA, MIN_TOKENS, MAX_TOKENS = 194, 0.3, 48, 529
# Tokens of the template around the fields (BOS included), measured with the Mistral v0.2 tokenizer.
PROMPT_OVERHEAD = {False: 34, True: 50}  # keyed by "has an input"
ALPACA_CLEANED_RECORDS = 51_760


def row_length(rng: random.Random) -> int:
    """One row length in tokens (prompt + response + EOS), from the Alpaca-like log-normal."""
    return min(MAX_TOKENS, max(MIN_TOKENS, round(rng.lognormvariate(math.log(MEDIAN_TOKENS), SIGMA))))


def make_record(rng: random.Random) -> dict[str, str]:
    """An Alpaca-format record whose templated, tokenized row has about `row_length` tokens."""
    total = row_length(rng)
    has_input = rng.random() < 0.4  # alpaca-cleaned: ~40% of records have an input
    instruction = [rng.choice(WORDS) for _ in range(rng.randint(6, 18))]
    given = [rng.choice(WORDS) for _ in range(rng.randint(4, 30))] if has_input else []
    answer_length = max(3, total - PROMPT_OVERHEAD[has_input] - len(instruction) - len(given) - 1)
    source = instruction + given
    answer = [source[i % len(source)] for i in range(answer_length)]
    return {"instruction": "Repeat: " + " ".join(instruction), "input": " ".join(given), "output": " ".join(answer)}


def make_records(count: int = ALPACA_CLEANED_RECORDS, *, seed: int = 0) -> list[dict[str, str]]:
    rng = random.Random(seed)
    return [make_record(rng) for _ in range(count)]


def make_token_rows(count: int, *, vocab_size: int, seed: int = 0) -> list[dict[str, list[int]]]:
    """Pre-tokenized rows (random ids, Alpaca-like lengths, prompt masked) in the format stage's layout."""
    rng = random.Random(seed)
    rows = []
    for _ in range(count):
        length = row_length(rng)
        prompt = min(length - 2, 34 + rng.randint(6, 60))
        ids = [1] + [rng.randrange(3, vocab_size) for _ in range(length - 2)] + [2]  # BOS ... EOS
        rows.append({"input_ids": ids, "completion_mask": [0] * prompt + [1] * (length - prompt)})
    return rows


def main() -> None:
    from alpaca_qlora.files import write_jsonl

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path)
    parser.add_argument("--count", type=int, default=ALPACA_CLEANED_RECORDS)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(f"{write_jsonl(args.out, make_records(args.count, seed=args.seed))} records -> {args.out}")


if __name__ == "__main__":
    main()
