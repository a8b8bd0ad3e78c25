"""The pipeline's code, grouped by concern. Stage scripts under stages/ read params, call this, write outputs.

    params.py      params.yaml: the one list of keys, their types and bounds
    files.py       how outputs are written: atomic folders and files, stable JSON / JSONL, sha256
    provenance.py  what a run records about itself: library versions, device, git revision, peak memory,
                   the dvc command that reproduces it
    errors.py      UserError, the base of every expected error, and run_main: one `error:` line, no traceback
    progress.py    progress bars where a user waits (tqdm, quiet in logs and CI) and each stage's summary line
    timeline.py    where a stage's seconds go: its phases, written to reports/timelines/<stage>.json
    data/          the Alpaca rules: reading and checking records, the seeded split, template, formatting
    modeling/      the base model and the adapter: the backends (unsloth, hf), tokenizer, offline models,
                   checks before loading, compile caches, the adapter folder, its metadata.json and model
                   card, the inference rule
    training/      the training run: SFTTrainer set-up, micro-batch and checkpointing that fit the memory,
                   callbacks, checkpoints and resume, data parallelism, tracking
    evaluation/    judging a model on the held-out rows: loss, batched and static-cache generation, scores
                   (ROUGE-L, exact match, length, EOS-stop rate), the report files, W&B table, optional lm-eval
    patches/       the changes made to other libraries, each applied by one call that says what it did
    cli/           the user's commands: generate, merge, gguf_export (+ Ollama Modelfile), sweep, plots_page,
                   offline_workspace, compare_generations
"""
