"""Judging a model on the held-out rows: loss and perplexity, and greedy generations."""
