"""The installed tool: console commands and imports that work from any folder (Ray's workers import
the installed package, not the checkout), and a wheel that runs a sweep outside any checkout."""
import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path


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


def test_a_wheel_in_a_fresh_venv_runs_a_sweep_and_the_table_outside_any_checkout(tmp_path, data_dir):
    wheels = tmp_path / "wheels"
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(wheels), str(REPO)], tmp_path)
    wheel = next(wheels.glob("prmf_sweep-*.whl"))
    fresh = tmp_path / "fresh"
    run([sys.executable, "-m", "venv", "--without-pip", str(fresh)], tmp_path)
    run([sys.executable, "-m", "pip", "--python", str(fresh / "bin" / "python"), "install", "-q", "--no-deps",
         str(wheel)], tmp_path)
    # the dependencies (torch, Ray, ...) from this venv, without its editable install of the checkout:
    # a path in a .pth file is added as it is, the .pth files inside it are not read
    site = subprocess.check_output([fresh / "bin" / "python", "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                   text=True).strip()
    Path(site, "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
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
