"""Data-parallel scaling of the train stage: its wall time and real tokens/s with 1 and with N processes.

    python -m benchmarks.gpu_job prepare --tokenizer-model .gpu/tokenizer.model.v1 --presets mistral-7b-geometry
    python -m benchmarks.ddp_scaling --out build/gpu-results/ddp/ddp_scaling.json --backends unsloth --steps 0
    (or: bash benchmarks/gpu_session.sh ddp, which does both)

Each run is the train stage itself, `python -m stages.train` exactly as dvc.yaml runs it (through
benchmarks.gpu_job, in a scratch copy with profiles/gpu-benchmark.yaml: Mistral-7B geometry with random
weights in 4-bit, 5,176 Alpaca-length rows, packing), with train.num_processes = 1 and then N, so the
N-process runs go through the stage's own torchrun relaunch. --steps 0 trains the whole epoch (the seed
job a user runs); --steps K stops after K optimizer steps. A step trains train.rows_per_step rows whatever
the number of processes, split over them (the same optimizer steps, each process computing 1/N of each):
efficiency = tokens/s(N) / (N x tokens/s(1)).

Figures per run:
- `wall_s`: the stage's wall time, process start to exit, launcher and start-up of every rank included;
  `wall_ratio` (N over 1) is what a user waits for. The stage's timeline (reports/timelines/train.json of
  rank 0, alpaca_qlora/timeline.py) says where the seconds went.
- `steady_tokens_per_s`: from the stage's batch log (ALPACA_QLORA_BATCH_LOG, alpaca_qlora/training/distributed.py):
  the real tokens of each rank's micro-batches after the first --warmup-steps optimizer steps, over the
  wall time between their collation, summed over the ranks. Model load, compilation and warm-up are out.
- `stage_tokens_per_s`: the stage's own metadata figure, all real tokens over `train_runtime` (warm-up in).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path

from alpaca_qlora.training.distributed import BATCH_LOG_ENV
from benchmarks import gpu_job


def steady_tokens_per_s(batch_log: Path, skip_batches: int) -> dict:
    """Real tokens/s after `skip_batches` micro-batches, each rank over its own window, summed over ranks."""
    total, ranks = 0.0, []
    for path in sorted(batch_log.glob("rank*.jsonl")):
        lines = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
        window = lines[skip_batches:]
        if len(window) < 2:
            raise ValueError(f"{path}: {len(lines)} micro-batches, too few after skipping {skip_batches}; "
                             "raise --steps or lower --warmup-steps")
        # A batch is collated just before it is computed: the tokens of all but the last batch of the window
        # were trained between the first and the last collation.
        seconds = window[-1]["t"] - window[0]["t"]
        tokens = sum(line["tokens"] for line in window[:-1])
        ranks.append({"rank": path.stem, "micro_batches": len(window) - 1, "tokens": tokens,
                      "seconds": round(seconds, 3), "tokens_per_s": round(tokens / seconds, 1)})
        total += tokens / seconds
    return {"tokens_per_s": round(total, 1), "ranks": ranks}


def measure(backend: str, processes: int, args, data_workspace: Path) -> dict:
    name = f"{backend}-{processes}p"
    out, batch_log = args.results / name, (args.results / name / "batches").resolve()
    shutil.rmtree(batch_log, ignore_errors=True)
    overrides = [*args.overrides, f"train.backend={backend}", f"train.num_processes={processes}",
                 f"train.max_steps={args.steps or -1}"]
    os.environ[BATCH_LOG_ENV] = str(batch_log)
    started = time.perf_counter()
    summary = gpu_job.run(out, gpu_job.WORKSPACES / f"ddp-{name}", ["train"], overrides, data_workspace)
    wall = time.perf_counter() - started
    result = {"backend": backend, "processes": processes, "overrides": overrides, "wall_s": round(wall, 1),
              "rc": summary["stages"]["train"]["rc"], "timeline": summary["stages"]["train"].get("timeline"),
              "outside_timeline_s": summary["stages"]["train"].get("outside_timeline_s")}
    if result["rc"] != 0:
        return result
    meta = json.loads((out / "metadata.json").read_text(encoding="utf-8"))
    accumulation = meta["effective"]["gradient_accumulation_steps"]
    steady = steady_tokens_per_s(batch_log, args.warmup_steps * accumulation)
    result.update({
        "steady_tokens_per_s": steady["tokens_per_s"], "steady_ranks": steady["ranks"],
        "stage_tokens_per_s": meta["results"]["real_tokens_per_s"], "real_tokens": meta["results"]["real_tokens"],
        "train_runtime_s": meta["results"]["train_runtime_s"], "model_load_s": meta["results"]["model_load_s"],
        "global_steps": meta["effective"]["global_steps"],
        "effective_batch_size": meta["effective"]["effective_batch_size"],
        "batch_plan": {key: meta["effective"].get(key) for key in (
            "per_device_batch_size", "gradient_accumulation_steps", "gradient_checkpointing", "predicted_peak_gib")},
        "replica_divergence": meta["effective"]["replica_divergence"],
        "rank0_peak_memory": {k: v for k, v in meta["results"].items() if k.startswith("peak_")},
        "train_loss": meta["results"]["train_loss"], "device": meta["effective"]["device"],
        "libraries": meta["libraries"],
    })
    return result


def scaling(runs: list[dict], processes: int) -> dict:
    """Per backend: speed-up and efficiency of `processes` over 1, for both figures."""
    table = {}
    for backend in dict.fromkeys(run["backend"] for run in runs):
        by_count = {run["processes"]: run for run in runs if run["backend"] == backend and run["rc"] == 0}
        if 1 not in by_count or processes not in by_count:
            table[backend] = "incomplete: a run failed or was not reached"
            continue
        one, many = by_count[1], by_count[processes]
        table[backend] = {
            f"speedup_{key}": round(many[f"{key}_tokens_per_s"] / one[f"{key}_tokens_per_s"], 3)
            for key in ("steady", "stage")}
        table[backend]["wall_ratio"] = round(many["wall_s"] / one["wall_s"], 3)
        table[backend].update({f"efficiency_{key}": round(table[backend][f"speedup_{key}"] / processes, 3)
                               for key in ("steady", "stage")})
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="the JSON summary")
    parser.add_argument("--backends", default="unsloth,hf")
    parser.add_argument("--processes", type=int, default=2, help="compared with 1 process")
    parser.add_argument("--steps", default="unsloth=0,hf=6",
                        help="optimizer steps per run, per backend (backend=steps,...); 0: the whole epoch")
    parser.add_argument("--warmup-steps", type=int, default=2, help="optimizer steps left out of the steady figure")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")
    args = parser.parse_args()
    steps = {b: args.steps for b in args.backends.split(",")} if "=" not in args.steps else \
        dict(item.split("=") for item in args.steps.split(","))
    args.results = args.out.parent
    data = gpu_job.WORKSPACES / "ddp-data"
    summary = gpu_job.run(args.results / "data", data, ["sample", "format"], args.overrides, None)
    if any(stage["rc"] for stage in summary["stages"].values()):
        raise SystemExit("ddp_scaling: sample/format failed; see the log above")
    runs = []
    for backend in [b for b in args.backends.split(",") if b]:
        args.steps = int(steps[backend])
        for processes in (1, args.processes):
            runs.append(measure(backend, processes, args, data))
            print("ddp_scaling:", json.dumps({k: v for k, v in runs[-1].items() if k not in ("libraries",)}),
                  flush=True)
    report = {"runs": runs, "scaling": scaling(runs, args.processes), "warmup_steps": args.warmup_steps,
              "scaling_kind": "train.rows_per_step rows a step, split over the N processes"}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    print("ddp_scaling: scaling", json.dumps(report["scaling"]), f"-> {args.out}", flush=True)
    for run in runs:
        if run.get("timeline"):
            phases = ", ".join(f"{name} {seconds:.1f}" for name, seconds in run["timeline"]["phases"])
            print(f"ddp_scaling: {run['backend']} x{run['processes']}: wall {run['wall_s']} s = {phases}; "
                  f"outside the timeline {run['outside_timeline_s']} s", flush=True)


if __name__ == "__main__":
    main()
