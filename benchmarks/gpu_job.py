"""The whole seed job on a GPU with no network: build the model and the data, run each stage, time it.

    python -m benchmarks.gpu_job prepare --tokenizer-model .gpu/tokenizer.model.v1
    python -m benchmarks.gpu_job job --out $OUT/job                 # cold job, then an experiment; timelines
    python -m benchmarks.gpu_job job --out $OUT/warm --phases warm  # the job again, compile caches warm
    python -m benchmarks.gpu_job run --out $OUT/packed              # every stage once, as before
    python -m benchmarks.gpu_job run --out $OUT/unpacked --stages train --reuse-data /tmp/gpu-job/packed \
        --set train.packing=false ...
    python -m benchmarks.gpu_job plot $OUT/packed $OUT/unpacked --out benchmarks/loss_curves.png

`prepare` builds `offline:mistral-7b-geometry` (random weights, bf16, on the GPU) through
alpaca_qlora/modeling/offline_models.py, with the Mistral tokenizer file given (mistral-common is not on the GPU image),
then saves it pre-quantized in 4-bit NF4, the form in which the real base model is downloaded.
`run` makes a scratch copy of the stages with profiles/gpu-benchmark.yaml and each --set laid over
params.yaml, runs the stages' commands as dvc.yaml writes them, one by one, and records the wall time of
each (process start to exit), with what the stages themselves wrote (metadata.json, metrics.json, curves,
reports/timelines/). The stage list and commands are read from dvc.yaml, so new stages are timed too.
`job` is what a user waits for: `cold`, every stage of dvc.yaml in order in a fresh workspace (empty
compile caches under its build/); `experiment`, then `train.learning_rate` changed in the same workspace and
the stages DVC would rerun for it (those that declare a train param, and everything downstream of them);
`warm`, the whole job again in a fresh workspace that starts with the compile caches of the cold run. It
prints each stage's wall time and timeline, and what the timelines do not cover (interpreter exit).
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


def pipeline(dvc_yaml: Path = REPO / "dvc.yaml") -> dict[str, dict]:
    """dvc.yaml's stages in an order that runs each after the stages whose outputs it depends on."""
    from alpaca_qlora.params import read_yaml

    stages = read_yaml(dvc_yaml)["stages"]
    ordered: dict[str, dict] = {}
    while len(ordered) < len(stages):
        ready = [name for name, stage in stages.items() if name not in ordered and not any(
            _produces(other, dep) for dep in stage.get("deps", []) for name2, other in stages.items()
            if name2 != name and name2 not in ordered)]
        if not ready:
            raise ValueError(f"{dvc_yaml}: the stages' deps and outs form a cycle")
        ordered.update((name, stages[name]) for name in ready)
    return ordered


def _produces(stage: dict, path: str) -> bool:
    return any(path == out or path.startswith(out.rstrip("/") + "/") for out in map(_out_path, stage.get("outs", [])))


def _out_path(out) -> str:
    return next(iter(out)) if isinstance(out, dict) else out


def stage_command(stage: dict) -> list[str]:
    """A dvc.yaml cmd ("python -m stages.x ...") run by this interpreter."""
    import shlex

    words = shlex.split(stage["cmd"])
    return [sys.executable, *words[1:]] if words[0] in ("python", "python3") else words


def rerun_by(stages: dict[str, dict], param: str) -> list[str]:
    """The stages `dvc exp run -S <param>=...` reruns: those that declare the param or its section, and
    every stage downstream of them."""
    section = param.split(".")[0]
    changed = [name for name, stage in stages.items() if any(
        p in (section, param) for p in stage.get("params", []) if isinstance(p, str))]
    for name, stage in stages.items():  # in order: a stage after one that reruns reads its new outputs
        if name not in changed and any(_produces(stages[c], dep) for c in changed for dep in stage.get("deps", [])):
            changed.append(name)
    return [name for name in stages if name in changed]


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


def run(out: Path, workspace: Path, stages: list[str], overrides: list[str], reuse_data: Path | None, *,
        fresh: bool = True) -> dict:
    """Run `stages` (names in dvc.yaml) in `workspace` (made anew when `fresh`), each as dvc.yaml runs it."""
    if fresh:
        make_workspace(workspace, overrides)
    elif overrides:
        from alpaca_qlora.cli.offline_workspace import overlay_params, parse_override

        overlay_params(workspace / "params.yaml", [parse_override(text) for text in overrides])
    if reuse_data is not None:
        shutil.copytree(reuse_data / "data", workspace / "data", dirs_exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    summary = {"stages": {}, "overrides": overrides}
    environment = {**os.environ, "PYTHONPATH": f"{workspace}:{os.environ.get('PYTHONPATH', '')}"}
    defined, total = pipeline(workspace / "dvc.yaml"), time.perf_counter()
    for stage in stages:
        started = time.perf_counter()
        log = out / f"{stage}.log"
        with open(log, "w", encoding="utf-8") as handle:
            done = subprocess.run(stage_command(defined[stage]), cwd=workspace, env=environment,
                                  stdout=handle, stderr=subprocess.STDOUT)
        wall = time.perf_counter() - started
        summary["stages"][stage] = {"wall_s": round(wall, 1), "rc": done.returncode, "last_line": last_line(log)}
        timeline = workspace / "reports" / "timelines" / f"{stage}.json"
        if done.returncode == 0 and timeline.is_file():
            summary["stages"][stage]["timeline"] = json.loads(timeline.read_text(encoding="utf-8"))
            # What the stage's own clock cannot see: the interpreter's exit (and a launcher's after its workers).
            summary["stages"][stage]["outside_timeline_s"] = round(wall - summary["stages"][stage]["timeline"]
                                                                  ["total_s"], 1)
        print(f"{stage}: wall {wall:.1f} s, rc {done.returncode}: {summary['stages'][stage]['last_line']}", flush=True)
        if done.returncode:
            print(log.read_text(encoding="utf-8")[-6000:], flush=True)
            break
    summary["total_wall_s"] = round(time.perf_counter() - total, 1)
    for source, name in (("models/adapter/metadata.json", "metadata.json"), ("reports/metrics.json", "metrics.json"),
                         ("data/formatted/stats.json", "format_stats.json"),
                         ("reports/train/plots/metrics/loss.tsv", "loss.tsv"),
                         ("reports/train/plots/metrics/learning_rate.tsv", "learning_rate.tsv"),
                         ("reports/generations.md", "generations.md"), ("reports/timing.json", "timing.json"),
                         ("reports/generations.jsonl", "generations.jsonl"), ("reports/model_card.md", "model_card.md")):
        if (workspace / source).is_file():
            shutil.copyfile(workspace / source, out / name)
    (out / "summary.json").write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    return summary


def job(out: Path, phases: list[str], overrides: list[str], learning_rate: float) -> dict:
    """The seed job cold, the experiment after it, the job warm (see the module's docstring)."""
    stages = list(pipeline())
    cold, warm = WORKSPACES / "job-cold", WORKSPACES / "job-warm"
    report = {"stages": stages, "phases": {}}
    if "cold" in phases:
        report["phases"]["cold"] = run(out / "cold", cold, stages, overrides, None)
    if "experiment" in phases:
        changed = rerun_by(pipeline(), "train.learning_rate")
        report["phases"]["experiment"] = run(out / "experiment", cold, changed,
                                             [f"train.learning_rate={learning_rate}"], None, fresh=False)
    if "warm" in phases:
        make_workspace(warm, overrides)
        if (cold / "build" / "compile-cache").is_dir():
            shutil.copytree(cold / "build" / "compile-cache", warm / "build" / "compile-cache", symlinks=True)
        report["phases"]["warm"] = run(out / "warm", warm, stages, overrides, None, fresh=False)
    out.mkdir(parents=True, exist_ok=True)
    (out / "job.json").write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
    print(job_table(report))
    return report


def job_table(report: dict) -> str:
    """Per phase and stage: wall time, the timeline's phases over 0.5 s, and the rest (interpreter exit)."""
    lines = ["| run | stage | wall s | timeline (phases over 0.5 s) | outside timeline s |", "|---|---|---|---|---|"]
    for phase, summary in report["phases"].items():
        for stage, result in summary["stages"].items():
            phases = result.get("timeline", {}).get("phases", [])
            shown = ", ".join(f"{name} {seconds:.1f}" for name, seconds in phases if seconds >= 0.5)
            lines.append(f"| {phase} | {stage} | {result['wall_s']:.1f} | {shown} | {result.get('outside_timeline_s', '')} |")
        lines.append(f"| {phase} | **total** | **{summary['total_wall_s']:.1f}** | | |")
    return "\n".join(lines)


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
    if len(runs) >= 2:
        print(json.dumps(compare_losses(read_loss(runs[0] / "loss.tsv"), read_loss(runs[1] / "loss.tsv"))))


def compare_losses(first: tuple[list[int], list[float]], second: tuple[list[int], list[float]]) -> dict:
    """Step by step, how far two loss curves are apart (the same seed and data: bf16 noise if the math is equal)."""
    a, b = dict(zip(*first)), dict(zip(*second))
    common = sorted(set(a) & set(b))
    differences = [abs(a[step] - b[step]) for step in common]
    return {"steps_compared": len(common), "steps_only_in_one": len(set(a) ^ set(b)),
            "max_abs_loss_difference": round(max(differences), 4) if differences else None,
            "mean_abs_loss_difference": round(sum(differences) / len(differences), 4) if differences else None,
            "final_losses": [a[common[-1]], b[common[-1]]] if common else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser("prepare")
    p.add_argument("--tokenizer-model", type=Path, default=None)
    p.add_argument("--presets", default="mistral-7b-geometry,tiny-mistral")
    j = commands.add_parser("job")
    j.add_argument("--out", type=Path, required=True)
    j.add_argument("--phases", default="cold,experiment", help="cold, experiment, warm (comma-separated)")
    j.add_argument("--learning-rate", type=float, default=1e-4, help="the experiment's train.learning_rate")
    j.add_argument("--set", dest="overrides", action="append", default=[])
    r = commands.add_parser("run")
    r.add_argument("--out", type=Path, required=True)
    r.add_argument("--workspace", type=Path, default=None)
    r.add_argument("--stages", default=None, help="comma-separated stage names; default: all of dvc.yaml")
    r.add_argument("--set", dest="overrides", action="append", default=[])
    r.add_argument("--reuse-data", type=Path, default=None, help="a workspace whose data/ to reuse")
    g = commands.add_parser("plot")
    g.add_argument("runs", type=Path, nargs="+")
    g.add_argument("--labels", default="packed,unpacked")
    g.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    if args.command == "prepare":
        prepare(args.tokenizer_model, [p for p in args.presets.split(",") if p])
    elif args.command == "job":
        job(args.out, [p for p in args.phases.split(",") if p], args.overrides, args.learning_rate)
    elif args.command == "run":
        workspace = args.workspace or WORKSPACES / args.out.name
        stages = [s for s in args.stages.split(",") if s] if args.stages else list(pipeline())
        run(args.out, workspace, stages, args.overrides, args.reuse_data)
    else:
        plot(args.runs, args.labels.split(","), args.out)


if __name__ == "__main__":
    main()
