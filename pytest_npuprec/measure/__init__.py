"""Measuring: capture records (and the checkpoint on disk) in, plain values out.

`thresholds.py` gives each metric's values per cell (prompt, position); `kinds.py` the values of each
check kind (determinism, perplexity, labels, thinking, ternary weights). Pass/fail and the messages
are the verdicts' job (verdicts/thresholds.py, verdicts/kinds.py mirror these two files).
"""
