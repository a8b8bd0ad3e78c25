"""The train stage beside what a user would run instead, in one command, on the same data, for the same steps.

    python -m benchmarks.gpu_job prepare --tokenizer-model .gpu/tokenizer.model.v1 --presets mistral-7b-geometry
    python -m benchmarks.peers --out build/gpu-results/peers/peers.json --steps 20                  # GPU
    python -m benchmarks.peers --out build/peers/peers.json --steps 3 --set model.name=offline:tiny-mistral \
        --set model.max_seq_length=256 --set data.source=data/offline/alpaca_synthetic.jsonl     # CPU dry run

Three runs of --steps optimizer steps each, each in its own process (importing Unsloth patches the process):
- `stage`: the train stage (`python -m stages.train`, params.yaml with profiles/gpu-benchmark.yaml, as
  benchmarks.gpu_job runs it), with train.max_steps = --steps.
- `unsloth_trl_packing`: Unsloth + TRL as a user writes them from the Unsloth Mistral Alpaca notebook, with
  `packing=True`: FastLanguageModel 4-bit, LoRA r16 on the 7 projections, gradient checkpointing "unsloth",
  SFTTrainer on the "text" column (prompt + response + EOS, the notebook's formatting), batch 2 x
  accumulation 4 (--peer-batch), adamw_8bit, lr 2e-4, warm-up 5, seed 3407.
- `seed_recipe`: the same with `packing=False`: the notebook as the seed runs it.
All read the same data/formatted/train.jsonl (the format stage's output of one sample stage run).

For each: real tokens (padding left out: counted on the rows before collation) over `train_runtime`
(warm-up and compilation included), and the steady rate from each micro-batch's collation time after
--warmup-steps optimizer steps (the batch log of alpaca_qlora/training/distributed.py). On a CPU the
figures mean nothing (Unsloth turns packing off there); the dry run proves the script works.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from alpaca_qlora.training.distributed import BATCH_LOG_ENV
from benchmarks import gpu_job
from benchmarks.ddp_scaling import steady_tokens_per_s

PEERS = {"unsloth_trl_packing": True, "seed_recipe": False}  # name -> SFTConfig packing


def run_peer(name: str, workspace: Path, steps: int, batch: tuple[int, int], out: Path) -> dict:
    """One peer, in this process: Unsloth + TRL the way the notebook writes them."""
    import unsloth  # noqa: F401  (first, as the notebook does)
    import torch
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer
    from unsloth import FastLanguageModel

    os.chdir(workspace)
    sys.path.insert(0, str(workspace))
    from alpaca_qlora.files import read_jsonl
    from alpaca_qlora.modeling.offline_models import resolve_model_path
    from alpaca_qlora.params import load_section
    from alpaca_qlora.provenance import peak_memory_gib
    from alpaca_qlora.training.callbacks import RealTokenCounter

    model_params, lora = load_section("model"), load_section("lora")
    model, tokenizer = FastLanguageModel.from_pretrained(model_name=resolve_model_path(model_params),
                                                         max_seq_length=model_params["max_seq_length"], dtype=None,
                                                         load_in_4bit=True)
    model = FastLanguageModel.get_peft_model(
        model, r=lora["r"], target_modules=list(lora["target_modules"]), lora_alpha=lora["alpha"], lora_dropout=0,
        bias="none", use_gradient_checkpointing="unsloth", random_state=3407,
        max_seq_length=model_params["max_seq_length"])
    rows = read_jsonl(Path("data/formatted/train.jsonl"))
    dataset = Dataset.from_list([{"text": row["prompt"] + row["completion"]} for row in rows])  # EOS included
    on_gpu = torch.cuda.is_available()
    bf16 = on_gpu and torch.cuda.is_bf16_supported()
    trainer = SFTTrainer(model=model, processing_class=tokenizer, train_dataset=dataset, args=SFTConfig(
        dataset_text_field="text", max_length=model_params["max_seq_length"], packing=PEERS[name],
        per_device_train_batch_size=batch[0], gradient_accumulation_steps=batch[1], warmup_steps=5, max_steps=steps,
        learning_rate=2e-4, logging_steps=1, optim="adamw_8bit", weight_decay=0.01, lr_scheduler_type="linear",
        seed=3407, output_dir=str(out.parent / f"{name}-trainer"), report_to="none", bf16=bf16,
        fp16=on_gpu and not bf16, use_cpu=not on_gpu, disable_tqdm=True, save_strategy="no"))
    counter = trainer.data_collator = RealTokenCounter(trainer.data_collator)  # the stage's own count
    trainer.add_callback(counter)
    result = trainer.train()
    seconds = result.metrics["train_runtime"]
    return {"name": name, "steps": result.global_step, "real_tokens": counter.tokens,
            "train_runtime_s": round(seconds, 2), "real_tokens_per_s": round(counter.tokens / seconds, 1),
            "batch": f"{batch[0]} x {batch[1]}", "packing": bool(trainer.args.packing),
            "padding_free": bool(getattr(trainer.args, "padding_free", False)), "train_loss": result.training_loss,
            **peak_memory_gib()}


def measure_stage(out: Path, data: Path, steps: int, overrides: list[str], warmup: int) -> dict:
    batch_log = (out / "stage" / "batches").resolve()
    os.environ[BATCH_LOG_ENV] = str(batch_log)
    summary = gpu_job.run(out / "stage", gpu_job.WORKSPACES / "peers-stage", ["train"],
                          [*overrides, f"train.max_steps={steps}"], data)
    os.environ.pop(BATCH_LOG_ENV)
    if summary["stages"]["train"]["rc"]:
        return {"name": "stage", "rc": summary["stages"]["train"]["rc"]}
    meta = json.loads((out / "stage" / "metadata.json").read_text(encoding="utf-8"))
    effective, results = meta["effective"], meta["results"]
    accumulation = effective["gradient_accumulation_steps"]
    return {"name": "stage", "steps": effective["global_steps"], "real_tokens": results["real_tokens"],
            "train_runtime_s": results["train_runtime_s"], "real_tokens_per_s": results["real_tokens_per_s"],
            "steady_tokens_per_s": steady_tokens_per_s(batch_log, warmup * accumulation)["tokens_per_s"],
            "batch": f"{effective['per_device_batch_size']} x {accumulation}", "packing": effective["packing"],
            "padding_free": effective["padding_free"], "gradient_checkpointing": effective["gradient_checkpointing"],
            "train_loss": results["train_loss"], **{k: v for k, v in results.items() if k.startswith("peak_")},
            "stage_wall_s": summary["stages"]["train"]["wall_s"]}


def table(runs: list[dict]) -> str:
    stage = next((r for r in runs if r["name"] == "stage" and "real_tokens_per_s" in r), None)
    lines = ["| run | batch | packing | steps | real tokens | train_runtime s | real tokens/s | steady tokens/s | "
             "stage is x | peak GiB |", "|---|---|---|---|---|---|---|---|---|---|"]
    for run in runs:
        if "real_tokens_per_s" not in run:
            lines.append(f"| {run['name']} | failed (rc {run.get('rc')}) |||||||||")
            continue
        ratio = f"{stage['real_tokens_per_s'] / run['real_tokens_per_s']:.2f}" if stage else "n/a"
        peak = next((v for k, v in run.items() if k.startswith("peak_")), "n/a")
        lines.append(f"| {run['name']} | {run['batch']} | {run['packing']} | {run['steps']} | {run['real_tokens']:,} | "
                     f"{run['train_runtime_s']} | {run['real_tokens_per_s']:,.0f} | "
                     f"{run.get('steady_tokens_per_s', 0):,.0f} | {ratio} | {peak} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="the JSON summary")
    parser.add_argument("--steps", type=int, default=20, help="optimizer steps of each run")
    parser.add_argument("--warmup-steps", type=int, default=3, help="optimizer steps left out of the steady rate")
    parser.add_argument("--peer-batch", default="2x4", help="the peers' batch x accumulation (the notebook's 2x4)")
    parser.add_argument("--peers", default=",".join(PEERS))
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")
    parser.add_argument("--peer", choices=tuple(PEERS), help=argparse.SUPPRESS)  # child process
    parser.add_argument("--workspace", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    batch = tuple(int(n) for n in args.peer_batch.split("x"))
    if args.peer:
        result = run_peer(args.peer, args.workspace, args.steps, batch, args.out)
        args.out.write_text(json.dumps(result, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        return

    out = args.out.parent
    data = gpu_job.WORKSPACES / "peers-data"
    summary = gpu_job.run(out / "data", data, ["sample", "format"], args.overrides, None)
    if any(stage["rc"] for stage in summary["stages"].values()):
        raise SystemExit("peers: sample/format failed; see the log above")
    runs = [measure_stage(out, data, args.steps, args.overrides, args.warmup_steps)]
    print("peers:", json.dumps(runs[-1]), flush=True)
    for name in [p for p in args.peers.split(",") if p]:
        part, batch_log = out / f"{name}.json", (out / name / "batches").resolve()
        started = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "benchmarks.peers", "--peer", name, "--workspace", str(data),
                               "--steps", str(args.steps), "--peer-batch", args.peer_batch, "--out", str(part.resolve())],
                              env={**os.environ, BATCH_LOG_ENV: str(batch_log)})
        if done.returncode:
            runs.append({"name": name, "rc": done.returncode})
            continue
        result = json.loads(part.read_text(encoding="utf-8"))
        result["steady_tokens_per_s"] = steady_tokens_per_s(batch_log, args.warmup_steps * batch[1])["tokens_per_s"]
        result["process_s"] = round(time.perf_counter() - started, 1)
        runs.append(result)
        print("peers:", json.dumps(result), flush=True)
    out.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"runs": runs, "steps": args.steps, "overrides": args.overrides}, indent=2,
                                   sort_keys=True) + "\n", encoding="utf-8")
    print(table(runs))


if __name__ == "__main__":
    main()
