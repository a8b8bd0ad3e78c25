"""train.batch_size / train.gradient_checkpointing auto: the memory model reproduces the H200 measurements it
is built from, and the plan keeps the optimizer step's rows while choosing what fits each device."""
from __future__ import annotations

import pytest

from alpaca_qlora.training import memory
from alpaca_qlora.training.memory import MISTRAL_7B, SEVEN_PROJECTIONS, Geometry, PlanError, plan_batches

SEED = dict(backend="unsloth", rows_per_step=8, processes=1, batch_size="auto", gradient_checkpointing="auto",
            tokens_per_row=2048, geometry=MISTRAL_7B, lora_r=16, lora_targets=SEVEN_PROJECTIONS, load_in_4bit=True)


def peak(backend: str, checkpointing: str, tokens: int) -> float:
    return memory.predicted_peak_gib(MISTRAL_7B, backend=backend, checkpointing=checkpointing, tokens=tokens,
                                     lora_r=16, lora_targets=SEVEN_PROJECTIONS, load_in_4bit=True)


def test_the_model_gives_back_the_measurements_it_is_built_from_and_a_held_out_one():
    for (backend, checkpointing, tokens), measured in memory.MEASURED_PEAK_GIB.items():
        assert peak(backend, checkpointing, tokens) == pytest.approx(measured, abs=0.01)
    # Not in the fit: Unsloth without checkpointing, 2 rows of 2048 (benchmarks/train_step.py): 19.3 GiB.
    assert peak("unsloth", "off", 4096) == pytest.approx(19.3, rel=0.05)
    assert 1.25 * peak("unsloth", "off", 4096) + 1.5 > 19.3, "the margin covers the held-out point"
    assert memory.PER_TOKEN_BYTES["unsloth", "off"][0] == pytest.approx(6.0), "6 bytes x layers x (hidden + inter.)"


def test_the_seed_job_runs_without_checkpointing_on_an_h200_and_with_it_on_a_16_gb_gpu():
    h200 = plan_batches(**SEED, free_gib=139.5)
    assert (h200.per_device_batch_size, h200.gradient_accumulation_steps, h200.gradient_checkpointing) == (8, 1, "off")
    assert h200.predicted_peak_gib == pytest.approx(59.0) and h200.chosen_by == "auto"
    small = plan_batches(**SEED, free_gib=15.5)  # a 16 GB card
    assert small.gradient_checkpointing == "unsloth" and small.per_device_batch_size * small.gradient_accumulation_steps == 8
    assert small.predicted_peak_gib < 8
    mid = plan_batches(**SEED, free_gib=45.0)  # 8 x 1 (59 GiB) does not fit: the next divisor of 8 that does
    assert (mid.per_device_batch_size, mid.gradient_accumulation_steps, mid.gradient_checkpointing) == (4, 2, "off")


def test_several_processes_share_the_rows_of_a_step():
    plan = plan_batches(**{**SEED, "processes": 2}, free_gib=139.5)
    assert (plan.per_device_batch_size, plan.gradient_accumulation_steps) == (4, 1), "8 rows = 2 processes x 4"
    with pytest.raises(PlanError, match="train.rows_per_step=8 does not split evenly over 3 processes"):
        plan_batches(**{**SEED, "processes": 3}, free_gib=139.5)


def test_explicit_values_are_kept_and_checked():
    plan = plan_batches(**{**SEED, "batch_size": 2, "gradient_checkpointing": "unsloth"}, free_gib=None)
    assert (plan.per_device_batch_size, plan.gradient_accumulation_steps, plan.gradient_checkpointing,
            plan.chosen_by) == (2, 4, "unsloth", "params")
    seed_recipe = plan_batches(**{**SEED, "batch_size": 2}, free_gib=139.5)  # only checkpointing is auto
    assert (seed_recipe.per_device_batch_size, seed_recipe.gradient_checkpointing) == (2, "off")
    assert plan_batches(**{**SEED, "gradient_checkpointing": False, "batch_size": 8}, free_gib=1.0) \
        .gradient_checkpointing == "off", "false is off, whatever the memory"
    with pytest.raises(PlanError, match="train.batch_size=3 does not divide the 8 rows"):
        plan_batches(**{**SEED, "batch_size": 3}, free_gib=139.5)
    with pytest.raises(PlanError, match="needs train.backend=unsloth"):
        plan_batches(**{**SEED, "backend": "hf", "gradient_checkpointing": "unsloth"}, free_gib=139.5)
    with pytest.raises(PlanError, match="no measured memory model for train.backend=hf"):
        plan_batches(**{**SEED, "backend": "hf", "gradient_checkpointing": False}, free_gib=139.5)


def test_hf_keeps_its_checkpointing_and_picks_the_micro_batch():
    plan = plan_batches(**{**SEED, "backend": "hf"}, free_gib=139.5)
    assert (plan.per_device_batch_size, plan.gradient_checkpointing) == (8, "true")
    assert plan.predicted_peak_gib == pytest.approx(32.4, abs=0.01)


def test_a_device_too_small_for_one_row_gets_the_smallest_plan_and_a_warning(capsys):
    plan = plan_batches(**SEED, free_gib=4.0)
    assert (plan.per_device_batch_size, plan.gradient_checkpointing) == (1, "unsloth")
    assert "predicted to need" in capsys.readouterr().out


def test_geometry_is_read_from_the_model_config():
    from transformers import MistralConfig

    config = MistralConfig(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                           num_key_value_heads=8, vocab_size=32000)
    assert Geometry.from_config(config, "m") == MISTRAL_7B
    assert MISTRAL_7B.lora_bytes(16, SEVEN_PROJECTIONS) == 41_943_040 * 10, "the 7B's 41,943,040 LoRA parameters"
    without = type("Config", (), {k: v for k, v in config.to_dict().items() if k != "intermediate_size"})
    with pytest.raises(ValueError, match="config.json has no intermediate_size"):
        Geometry.from_config(without, "m")
