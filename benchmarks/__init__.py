"""Speed benchmarks and checks for the GPU path. Run as modules from the repository root; see BENCHMARKS.md."""
