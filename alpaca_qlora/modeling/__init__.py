"""The base model and the adapter: loading per backend, the tokenizer, offline models, the adapter folder."""
