"""The model card: models/adapter/README.md (train stage) and reports/model_card.md (card stage, with the
evaluation), each value checked against metadata.json and reports/metrics.json of the same run."""
from __future__ import annotations

import json
import re
import subprocess

from alpaca_qlora.modeling.model_card import KNOWN_METRICS, flat_metrics, render_card
from alpaca_qlora.modeling.adapter import AdapterMetadata


def table_rows(card: str) -> dict[str, str]:
    """The two-column markdown rows of a card: {first cell: second cell}."""
    rows = {}
    for line in card.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if line.startswith("|") and len(cells) == 2 and not set(cells[1]) <= {"-"}:
            rows[cells[0]] = cells[1]
    return rows


def test_the_adapters_card_says_how_it_was_made_from_its_metadata(reproduced_workspace):
    adapter = reproduced_workspace / "models/adapter"
    card, meta = (adapter / "README.md").read_text(), json.loads((adapter / "metadata.json").read_text())
    assert "[More Information Needed]" not in card, "PEFT's empty template is replaced"
    assert card.startswith("---\nlibrary_name: peft\n") and "base_model:" not in card.split("---")[1], \
        "hub front matter; a local offline model is not a hub id"
    rows, sample = table_rows(card), meta["data"]["sample"]
    assert rows["base model"].startswith(f"`{meta['base_model']}`")
    assert rows["sample"] == (f"fraction {sample['fraction']}, seed {sample['seed']}: {sample['train_records']} "
                              f"training records, {sample['eval_records']} held out")
    assert (sample["fraction"], sample["seed"], sample["train_records"]) == (0.4, 3407, 800)
    assert sample["train_fingerprint"] in rows["sample sha256 (canonical JSON of the records)"]
    assert meta["data"]["formatted_train_sha256"] in rows["formatted training rows, sha256 of train.jsonl"]
    lora = meta["params"]["lora"]
    assert rows["LoRA"].startswith(f"r {lora['r']}, alpha {lora['alpha']}, dropout {lora['dropout']}, rsLoRA False")
    assert rows["target modules"] == ", ".join(lora["target_modules"])
    assert rows["optimizer (asked / ran)"].startswith(f"adamw_torch / {meta['effective']['optimizer']}")
    for key, value in meta["results"].items():
        assert rows[key] == str(value), key
    for library, version in meta["libraries"].items():
        assert rows[library] == version, library
    assert meta["template"]["prompt_input"].replace("{instruction}", "").splitlines()[0] in card
    assert "an empty `### Input:` block" in card, "the seed's single template, as trained"
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=reproduced_workspace, capture_output=True,
                            text=True).stdout.strip()
    assert meta["reproduce"]["command"] == "dvc repro" and f"git checkout {commit}\ndvc repro\n" in card
    assert "dvc artifacts get" in card and "AutoPeftModelForCausalLM" in card and "ollama create" in card
    assert "## Evaluation" in card and "reports/model_card.md" in card


def test_the_card_stage_adds_every_evaluation_figure(reproduced_workspace):
    card = (reproduced_workspace / "reports/model_card.md").read_text()
    metrics = json.loads((reproduced_workspace / "reports/metrics.json").read_text())
    meta = AdapterMetadata.read(reproduced_workspace / "models/adapter")
    shown = {re.search(r"\(`(.+)`\)$", label).group(1): value for label, value in table_rows(card).items()
             if re.search(r"\(`(.+)`\)$", label)}
    assert {key: json.loads(value) for key, value in shown.items()} == flat_metrics(metrics)
    keys = list(shown)
    assert keys[:3] == ["adapter.eval_loss", "base.eval_loss", "adapter_minus_base.eval_loss"], \
        "known figures first, in words"
    assert card == render_card(meta, metrics=metrics), "the card is the adapter's card plus its evaluation"
    assert card.split("## Evaluation")[0] == (reproduced_workspace / "models/adapter/README.md").read_text() \
        .split("## Evaluation")[0].replace(" by alpaca_qlora", " and reports/metrics.json by alpaca_qlora", 1)


def test_metrics_of_any_shape_are_rendered_known_keys_first(reproduced_workspace):
    """reports/metrics.json may grow (ROUGE-L, exact match, nested sections): every figure still gets a row."""
    meta = AdapterMetadata.read(reproduced_workspace / "models/adapter")
    metrics = {"adapter": {"eval_loss": 1.5, "judge": {"score": 0.31}}, "stop_rate": 1.0}
    rows = table_rows(render_card(meta, metrics=metrics))
    assert rows[f"{KNOWN_METRICS['adapter.eval_loss']} (`adapter.eval_loss`)"] == "1.5"
    assert rows["adapter.judge.score (`adapter.judge.score`)"] == "0.31" and rows["stop_rate (`stop_rate`)"] == "1.0"


def test_the_reproduce_command_names_each_adapter_key_that_differs_from_the_commit(tmp_path, monkeypatch):
    from alpaca_qlora.cli.offline_workspace import overlay_params, parse_override
    from alpaca_qlora.provenance import reproduction
    from tests.conftest import REPO_ROOT

    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text((REPO_ROOT / "params.yaml").read_text())
    for command in (["init", "-q"], ["add", "params.yaml"], ["-c", "user.name=t", "-c", "user.email=t@t",
                                                             "commit", "-qm", "params"]):
        subprocess.run(["git", *command], check=True)
    assert reproduction()["command"] == "dvc repro"
    overlay_params(tmp_path / "params.yaml", [parse_override(o) for o in (
        "train.learning_rate=1e-4", "evaluate.batch_size=4", "format.input_free_variant=true",
        "runtime.wandb_mode=offline", "lora.target_modules=[q_proj, v_proj]")])
    done = reproduction()
    assert done["command"] == ("dvc exp run -S format.input_free_variant=true "
                               "-S 'lora.target_modules=[\"q_proj\", \"v_proj\"]' -S train.learning_rate=0.0001"), \
        "the keys that decide the adapter, in -S form; evaluate and runtime keys cannot change it"
    assert done["git"]["changed"] == ["params.yaml"] and done["git"]["origin"] is None
