"""A seconds-fast stand-in for the pipeline, with the same outputs and params layout.

The remote tests exercise DVC's transport, not training, so when the real
offline workspace is not available (``REMOTE_TESTS_WORKSPACE=standin``) they
run on this: a four-stage DVC project (sample -> format -> train ->
evaluate) whose ``train`` writes a deterministic binary "adapter" derived
from ``train.learning_rate`` and ``train.seed``. Same paths as the real
pipeline, so every test helper is shared.
"""

from __future__ import annotations

from pathlib import Path

from .dvcrepo import dvc, git

STAGES_PY = r'''
import hashlib, json, sys
from pathlib import Path

import yaml

params = yaml.safe_load(Path("params.yaml").read_text())
stage = sys.argv[1]


def blob(seed: str, size: int) -> bytes:
    out, counter = bytearray(), 0
    while len(out) < size:
        out += hashlib.sha256(f"{seed}:{counter}".encode()).digest()
        counter += 1
    return bytes(out[:size])


if stage == "sample":
    out = Path("data/sampled"); out.mkdir(parents=True, exist_ok=True)
    rows = [{"instruction": f"task {i}", "input": "", "output": f"answer {i}"} for i in range(200)]
    (out / "train.jsonl").write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in rows[:180]))
    (out / "eval.jsonl").write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in rows[180:]))
    (out / "stats.json").write_text(json.dumps({"train": 180, "eval": 20}, sort_keys=True))
elif stage == "format":
    out = Path("data/formatted"); out.mkdir(parents=True, exist_ok=True)
    text = Path("data/sampled/train.jsonl").read_text()
    (out / "train.jsonl").write_text(text.replace("task", "### Instruction: task"))
elif stage == "train":
    out = Path("models/adapter"); out.mkdir(parents=True, exist_ok=True)
    seed = f"{params['train']['learning_rate']}:{params['train']['seed']}:{params['train']['max_steps']}"
    (out / "adapter_model.safetensors").write_bytes(blob(seed, params["train"]["adapter_bytes"]))
    (out / "adapter_config.json").write_text(json.dumps({"r": 16, "lora_alpha": 16}, sort_keys=True))
    (out / "tokenizer.json").write_text(json.dumps({"vocab": list(range(50))}))
    (out / "metadata.json").write_text(json.dumps({"train": params["train"]}, sort_keys=True))
elif stage == "evaluate":
    out = Path("reports"); out.mkdir(parents=True, exist_ok=True)
    weights = Path("models/adapter/adapter_model.safetensors").read_bytes()
    loss = int(hashlib.sha256(weights).hexdigest()[:6], 16) / 16**6
    (out / "metrics.json").write_text(json.dumps({"eval_loss": round(loss, 6)}, sort_keys=True))
    (out / "generations.md").write_text("# Generations\n\nanswer 1\n")
'''

DVC_YAML = """\
stages:
  sample:
    cmd: python stages.py sample
    deps: [stages.py]
    outs: [data/sampled]
  format:
    cmd: python stages.py format
    deps: [stages.py, data/sampled]
    outs: [data/formatted]
  train:
    cmd: python stages.py train
    deps: [stages.py, data/formatted]
    params: [train]
    outs: [models/adapter]
  evaluate:
    cmd: python stages.py evaluate
    deps: [stages.py, models/adapter]
    outs: [reports/metrics.json, reports/generations.md]
metrics:
  - reports/metrics.json
"""

PARAMS_YAML = """\
train:
  learning_rate: 2.0e-4
  seed: 3407
  max_steps: -1
  adapter_bytes: {adapter_bytes}
"""


def make_standin_project(dest: Path, *, dvc_config: str, adapter_bytes: int = 3 << 20) -> Path:
    """Create, reproduce and commit the stand-in project at ``dest``.

    ``dvc_config`` is the text of the repository's ``.dvc/config`` (so the
    shipped default remote is what the tests use). ``adapter_bytes`` sizes the
    fake adapter: 3 MiB by default, large enough for a push to be interrupted
    half way.
    """
    dest = Path(dest)
    dest.mkdir(parents=True)
    git(dest, "init", "--quiet", "--initial-branch=main")
    dvc(dest, "init", "--quiet")
    (dest / ".dvc" / "config").write_text(dvc_config)
    (dest / "stages.py").write_text(STAGES_PY)
    (dest / "dvc.yaml").write_text(DVC_YAML)
    (dest / "params.yaml").write_text(PARAMS_YAML.format(adapter_bytes=adapter_bytes))
    dvc(dest, "repro", "--quiet")
    git(dest, "add", "-A")
    git(dest, "commit", "--quiet", "-m", "stand-in pipeline, reproduced")
    return dest
