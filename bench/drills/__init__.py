"""Chaos drills: `python -m bench.drills` (bench/drills/__main__.py)."""
