"""Benchmarks of the worker SDK, run as scripts: ``python bench/worker.py``."""
