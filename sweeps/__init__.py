"""Sweep definitions and their CLIs on Ray Tune (`ablation.py`, `grid.py`), sharing `cli.py` (flags), `definition.py` (a sweep as data), `plan.py`
(trials, packs), `driver.py` (checks, Ray, the run), `tune_adapter.py` and `pack_runner.py` (a pack's loop,
no Ray in it)."""
