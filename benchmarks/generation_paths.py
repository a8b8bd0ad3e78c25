"""Which inference path should answer the held-out set: speed, load time and faithfulness, measured.

    python -m benchmarks.generation_paths --workspace /tmp/gpu-job/packed --out $OUT/generation_paths.json
    python -m benchmarks.generation_paths --workspace build/smoke --out build/generation_paths.json   # CPU dry run

The workspace is one where the pipeline has run up to train (data/formatted/eval.jsonl, models/adapter,
params.yaml): `benchmarks.gpu_job run` on the GPU, `make smoke` or a test workspace on a CPU. For each
path of alpaca_qlora/modeling/inference.py (`--paths`, default unsloth,hf,merged; `merged` decodes with
evaluation/static_decoding.py, its CUDA-graph static-cache loop, and `merged-eager` is the same model
through `model.generate`, for comparison), in a fresh process so that imports and memory start clean:
- import and model load seconds (base + adapter);
- aggregate new tokens/s answering every held-out prompt through the stage's own generate_answers
  (length-sorted, left padding, evaluate.generation_batch_size, greedy, per-row EOS; a warm-up batch first),
  the same at each batch size of `--sweep`, and batch-1 single-stream tokens/s on the first `--single-stream`
  prompts (`--single-stream-tokens` each);
- greedy agreement with the reference path (the first of --paths, unsloth by default: the 4-bit model
  training ran): the share of identical answers (token ids) and, where they differ, the first differing
  token's position.
With `--stages`, the two evaluate stages themselves then run once per listed path (evaluate.backend set in
the workspace's params.yaml, restored after), timed from process start to exit, with their own split
(reports/timing.json: import, load, loss, generation). Everything is printed and written to --out as JSON.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def measure_path(path: str, max_new_tokens: int | None, batch_size: int | None, single_stream: int,
                 single_stream_tokens: int, sweep: list[int]) -> dict:
    """In this process (cwd = the workspace): load base + adapter through `path` and answer every held-out prompt."""
    started = time.perf_counter()
    from alpaca_qlora.files import read_jsonl
    from alpaca_qlora.modeling import inference
    from alpaca_qlora.modeling.adapter import AdapterMetadata
    from alpaca_qlora.params import load_section

    params = load_section("evaluate")
    max_new_tokens = max_new_tokens or params["max_new_tokens"]
    batch_size = batch_size or params["generation_batch_size"]
    loader = "merged" if path == "merged-eager" else path
    inference.import_libraries(loader)
    import torch

    from alpaca_qlora.evaluation.generation import generate_answers

    imported = time.perf_counter()
    model, tokenizer = inference.load(loader, AdapterMetadata.read(Path("models/adapter")).model_params,
                                      Path("models/adapter"))
    loaded = time.perf_counter()
    prompts = [row["prompt"] for row in read_jsonl(Path("data/formatted/eval.jsonl"))]
    generate = dict(max_new_tokens=max_new_tokens, static=inference.static_decoding(path))
    generate_answers(model, tokenizer, prompts[:batch_size], batch_size=batch_size, **dict(generate, max_new_tokens=8))
    synchronize(torch)
    answers, speed = generate_answers(model, tokenizer, prompts, batch_size=batch_size, **generate)
    synchronize(torch)
    swept = {size: generate_answers(model, tokenizer, prompts, batch_size=size, **generate)[1].as_dict()
             for size in sweep}
    singles = [generate_answers(model, tokenizer, [prompt], batch_size=1,
                                **dict(generate, max_new_tokens=single_stream_tokens))[1]
               for prompt in prompts[:single_stream]]
    single_tokens, single_seconds = sum(s.generated_tokens for s in singles), sum(s.seconds for s in singles)
    return {"path": path, "import_s": round(imported - started, 2), "load_s": round(loaded - imported, 2),
            "prompts": len(prompts), "max_new_tokens": max_new_tokens, "batch_size": batch_size,
            "batched": speed.as_dict(), "batch_sweep": swept,
            "single_stream": {"prompts": len(singles), "max_new_tokens": single_stream_tokens,
                              "generated_tokens": single_tokens,
                              "new_tokens_per_s": round(single_tokens / single_seconds, 1) if singles else None},
            "eos_stop_rate": round(sum(a.stopped_at_eos for a in answers) / len(answers), 4),
            "answers": [list(answer.token_ids) for answer in answers],
            "peak_gpu_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if torch.cuda.is_available() else None}


def synchronize(torch) -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def agreement(reference: list[list[int]], other: list[list[int]]) -> dict:
    """Share of identical answers, and the first differing token's position in those that differ."""
    firsts = []
    for ref, ans in zip(reference, other):
        if ref != ans:
            firsts.append(next((i for i, (a, b) in enumerate(zip(ref, ans)) if a != b), min(len(ref), len(ans))))
    return {"identical_share": round(1 - len(firsts) / len(reference), 4), "differing": len(firsts),
            "first_difference_at": sorted(firsts),
            "mean_first_difference_at": round(sum(firsts) / len(firsts), 1) if firsts else None}


def run_child(workspace: Path, arguments: list[str], log: Path) -> tuple[int, float]:
    path = os.pathsep.join([str(workspace), str(REPO), os.environ.get("PYTHONPATH", "")])
    environment = {**os.environ, "PYTHONPATH": path}
    started = time.perf_counter()
    with open(log, "w", encoding="utf-8") as handle:
        done = subprocess.run([sys.executable, *arguments], cwd=workspace, env=environment, stdout=handle,
                              stderr=subprocess.STDOUT)
    return done.returncode, round(time.perf_counter() - started, 2)


def time_stages(workspace: Path, path: str, logs: Path) -> dict:
    """Both evaluate stages as dvc.yaml runs them, with evaluate.backend = `path`; params.yaml restored after."""
    from alpaca_qlora.cli.offline_workspace import overlay_params

    params_file = workspace / "params.yaml"
    original = params_file.read_text(encoding="utf-8")
    found = {}
    try:
        overlay_params(params_file, [("evaluate", "backend", path)])
        for stage, command in (("evaluate_base", ["-m", "stages.evaluate_base", "--out", "reports/base"]),
                               ("evaluate", ["-m", "stages.evaluate", "--out", "reports"])):
            rc, wall = run_child(workspace, command, logs / f"stage-{stage}-{path}.log")
            found[stage] = {"rc": rc, "wall_s": wall}
            if rc:
                return found
        timing = json.loads((workspace / "reports/timing.json").read_text())
        for stage, model in (("evaluate_base", "base"), ("evaluate", "adapter")):
            found[stage]["split"] = timing[model]
        found["metrics"] = json.loads((workspace / "reports/metrics.json").read_text())
    finally:
        params_file.write_text(original, encoding="utf-8")
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workspace", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--paths", default="unsloth,hf,merged", help="the first is the reference for agreement")
    parser.add_argument("--stages", default="", help="paths to time the two evaluate stages with, e.g. unsloth,merged")
    parser.add_argument("--max-new-tokens", type=int, default=None, help="default: evaluate.max_new_tokens")
    parser.add_argument("--batch-size", type=int, default=None, help="default: evaluate.generation_batch_size")
    parser.add_argument("--single-stream", type=int, default=2, help="prompts answered one at a time")
    parser.add_argument("--single-stream-tokens", type=int, default=128, help="their max_new_tokens")
    parser.add_argument("--sweep", default="", help="more generation batch sizes to time, e.g. 32,100,128")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: measure this path in this process
    args = parser.parse_args()
    if args.one:
        args.out.write_text(json.dumps(measure_path(args.one, args.max_new_tokens, args.batch_size, args.single_stream,
                                                    args.single_stream_tokens,
                                                    [int(size) for size in args.sweep.split(",") if size])))
        return

    workspace, logs = args.workspace.resolve(), args.out.resolve().parent
    logs.mkdir(parents=True, exist_ok=True)
    results: dict = {"workspace": str(workspace), "paths": {}, "stages": {}}
    answers = {}
    for path in [p for p in args.paths.split(",") if p]:
        part = logs / f"generation-{path}.json"
        extra = [f"--max-new-tokens={args.max_new_tokens}"] * bool(args.max_new_tokens) + [
            f"--batch-size={args.batch_size}"] * bool(args.batch_size)
        # This file, not the workspace's copy of it; the package it measures is the workspace's (PYTHONPATH).
        rc, wall = run_child(workspace, [str(Path(__file__).resolve()), "--workspace", str(workspace),
                                         "--out", str(part), "--one", path, "--single-stream", str(args.single_stream),
                                         "--single-stream-tokens", str(args.single_stream_tokens),
                                         "--sweep", args.sweep, *extra], logs / f"generation-{path}.log")
        if rc:
            results["paths"][path] = {"rc": rc, "wall_s": wall, "log": str(logs / f"generation-{path}.log")}
            print(f"{path}: failed (rc {rc}); see {logs / f'generation-{path}.log'}", flush=True)
            continue
        measured = json.loads(part.read_text())
        answers[path] = measured.pop("answers")
        results["paths"][path] = {**measured, "process_wall_s": wall}
        reference = next(iter(answers))
        results["paths"][path]["agreement_with_" + reference] = agreement(answers[reference], answers[path])
        swept = {size: found["new_tokens_per_s"] for size, found in measured["batch_sweep"].items()}
        same = results["paths"][path]["agreement_with_" + reference]["identical_share"]
        print(f"{path}: import {measured['import_s']}s, load {measured['load_s']}s; {measured['prompts']} prompts "
              f"at batch {measured['batch_size']}: {measured['batched']['new_tokens_per_s']} new tokens/s "
              f"({measured['batched']['generation_s']}s); other batch sizes: {swept}; batch 1: "
              f"{measured['single_stream']['new_tokens_per_s']} tokens/s; identical to {reference}: {same}", flush=True)
    for path in [p for p in args.stages.split(",") if p]:
        results["stages"][path] = time_stages(workspace, path, logs)
        print(f"stages via {path}: " + json.dumps({stage: {k: v for k, v in found.items() if k != 'split'}
                                                  for stage, found in results["stages"][path].items()
                                                  if stage != "metrics"}), flush=True)
    args.out.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
