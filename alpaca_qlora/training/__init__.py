"""A training run: the SFTTrainer built from params, checkpoints and resume, data parallelism, tracking."""
