"""Evaluation: bits per byte, multiple-choice and generative benchmarks, the report card.

tasks.py (task files: TOML spec + JSONL; built-in ones in tasks/), backends.py (a local model or an
OpenAI-compatible endpoint), extract.py (answer extraction, exact match), runner.py (running and
scoring tasks), report.py (a run's report.md), lmeval.py (an lm-evaluation-harness adapter).
"""
