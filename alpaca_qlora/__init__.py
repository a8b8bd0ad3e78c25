"""Shared logic of the pipeline: params, data rules, the prompt template, model loading per backend.

Stage modules under stages/ hold orchestration only; every rule they apply lives here, once.
"""
