"""Benchmarks of llmcore against reference systems; ``python -m benchmarks`` runs the suite (see run.py)."""
