"""Stage `evaluate`: the adapter on the held-out set, beside the base model's figures from reports/base/.

Reads params `evaluate.*`; the base model is the one the adapter's metadata.json records, and the
inference path is evaluate.backend's (alpaca_qlora/modeling/inference.py), the same as the base stage's;
reports/base/ is refused unless it was computed with exactly that base model, path and held-out set.
Writes reports/metrics.json (base, adapter and adapter_minus_base: held-out loss, perplexity, ROUGE-L,
exact match, answer length, EOS-stop rate; `dvc exp show` and `dvc metrics diff` compare runs with it),
reports/plots/eval.json, reports/generations.jsonl (every held-out row, both answers, their scores),
reports/generations.md (where base and adapter differ most) and reports/timing.json.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from alpaca_qlora import progress
from alpaca_qlora.errors import run_main
from alpaca_qlora.fast_exit import exit_now
from alpaca_qlora.evaluation import report, results, tracking
from alpaca_qlora.evaluation.scores import reference_text
from alpaca_qlora.files import read_jsonl
from alpaca_qlora.modeling import inference
from alpaca_qlora.modeling.adapter import AdapterMetadata
from alpaca_qlora.params import load_section
from alpaca_qlora.timeline import Timeline


def main() -> None:
    timeline = Timeline()
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--eval", type=Path, default=Path("data/formatted/eval.jsonl"))
    parser.add_argument("--adapter", type=Path, default=Path("models/adapter"))
    parser.add_argument("--base", type=Path, default=Path("reports/base"))
    parser.add_argument("--out", type=Path, default=Path("reports"))
    args = parser.parse_args()
    params, model_params = load_section("evaluate"), AdapterMetadata.read(args.adapter).model_params
    path = inference.resolve(params["backend"])
    base = results.read_base(args.base, results.setup(model_params, params, path, args.eval))
    inference.import_libraries(path)  # Unsloth first on its path
    from alpaca_qlora.evaluation.heldout import describe, judge
    from alpaca_qlora.evaluation.lm_eval import lm_eval_scores

    timeline.mark("imports")
    model, tokenizer = inference.load(path, model_params, args.adapter)
    timeline.mark("model_load")
    rows = read_jsonl(args.eval)
    adapter = judge(model, tokenizer, rows, params, static=inference.static_decoding(path))
    adapter.figures.update(lm_eval_scores(model, tokenizer, params))
    timeline.mark("heldout_and_lm_eval")
    adapter.timing.update(import_s=round(timeline.seconds("startup") + timeline.seconds("imports"), 3),
                        load_s=round(timeline.seconds("model_load"), 3), total_s=timeline.as_dict()["total_s"])
    records = results.generation_records(rows, [reference_text(row, tokenizer.eos_token) for row in rows],
                                         base, adapter)
    metrics = results.write_adapter_reports(args.out, base, adapter, records)
    report.write_generations_report(args.out / "generations.md", metrics, records, model_params["name"], path)
    tracking.log_generations(metrics, records, load_section("runtime"))
    print(f"evaluate: base {describe(base)}")
    timeline.write("evaluate", last_phase="save")
    print(progress.summary(f"evaluate: wrote {args.out}/ (metrics, generations, report); adapter via {path}: "
                           f"{describe(adapter)}; load {adapter.timing['load_s']:.1f}s"))


if __name__ == "__main__":
    run_main(main)
    exit_now()  # outputs are complete: skip the interpreter's teardown (alpaca_qlora/fast_exit.py)
