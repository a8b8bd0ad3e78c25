"""The pipeline's code, grouped by concern. Stage scripts under stages/ read params, call this, write outputs.

    params.py      params.yaml: the one list of keys, their types and bounds
    files.py       how outputs are written: atomic folders and files, stable JSON / JSONL, sha256
    provenance.py  what a run records about itself: library versions, device, git revision, peak memory,
                   the dvc command that reproduces it
    data/          the Alpaca rules: reading and checking records, the seeded split, template, formatting
    modeling/      the base model and the adapter: the backends (unsloth, hf), tokenizer, offline models,
                   checks before loading, the adapter folder and its metadata.json, its model card
    training/      the training run: SFTTrainer set-up, checkpoints and resume, data parallelism, tracking
    evaluation/    held-out loss and generation
    patches/       the changes made to other libraries, each applied by one call that says what it did
    cli/           the user's commands: generate, merge, gguf_export (+ Ollama Modelfile), sweep, plots_page,
                   offline_workspace
"""
