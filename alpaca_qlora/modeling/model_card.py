"""The adapter's model card (README.md), written from its metadata.json and, when given, reports/metrics.json.

PEFT's save_pretrained leaves a template of "[More Information Needed]"; this card says what the adapter is
from what the run recorded, so every figure in it is this run's: base model, data sample and its hashes,
the template, LoRA and training params (asked for and what ran), the training results, the evaluation
figures, library versions, the command that rebuilds it, and how to load it. The train stage writes it into
models/adapter/README.md without evaluation (evaluate runs later); the `card` stage writes the whole card,
evaluation included, to reports/model_card.md. Nobody else writes either file.
"""
from __future__ import annotations

import json
from typing import Any

from alpaca_qlora.evaluation.report import LABELS

ARTIFACT = "alpaca-qlora-adapter"  # the adapter's name in dvc.yaml's `artifacts:` (the DVC model registry)

# reports/metrics.json keys this card names in words, in this order; any other key follows, as it is named.
_MODELS = {"adapter": "base + adapter", "base": "base model", "adapter_minus_base": "adapter - base"}
KNOWN_METRICS = {f"{model}.{key}": f"{label}, {who}" for key, label in LABELS.items() for model, who in _MODELS.items()}
KNOWN_METRICS.update({"eval_rows": "held-out records", "eval_response_tokens": "scored response tokens"})


def flat_metrics(metrics: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}: whatever shape reports/metrics.json takes, one row per figure."""
    rows: dict[str, Any] = {}
    for key, value in metrics.items():
        if isinstance(value, dict):
            rows.update(flat_metrics(value, f"{prefix}{key}."))
        else:
            rows[f"{prefix}{key}"] = value
    return rows


def render_card(meta, *, metrics: dict[str, Any] | None = None) -> str:
    """The card of the adapter described by `meta` (an AdapterMetadata), with `metrics` when evaluated."""
    sample, lora, train = meta.data.get("sample") or {}, meta.params["lora"], meta.params["train"]
    git = (meta.reproduce or {}).get("git") or {}
    lines = [*_front_matter(meta.base_model, sample.get("source")),
             f"# LoRA adapter for `{meta.base_model}`, instruction-tuned on Alpaca\n",
             f"A QLoRA adapter made by the alpaca-qlora DVC pipeline (`{meta.backend}` backend, TRL's SFTTrainer). "
             "Written from the adapter's metadata.json" + (" and reports/metrics.json" if metrics else "")
             + " by alpaca_qlora/modeling/model_card.py: every figure here is this run's.\n",
             "## Base model and data\n", _table([
                 ("base model", f"`{meta.base_model}`, 4-bit NF4: {meta.params['model']['load_in_4bit']}"),
                 ("longest row (model.max_seq_length)", meta.params["model"]["max_seq_length"]),
                 ("data source", f"`{sample.get('source', '?')}` (split `{sample.get('split', '?')}`, "
                                 f"{sample.get('source_records', '?')} records)"),
                 ("sample", f"fraction {sample.get('fraction', '?')}, seed {sample.get('seed', '?')}: "
                            f"{sample.get('train_records', '?')} training records, "
                            f"{sample.get('eval_records', '?')} held out"),
                 ("sample sha256 (canonical JSON of the records)",
                  f"train `{sample.get('train_fingerprint', '?')}`, held-out `{sample.get('eval_fingerprint', '?')}`"),
                 ("formatted training rows, sha256 of train.jsonl",
                  f"{meta.data['train_rows']} rows, `{meta.data['formatted_train_sha256']}`")]),
             *_template_section(meta),
             "## Training\n", _table([
                 ("LoRA", f"r {lora['r']}, alpha {lora['alpha']}, dropout {lora['dropout']}, rsLoRA "
                          f"{lora.get('use_rslora', False)} (scale {_join(meta.effective.get('lora_scaling'))})"),
                 ("target modules", ", ".join(lora["target_modules"])),
                 ("learning rate, schedule, warm-up", f"{train['learning_rate']}, {train['lr_scheduler']}, "
                                                      f"{train['warmup_steps']} steps"),
                 ("epochs, max_steps, steps run", f"{train['epochs']}, {train['max_steps']}, "
                                                  f"{meta.effective.get('global_steps')}"),
                 ("batch", f"{meta.effective.get('per_device_batch_size')} rows x "
                           f"{meta.effective.get('gradient_accumulation_steps')} accumulation x "
                           f"{meta.effective.get('num_processes')} process(es) = "
                           f"{meta.effective.get('effective_batch_size')} rows a step"),
                 ("optimizer (asked / ran)", f"{train['optimizer']} / {meta.effective.get('optimizer')}, "
                                             f"weight decay {train['weight_decay']}"),
                 ("packing (asked / ran)", f"{train['packing']} / {meta.effective.get('packing')}"),
                 ("loss on", "prompt and response" if train["train_on_prompt"] else "the response only"),
                 ("NEFTune noise alpha", train.get("neftune_noise_alpha", 0) or "off"),
                 ("seed", train["seed"]),
                 ("device", _device(meta.effective.get("device"))),
                 ("resumed from step", meta.resumed_from_step or "no, trained in one go")]),
             "Results of the run:\n", _table(sorted(meta.results.items())),
             *_evaluation_section(metrics, git.get("commit")),
             *_reproduce_section(meta, git),
             *_use_section(meta),
             "## Library versions\n", _table(sorted(meta.libraries.items()))]
    return "\n".join(lines)


def _front_matter(base_model: str, source: str | None) -> list[str]:
    """Hugging Face hub metadata; a base model or data set that is not a hub id (a local path) is left out."""
    def hub_id(name: str | None) -> bool:
        return bool(name) and ":" not in name and not name.startswith((".", "/")) and name.count("/") == 1 \
            and not name.endswith((".json", ".jsonl", ".parquet"))
    lines = ["---", "library_name: peft", "pipeline_tag: text-generation",
             "tags: [lora, qlora, alpaca, dvc]"]
    lines += [f"base_model: {base_model}"] if hub_id(base_model) else []
    lines += [f"datasets: [{source}]"] if hub_id(source) else []
    return lines + ["---\n"]


def _template_section(meta) -> list[str]:
    template, variant = meta.template, meta.format["input_free_variant"]
    rule = ("Stanford Alpaca's two variants: records with an empty input get the without-input prompt"
            if variant else "one prompt for every record: a record without input keeps an empty `### Input:` block")
    lines = ["## Prompt template\n", f"Template `{template['name']}`, {rule}. The response follows "
             f"`{template['response_marker'].strip()}`, then the tokenizer's EOS (`</s>` for Mistral).\n",
             _fenced(template["prompt_input"], "text")]
    return lines + ([_fenced(template["prompt_no_input"], "text")] if variant else [])


def _evaluation_section(metrics: dict[str, Any] | None, commit: str | None) -> list[str]:
    if metrics is None:
        return ["## Evaluation\n", "The `evaluate` stage runs after training: held-out loss, perplexity, "
                "ROUGE-L, exact match, answer length and EOS-stop rate of the base model and of base + adapter, in "
                "reports/metrics.json (`dvc metrics show`), and this card with "
                f"those figures in reports/model_card.md{f' at commit `{commit}`' if commit else ''}.\n"]
    flat = flat_metrics(metrics)
    ordered = [key for key in KNOWN_METRICS if key in flat] + sorted(key for key in flat if key not in KNOWN_METRICS)
    rows = [(f"{KNOWN_METRICS.get(key, key)} (`{key}`)", json.dumps(flat[key])) for key in ordered]
    return ["## Evaluation\n", "From reports/metrics.json (the `evaluate` stage, on the held-out records):\n",
            _table(rows, header=("figure", "value"))]


def _reproduce_section(meta, git: dict[str, Any]) -> list[str]:
    commit, origin = git.get("commit") or "<commit>", git.get("origin") or "<repository-url>"
    command = (meta.reproduce or {}).get("command", "dvc repro")
    lines = ["## Reproduce it\n", _fenced(f"git clone {origin} alpaca-qlora && cd alpaca-qlora\n"
                                          f"git checkout {commit}\n{command}", "bash")]
    others = [path for path in git.get("changed", []) if path != "params.yaml"]  # params.yaml: in the command
    if others:
        lines.append(f"Files differed from the commit when this ran ({', '.join(others)}): the commit alone may "
                     "not rebuild it.\n")
    lines.append(f"Or fetch it without training, from the DVC remote: `dvc artifacts get {origin} {ARTIFACT}` "
                 "(the newest `" + ARTIFACT + "@v...` git tag; README: Use the adapter).\n")
    return lines


def _use_section(meta) -> list[str]:
    return ["## Use it\n", _fenced(
        "from peft import AutoPeftModelForCausalLM\nfrom transformers import AutoTokenizer\n\n"
        "# the base model named in adapter_config.json, with this adapter on it\n"
        "model = AutoPeftModelForCausalLM.from_pretrained(\"models/adapter\")\n"
        "tokenizer = AutoTokenizer.from_pretrained(\"models/adapter\")\n"
        f"prompt = {json.dumps(meta.template['prompt_input'])}.format(instruction=..., input=...)", "python"),
        "The prompt must be the template above, exactly. In the pipeline's repository:\n", _fenced(
            "python -m alpaca_qlora.cli.generate --adapter models/adapter \"Give three tips for staying healthy.\"\n"
            "python -m alpaca_qlora.cli.merge --adapter models/adapter --out build/merged\n"
            "python -m alpaca_qlora.cli.gguf_export --merged build/merged --out build/model-q8_0.gguf --outtype q8_0\n"
            "ollama create alpaca-qlora -f build/model-q8_0.Modelfile    # written next to the GGUF file", "bash")]


def _table(rows: list[tuple[str, Any]], header: tuple[str, str] = ("", "this run")) -> str:
    body = [f"| {header[0]} | {header[1]} |", "|---|---|"]
    return "\n".join(body + [f"| {key} | {value} |" for key, value in rows]) + "\n"


def _fenced(text: str, language: str) -> str:
    return f"```{language}\n{text.rstrip(chr(10))}\n```\n"


def _join(values) -> str:
    return ", ".join(str(value) for value in values) if values else "?"


def _device(device: dict[str, Any] | None) -> str:
    """"cuda NVIDIA H200 x1" or "cpu x86_64, 2 threads": the same text from a fresh or a re-read metadata.json."""
    device = device or {}
    if device.get("type") == "cuda":
        return f"cuda {device.get('name')} x{device.get('count')}"
    return f"{device.get('type', '?')} {device.get('name', '?')}, {device.get('threads', '?')} threads"
