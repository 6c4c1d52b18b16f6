"""Tools around a run: plot.py draws runs' metrics.jsonl into one PNG."""
