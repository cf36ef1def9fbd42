"""The installed tool: console commands and imports that work from any folder (Ray's workers import
the installed package, not the checkout), and a wheel that runs a sweep and the Slurm launcher's check
outside any checkout."""
import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
import torch

from prmf import provenance, store

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
GRID = "base: Exp4\nset: {hidden_dim: 8, batch_size: 128}\ngrid:\n  kl_weight: [0.01, 0.02]\n"
SWEEP = ["--data", "synthetic", "--profile", "tiny", "--quick", "--epochs", "2", "--folds", "2", "--address", "local"]


def run(cmd, cwd, **env):
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "RAY_ADDRESS": "", "PYTHONPATH": "", **env})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_console_commands_and_a_notebook_run_a_sweep_from_any_folder(tmp_path, data_dir):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "grid.yaml").write_text(GRID)
    run([str(BIN / "prmf-grid"), *SWEEP, "--grid", "grid.yaml", "--name", "cli"], elsewhere)
    assert store.read_results(elsewhere / "runs" / "cli").trial_id.nunique() == 2  # runs/ under the folder it ran in
    notebook = f"from sweeps import grid; raise SystemExit(grid.main({[*SWEEP, '--grid', 'grid.yaml', '--name', 'nb']!r}))"
    run([sys.executable, "-c", notebook], elsewhere)
    assert store.read_results(elsewhere / "runs" / "nb").trial_id.nunique() == 2
    table = run([str(BIN / "prmf-best-results")], elsewhere).stdout  # default: runs/ here
    assert "P-RMF V2 (VAE)" in table and "MER2023-synthetic-tiny" in table


@pytest.fixture(scope="module")
def wheel_venv(tmp_path_factory):
    """A venv with only the wheel built from this checkout installed; its dependencies (torch, Ray,
    ...) from this venv, without its editable install of the checkout: a path in a .pth file is
    added as it is, the .pth files inside it are not read."""
    tmp = tmp_path_factory.mktemp("wheel")
    wheels = tmp / "wheels"
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(wheels), str(REPO)], tmp)
    wheel = next(wheels.glob("prmf_sweep-*.whl"))
    fresh = tmp / "fresh"
    run([sys.executable, "-m", "venv", "--without-pip", str(fresh)], tmp)
    run([sys.executable, "-m", "pip", "--python", str(fresh / "bin" / "python"), "install", "-q", "--no-deps",
         str(wheel)], tmp)
    site = subprocess.check_output([fresh / "bin" / "python", "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                   text=True).strip()
    Path(site, "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return fresh


def test_a_wheel_in_a_fresh_venv_runs_a_sweep_and_the_table_outside_any_checkout(wheel_venv, tmp_path, data_dir):
    fresh = wheel_venv
    outside = tmp_path / "outside"
    outside.mkdir()
    where = run([fresh / "bin" / "python", "-c", "import prmf, sweeps, analysis; print(prmf.__file__, sweeps.__file__)"],
                outside).stdout
    assert str(REPO) not in where and str(fresh) in where
    (outside / "grid.yaml").write_text(GRID)
    run([fresh / "bin" / "prmf-grid", *SWEEP, "--grid", "grid.yaml", "--name", "w"], outside)
    df = store.read_results(outside / "runs" / "w")
    assert df.trial_id.nunique() == 2 and not df.duplicated(store.RESULT_KEY).any()
    # no checkout around the installed code: the version installed, the commit the wheel was built from
    assert set(df.version) == {provenance.version()} and provenance.version() != "unknown"
    assert set(df.commit) == {provenance.git_commit()} != {"unknown"}
    record = json.loads((outside / "runs" / "w" / "provenance" / "run-000.json").read_text())
    assert record["version"] == record["versions"]["prmf-sweep"] == provenance.version()
    assert record["commit"] == provenance.git_commit().removesuffix("+dirty")
    table = run([fresh / "bin" / "prmf-best-results", "--result-dir", "runs"], outside).stdout
    assert "P-RMF V2 (VAE)" in table


def test_the_slurm_launcher_runs_its_check_from_a_wheel(wheel_venv, tmp_path):
    """`prmf-slurm --check` from an empty folder: the batch script is in the wheel, the check reads
    its #SBATCH defaults and names the installed package's sweep. (No Slurm controller here, so
    the check ends with one problem: sbatch's.)"""
    fresh = wheel_venv
    script = Path(run([fresh / "bin" / "prmf-slurm", "--script"], tmp_path).stdout.strip())
    assert script.is_file() and str(fresh) in str(script) and "#SBATCH --requeue" in script.read_text()
    env = {**os.environ, "PATH": f"{fresh / 'bin'}{os.pathsep}{BIN}{os.pathsep}{os.environ['PATH']}", "PYTHONPATH": "",
           "PRMF_DATA": "synthetic", "PRMF_STORAGE": str(tmp_path / "store"), "SLURM_CONF": str(tmp_path / "empty.conf")}
    (tmp_path / "empty.conf").write_text("")  # Slurm's clients fail at once on it (a missing one: a minute of retries)
    env.pop("PRMF_PYTHON", None)
    proc = subprocess.run([fresh / "bin" / "prmf-slurm", "--check", "-c", "2", "--gpus-per-node=0"], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=120)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1 and "Traceback" not in out, out
    assert "check: sbatch would request 1 node(s), 1 task(s) x 2 CPUs and 0 GPU(s) per node, time 04:00:00" in out, out
    assert f"check: torch {torch.__version__}" in out and f"in {fresh / 'bin' / 'python'}" in out, out
    assert f"sweep command: {fresh / 'bin' / 'python'} -m sweeps.ablation --num-gpus 0" in out, out
    assert "check: 1 problem(s) above; nothing was submitted" in out, out
    assert not (tmp_path / "store").exists()
