"""`make clean` removes what a rebuild restores (the venv), never results: `make clean-runs` does that."""
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(shutil.which("make") is None, reason="no make on this machine")
def test_clean_keeps_runs_and_clean_runs_removes_them(tmp_path):
    shutil.copy(REPO / "Makefile", tmp_path / "Makefile")
    (tmp_path / "venv").mkdir()
    (tmp_path / "runs" / "sweep" / "results").mkdir(parents=True)
    (tmp_path / "runs" / "sweep" / "results" / "t.parquet").write_bytes(b"results")
    clean = subprocess.run(["make", "-s", "clean", "VENV=venv"], cwd=tmp_path, capture_output=True, text=True)
    assert clean.returncode == 0, clean.stderr
    assert not (tmp_path / "venv").exists() and (tmp_path / "runs" / "sweep" / "results" / "t.parquet").exists()
    gone = subprocess.run(["make", "-s", "clean-runs"], cwd=tmp_path, capture_output=True, text=True)
    assert gone.returncode == 0, gone.stderr
    assert not (tmp_path / "runs").exists()
    assert "runs" in gone.stdout + gone.stderr  # says what it deleted
