"""The user's commands, each `python -m alpaca_qlora.cli.<name> --help`: generate, merge, gguf_export,
plots_page, offline_workspace."""
