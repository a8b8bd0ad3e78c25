"""The whole seed job on a GPU with no network: build the model and the data, run each stage, time it.

    python -m benchmarks.gpu_job prepare --tokenizer-model .gpu/tokenizer.model.v1
    python -m benchmarks.gpu_job run --out $OUT/packed                       # sample ... evaluate, card
    python -m benchmarks.gpu_job run --out $OUT/unpacked --stages train --reuse-data /tmp/gpu-job/packed \
        --set train.packing=false ...
    python -m benchmarks.gpu_job plot $OUT/packed $OUT/unpacked --out benchmarks/loss_curves.png

`prepare` builds `offline:mistral-7b-geometry` (random weights, bf16, on the GPU) through
alpaca_qlora/modeling/offline_models.py, with the Mistral tokenizer file given (mistral-common is not on the GPU image),
then saves it pre-quantized in 4-bit NF4, the form in which the real base model is downloaded.
`run` makes a scratch copy of the stages with profiles/gpu-benchmark.yaml and each --set laid over
params.yaml, runs the stage modules (the commands of dvc.yaml) one by one and records the wall time of
each, model load included, with what the stages themselves wrote (metadata.json, metrics.json, curves).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
MODELS = REPO / "build" / "offline-models"
DATA = REPO / "build" / "gpu-bench" / "alpaca_length.jsonl"
PROFILE = REPO / "profiles" / "gpu-benchmark.yaml"
# Outside any git repository: DVCLive looks for one and fails in a repository without commits (the copy of
# the working tree on the GPU machine is one).
WORKSPACES = Path("/tmp/gpu-job")
STAGE_COMMANDS = {  # as in dvc.yaml
    "sample": ["-m", "stages.sample", "--out", "data/sampled"],
    "format": ["-m", "stages.format", "--sampled", "data/sampled", "--out", "data/formatted"],
    "train": ["-m", "stages.train", "--formatted", "data/formatted", "--out", "models/adapter"],
    "evaluate": ["-m", "stages.evaluate", "--formatted", "data/formatted", "--adapter", "models/adapter",
                 "--out", "reports"],
    "card": ["-m", "stages.card", "--adapter", "models/adapter", "--metrics", "reports/metrics.json",
             "--out", "reports/model_card.md"],
}


def prepare(tokenizer_model: Path | None, presets: list[str]) -> dict[str, float]:
    import torch

    from alpaca_qlora.modeling import offline_models as offline
    from benchmarks.alpaca_length_data import make_records

    timings = {}
    if tokenizer_model is not None:
        offline.mistral_tokenizer_file = lambda: tokenizer_model.resolve()
    for preset in presets:
        started = time.perf_counter()
        path = offline.build_offline_model(f"offline:{preset}", seed=0, root=MODELS)
        timings[f"build_{preset}_s"] = round(time.perf_counter() - started, 1)
        torch.cuda.empty_cache()
        if preset != "tiny-mistral":
            started = time.perf_counter()
            quantize(path, path.with_name(path.name + "-bnb4"))
            timings[f"quantize_{preset}_s"] = round(time.perf_counter() - started, 1)
    if not DATA.is_file():
        from alpaca_qlora.files import write_jsonl

        started = time.perf_counter()
        write_jsonl(DATA, make_records(seed=0))
        timings["data_s"] = round(time.perf_counter() - started, 1)
    print(json.dumps(timings))
    return timings


def quantize(source: Path, target: Path) -> None:
    """Save `source` in 4-bit NF4 (double quantization, bf16 compute), as Unsloth's -bnb-4bit checkpoints are."""
    if (target / "config.json").is_file():
        return
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

    config = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                bnb_4bit_compute_dtype=torch.bfloat16)
    model = AutoModelForCausalLM.from_pretrained(str(source), quantization_config=config, dtype=torch.bfloat16,
                                                 device_map={"": 0})
    staging = target.with_name("." + target.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    model.save_pretrained(str(staging), safe_serialization=True)
    AutoTokenizer.from_pretrained(str(source)).save_pretrained(str(staging))
    shutil.copyfile(source / "tokenizer.model", staging / "tokenizer.model")
    staging.rename(target)
    del model
    torch.cuda.empty_cache()


def make_workspace(workspace: Path, overrides: list[str]) -> None:
    """A scratch copy of the code with the GPU profile and the overrides laid over params.yaml."""
    from alpaca_qlora.cli.offline_workspace import overlay_params, parse_override
    from alpaca_qlora.params import read_yaml

    shutil.rmtree(workspace, ignore_errors=True)
    workspace.mkdir(parents=True)
    for name in ("alpaca_qlora", "stages", "templates", "benchmarks"):
        shutil.copytree(REPO / name, workspace / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("params.yaml", "dvc.yaml"):
        shutil.copy2(REPO / name, workspace / name)
    (workspace / "build").mkdir()
    for name in ("offline-models", "gpu-bench"):
        (workspace / "build" / name).symlink_to(REPO / "build" / name)
    profile = [(s, k, v) for s, values in read_yaml(PROFILE).items() for k, v in values.items()]
    overlay_params(workspace / "params.yaml", profile + [parse_override(text) for text in overrides])


def run(out: Path, workspace: Path, stages: list[str], overrides: list[str], reuse_data: Path | None) -> dict:
    make_workspace(workspace, overrides)
    if reuse_data is not None:
        shutil.copytree(reuse_data / "data", workspace / "data")
    out.mkdir(parents=True, exist_ok=True)
    summary = {"stages": {}, "overrides": overrides}
    environment = {**os.environ, "PYTHONPATH": f"{workspace}:{os.environ.get('PYTHONPATH', '')}"}
    total = time.perf_counter()
    for stage in stages:
        started = time.perf_counter()
        log = out / f"{stage}.log"
        with open(log, "w", encoding="utf-8") as handle:
            done = subprocess.run([sys.executable, *STAGE_COMMANDS[stage]], cwd=workspace, env=environment,
                                  stdout=handle, stderr=subprocess.STDOUT)
        summary["stages"][stage] = {"wall_s": round(time.perf_counter() - started, 1), "rc": done.returncode,
                                    "last_line": last_line(log)}
        print(f"{stage}: {summary['stages'][stage]}", flush=True)
        if done.returncode:
            print(log.read_text(encoding="utf-8")[-6000:], flush=True)
            break
    summary["total_wall_s"] = round(time.perf_counter() - total, 1)
    for source, name in (("models/adapter/metadata.json", "metadata.json"), ("reports/metrics.json", "metrics.json"),
                         ("data/formatted/stats.json", "format_stats.json"),
                         ("reports/train/plots/metrics/loss.tsv", "loss.tsv"),
                         ("reports/train/plots/metrics/learning_rate.tsv", "learning_rate.tsv"),
                         ("reports/generations.md", "generations.md"), ("reports/model_card.md", "model_card.md")):
        if (workspace / source).is_file():
            shutil.copyfile(workspace / source, out / name)
    (out / "summary.json").write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    return summary


def last_line(path: Path) -> str:
    lines = [line for line in path.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip()]
    return lines[-1][-400:] if lines else ""


def read_loss(path: Path) -> tuple[list[int], list[float]]:
    rows = [line.split("\t") for line in path.read_text(encoding="utf-8").splitlines()]
    header, body = rows[0], rows[1:]
    step, loss = header.index("step"), header.index("loss")
    return [int(r[step]) for r in body], [float(r[loss]) for r in body]


def plot(runs: list[Path], labels: list[str], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6.4, 3.6), dpi=100)
    for run_dir, label in zip(runs, labels):
        steps, losses = read_loss(run_dir / "loss.tsv")
        axis.plot(steps, losses, marker=".", linewidth=1, label=label)
    axis.set_xlabel("optimizer step")
    axis.set_ylabel("training loss")
    axis.grid(alpha=0.3)
    axis.legend()
    figure.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out)
    print(f"plot -> {out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser("prepare")
    p.add_argument("--tokenizer-model", type=Path, default=None)
    p.add_argument("--presets", default="mistral-7b-geometry,tiny-mistral")
    r = commands.add_parser("run")
    r.add_argument("--out", type=Path, required=True)
    r.add_argument("--workspace", type=Path, default=None)
    r.add_argument("--stages", default="sample,format,train,evaluate,card")
    r.add_argument("--set", dest="overrides", action="append", default=[])
    r.add_argument("--reuse-data", type=Path, default=None, help="a workspace whose data/ to reuse")
    g = commands.add_parser("plot")
    g.add_argument("runs", type=Path, nargs="+")
    g.add_argument("--labels", default="packed,unpacked")
    g.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    if args.command == "prepare":
        prepare(args.tokenizer_model, [p for p in args.presets.split(",") if p])
    elif args.command == "run":
        workspace = args.workspace or WORKSPACES / args.out.name
        run(args.out, workspace, [s for s in args.stages.split(",") if s], args.overrides, args.reuse_data)
    else:
        plot(args.runs, args.labels.split(","), args.out)


if __name__ == "__main__":
    main()
