"""Sweep definitions and their CLIs on Ray Tune (`ablation.py`, `grid.py`), sharing `core.py`."""
