"""The Alpaca data rules: records read and checked, split with a seed, rendered with the template, tokenized."""
