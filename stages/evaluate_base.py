"""Stage `evaluate_base`: the base model alone on the held-out set, once per model.* / evaluate.* setting.

Reads params `model.*` and `evaluate.*` (never train.*, so `dvc exp run -S train.learning_rate=...` takes
this stage's outputs from DVC's cache) and data/formatted/eval.jsonl. Writes reports/base/: the base
model's held-out loss and perplexity, a greedy answer to every held-out prompt, its ROUGE-L, exact match,
answer length and EOS-stop rate (alpaca_qlora/evaluation/results.py describes the files). The adapter's
stage reads them and writes both side by side.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from alpaca_qlora import progress
from alpaca_qlora.errors import run_main
from alpaca_qlora.fast_exit import exit_now
from alpaca_qlora.evaluation.results import setup, write_base
from alpaca_qlora.files import read_jsonl
from alpaca_qlora.modeling import inference
from alpaca_qlora.params import load_section
from alpaca_qlora.timeline import Timeline


def main() -> None:
    timeline = Timeline()
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--eval", type=Path, default=Path("data/formatted/eval.jsonl"))
    parser.add_argument("--out", type=Path, default=Path("reports/base"))
    args = parser.parse_args()
    model_params, params = load_section("model"), load_section("evaluate")
    path = inference.resolve(params["backend"])
    inference.import_libraries(path)  # Unsloth first on its path
    from alpaca_qlora.evaluation.heldout import describe, judge
    from alpaca_qlora.evaluation.lm_eval import lm_eval_scores

    timeline.mark("imports")
    model, tokenizer = inference.load(path, model_params)
    timeline.mark("model_load")
    result = judge(model, tokenizer, read_jsonl(args.eval), params, static=inference.static_decoding(path))
    result.figures.update(lm_eval_scores(model, tokenizer, params))
    timeline.mark("heldout_and_lm_eval")
    result.timing.update(import_s=round(timeline.seconds("startup") + timeline.seconds("imports"), 3),
                        load_s=round(timeline.seconds("model_load"), 3), total_s=timeline.as_dict()["total_s"])
    write_base(args.out, result, setup(model_params, params, path, args.eval))
    timeline.write("evaluate_base", last_phase="save")
    print(progress.summary(f"evaluate_base: wrote {args.out}/; {model_params['name']} via {path}: "
                           f"{describe(result)}; load {result.timing['load_s']:.1f}s"))


if __name__ == "__main__":
    run_main(main)
    exit_now()  # outputs are complete: skip the interpreter's teardown (alpaca_qlora/fast_exit.py)
