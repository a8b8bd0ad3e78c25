"""Stage `card`: the adapter's model card with its evaluation figures, reports/model_card.md.

Reads no params: models/adapter/metadata.json (how the adapter was made, what training did) and
reports/metrics.json (what the evaluate stage measured). The train stage already wrote the same card,
without evaluation, into models/adapter/README.md; this stage writes its own output rather than editing
the train stage's, so every DVC output has one writer and `dvc repro` stays consistent.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from alpaca_qlora import progress
from alpaca_qlora.errors import run_main
from alpaca_qlora.files import atomic_write_bytes, read_json
from alpaca_qlora.modeling.adapter import AdapterMetadata
from alpaca_qlora.modeling.model_card import render_card


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--adapter", type=Path, default=Path("models/adapter"))
    parser.add_argument("--metrics", type=Path, default=Path("reports/metrics.json"))
    parser.add_argument("--out", type=Path, default=Path("reports/model_card.md"))
    args = parser.parse_args()
    card = render_card(AdapterMetadata.read(args.adapter), metrics=read_json(args.metrics))
    atomic_write_bytes(args.out, card.encode("utf-8"))
    print(progress.summary(f"card: wrote {args.out} from {args.adapter}/metadata.json and {args.metrics}"))


if __name__ == "__main__":
    run_main(main)
