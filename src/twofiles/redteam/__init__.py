"""Attacks on a model, played through the real chat loop, and what each defence buys.

    suite.py    the attack-suite format (JSONL, one attack a line) and its loader
    suites/     the built-in suites, one file per family

What it leaves to others: the guards (twofiles.guard), the agent loop (twofiles.chat), training
(twofiles.train).
"""
