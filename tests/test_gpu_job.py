"""benchmarks/gpu_job.py reads the stages from dvc.yaml, as DVC runs them: in dependency order, and for an
experiment the stages DVC reruns (tests/test_dvc_pipeline.py checks the same with the real dvc CLI)."""
from __future__ import annotations

import sys

from benchmarks.gpu_job import compare_losses, pipeline, rerun_by, stage_command
from tests.conftest import REPO_ROOT


def test_the_job_is_every_stage_of_dvc_yaml_in_dependency_order():
    stages = pipeline(REPO_ROOT / "dvc.yaml")
    names = list(stages)
    assert {"sample", "format", "train", "evaluate"} <= set(names), names
    position = {name: i for i, name in enumerate(names)}
    for name, stage in stages.items():
        for other, producer in stages.items():
            outs = [next(iter(o)) if isinstance(o, dict) else o for o in producer.get("outs", [])]
            if any(dep == out or dep.startswith(out + "/") for dep in stage.get("deps", []) for out in outs):
                assert position[other] < position[name], f"{other} produces what {name} reads"
    assert stage_command(stages["train"])[:3] == [sys.executable, "-m", "stages.train"]


def test_an_experiment_reruns_what_dvc_reruns():
    stages = pipeline(REPO_ROOT / "dvc.yaml")
    assert rerun_by(stages, "train.learning_rate") == [n for n in stages if n in ("train", "evaluate", "card")]
    assert rerun_by(stages, "evaluate.max_new_tokens") == [n for n in stages if n.startswith("evaluate") or n == "card"]
    assert rerun_by(stages, "data.fraction") == list(stages)
    assert "sample" not in rerun_by(stages, "model.max_seq_length") and "format" in rerun_by(stages,
                                                                                              "model.max_seq_length")


def test_two_loss_curves_are_compared_step_by_step():
    same = compare_losses(([1, 2, 3], [2.0, 1.5, 1.2]), ([1, 2, 3, 4], [2.0, 1.6, 1.1, 1.0]))
    assert same["steps_compared"] == 3 and same["steps_only_in_one"] == 1
    assert same["max_abs_loss_difference"] == 0.1 and same["final_losses"] == [1.2, 1.1]
