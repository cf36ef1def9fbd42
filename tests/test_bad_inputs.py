"""Every bad input a user can give a command: one line `error: ...` on stderr, exit 2, no traceback,
nothing written, and (where it can be checked up front) no Ray started and no training.

docs/BAD_INPUTS.md lists the same cases with what the user sees.
"""
import logging
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]

from analysis import best_results, report  # noqa: E402
from prmf import train  # noqa: E402
from sweeps import ablation, asha, driver, grid, plan, tune_adapter  # noqa: E402

from helpers import EMOS, FEATS, merbench_root  # noqa: E402



def one_error_line(capsys, expected):
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert "Traceback" not in err, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert expected in lines[0], lines[0]
    return lines[0]


def no_ray():
    import ray
    return not ray.is_initialized()


def write_zero_bytes(f):
    f.write_bytes(b"")


def write_strings(f):
    np.save(f, np.array(["a", "b", "c"]))


DATA_CASES = {
    "zero_byte_npy": (dict(feature=write_zero_bytes), "s1.npy: unreadable feature file"),
    "string_dtype_npy": (dict(feature=write_strings), "s1.npy: expected a numeric array, got <U1"),
    "valence_as_string": (dict(labels={"train": {"s1": {"emo": "happy", "val": "high"}}}),
                          "sample 's1' has valence 'high', not a number"),
    "empty_train_corpus": (dict(labels={"train": {}}), "label-6way.npz:train_corpus: no samples"),
}


@pytest.mark.parametrize("case", DATA_CASES)
def test_train_refuses_bad_dataset_files(case, tmp_path, capsys):
    kwargs, expected = DATA_CASES[case]
    root = merbench_root(tmp_path / "root", **kwargs)
    out = tmp_path / "out"
    assert train.main(["--data", str(root), "--features", ",".join(FEATS), "--out", str(out)]) == 2
    one_error_line(capsys, expected)
    assert not out.exists() and not (root / ".prmf-cache").exists()


def test_train_refuses_a_missing_label_file(tmp_path, capsys):
    root = merbench_root(tmp_path / "root")
    (root / "label-6way.npz").unlink()
    assert train.main(["--data", str(root), "--features", ",".join(FEATS), "--out", str(tmp_path / "out")]) == 2
    one_error_line(capsys, "label-6way.npz: label file not found")


def test_a_label_corpus_that_is_not_an_object_array_says_so(tmp_path, capsys):
    root = merbench_root(tmp_path / "root")
    train_corpus = {f"s{i}": {"emo": EMOS[i % 6], "val": 0.0} for i in range(12)}
    np.savez(root / "label-6way.npz", train_corpus=np.array(train_corpus, dtype=object), test1_corpus=np.arange(3))
    assert train.main(["--data", str(root), "--features", ",".join(FEATS), "--out", str(tmp_path / "out")]) == 2
    one_error_line(capsys, "label-6way.npz:test1_corpus: expected a pickled object array ({name: {'emo', 'val'}}), "
                           "got an array of int64, shape (3,)")


def test_sweep_refuses_a_bad_dataset_before_ray(tmp_path, capsys):
    root = merbench_root(tmp_path / "root", feature=write_zero_bytes)
    storage = tmp_path / "runs"
    assert ablation.main(["--data", str(root), "--features", ",".join(FEATS), "--storage", str(storage)]) == 2
    one_error_line(capsys, "s1.npy: unreadable feature file")
    assert not storage.exists() and no_ray()


def test_folds_above_the_smallest_class_are_refused_up_front(tmp_path, capsys, data_dir):
    root = merbench_root(tmp_path / "root")  # 2 samples per class
    args = ["--data", str(root), "--features", ",".join(FEATS), "--folds", "3"]
    assert train.main([*args, "--out", str(tmp_path / "out")]) == 2
    one_error_line(capsys, "--folds 3 is more than the 2 train samples of class")
    assert ablation.main([*args, "--storage", str(tmp_path / "runs")]) == 2
    one_error_line(capsys, "use --folds 2 or fewer")
    assert not (tmp_path / "out").exists() and not (tmp_path / "runs").exists() and no_ray()


@pytest.mark.parametrize("device, expected", [
    pytest.param("cuda", "--device cuda: CUDA is not available",
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")),
    ("gpu0", "--device 'gpu0': not a device"),
    ("cpu:x", "--device 'cpu:x': not a device"),
])
def test_train_refuses_a_device_this_machine_lacks(device, expected, tmp_path, capsys):
    root = merbench_root(tmp_path / "root")
    assert train.main(["--data", str(root), "--features", ",".join(FEATS), "--device", device,
                       "--out", str(tmp_path / "out")]) == 2
    one_error_line(capsys, expected)


def test_unwritable_outputs_are_refused_before_any_work(tmp_path, capsys):
    root = merbench_root(tmp_path / "root")
    blocker = tmp_path / "a-file"
    blocker.write_text("x")  # a folder below a file cannot be made, also by root (chmod would not stop root)
    assert train.main(["--data", str(root), "--features", ",".join(FEATS), "--folds", "2",
                       "--out", str(blocker / "out")]) == 2
    one_error_line(capsys, f"--out {blocker / 'out'} cannot be created: {blocker} is a file")
    assert ablation.main(["--data", str(root), "--features", ",".join(FEATS), "--folds", "2",
                          "--storage", str(blocker / "runs")]) == 2
    one_error_line(capsys, f"storage {blocker / 'runs'} cannot be created")
    assert no_ray()
    assert best_results.main(["--result-dir", str(tmp_path), "--output", str(blocker / "table.md")]) == 2
    one_error_line(capsys, "--output folder")
    assert report.main(["--result-dir", str(tmp_path), "--out", str(blocker / "report")]) == 2
    one_error_line(capsys, f"--out {blocker / 'report'} cannot be created")
    assert blocker.read_text() == "x"


def test_ablation_refuses_an_empty_experiment_list(tmp_path, capsys):
    assert ablation.main(["--experiments", ",", "--storage", str(tmp_path)]) == 2
    one_error_line(capsys, "--experiments ',' names no experiment")


def test_address_where_nothing_listens_fails_fast(tmp_path, capsys):
    with socket.socket() as s:  # a port that was free a moment ago: nothing listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    t0 = time.time()
    assert ablation.main(["--address", f"127.0.0.1:{port}", "--storage", str(tmp_path / "runs")]) == 2
    one_error_line(capsys, f"cannot reach Ray at 127.0.0.1:{port}")
    assert time.time() - t0 < 10 and no_ray() and not (tmp_path / "runs").exists()


@pytest.mark.parametrize("answer", [b"", b"HTTP/1.1 400 Bad Request\r\n\r\n"])
def test_address_where_something_else_listens_fails_fast_writing_nothing(answer, tmp_path, capsys):
    """A listener that is not Ray (silent, or an HTTP/1 server): Ray itself would retry for > 300 s."""
    import threading
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    port = server.getsockname()[1]
    accepted = []

    def serve():
        try:
            while True:
                conn, _ = server.accept()
                accepted.append(conn)  # held open, as a busy service would
                conn.sendall(answer)
        except OSError:  # the socket closed at the end of the test
            pass
    threading.Thread(target=serve, daemon=True).start()
    t0 = time.time()
    try:
        rc = ablation.main(["--address", f"127.0.0.1:{port}", "--storage", str(tmp_path / "runs")])
    finally:
        server.close()
        for conn in accepted:
            conn.close()
    assert rc == 2
    one_error_line(capsys, f"127.0.0.1:{port} is not a Ray GCS")
    assert time.time() - t0 < 15 and no_ray() and not (tmp_path / "runs").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_more_gpus_than_this_machine_has_are_refused_before_writing(tmp_path, capsys, data_dir):
    t0 = time.time()
    assert grid.main(["--num-gpus", "1", "--storage", str(tmp_path / "runs"), "--epochs", "3"]) == 2
    one_error_line(capsys, "--num-gpus 1 is more than this machine has (0 GPUs")
    assert time.time() - t0 < 10 and no_ray() and not (tmp_path / "runs").exists()


def test_a_restart_refused_for_its_tracker_deletes_nothing(tmp_path, capsys, data_dir, monkeypatch):
    pytest.importorskip("mlflow")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    kept = tmp_path / "runs" / "n" / "results" / "t.parquet"  # an earlier sweep's result
    kept.parent.mkdir(parents=True)
    kept.write_bytes(b"results")
    with socket.socket() as s:  # a port that was free a moment ago: nothing listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert ablation.main(["--experiments", "Exp1", "--profile", "tiny", "--storage", str(tmp_path / "runs"),
                          "--name", "n", "--restart", "--mlflow", f"http://127.0.0.1:{port}"]) == 2
    one_error_line(capsys, "cannot reach the tracking server")
    assert kept.read_bytes() == b"results" and no_ray()


def test_dashboard_without_its_packages_is_one_line(tmp_path, capsys):
    try:
        import ray.dashboard.optional_deps  # noqa: F401
        pytest.skip("ray[default] is installed here: the dashboard starts")
    except ImportError:
        pass
    assert ablation.main(["--dashboard", "--storage", str(tmp_path / "runs")]) == 2
    one_error_line(capsys, "--dashboard needs Ray's dashboard packages")
    assert no_ray() and not (tmp_path / "runs").exists()


# ---------------------------------------------------------------- grid YAML

def grid_file(tmp_path, text):
    path = tmp_path / "g.yaml"
    path.write_text(text)
    return str(path)


GRID_CASES = {
    "empty_value_list": ("grid: {kl_weight: []}", "grid 'kl_weight' has no values"),
    "list_valued_set": ("set: [1, 2]\ngrid: {kl_weight: [0.1]}", "set must be a mapping"),
    "list_valued_set_value": ("set: {lr: [0.1, 0.2]}\ngrid: {kl_weight: [0.1]}", "set 'lr': expected one value"),
    "list_valued_base": ("base: [Exp1, Exp4]\ngrid: {kl_weight: [0.1]}", "base ['Exp1', 'Exp4'] must be one experiment"),
    "grid_over_model": ("grid: {model: [attention, attention_robust]}", "a grid over model: run one grid per model"),
    "grid_over_model_with_model_base": ("base: attention\ngrid: {model: [attention_robust]}", "a grid over model"),
    "bad_value_type": ("grid: {kl_weight: [abc]}", "cannot read 'abc' as float"),
    "epochs_varied_under_asha": ("grid: {epochs: [5, 10]}", "the points differ in epochs (5, 10), but ASHA prunes"),
    "patience_varied_under_asha": ("grid: {patience: [3, 4]}", "the points differ in patience (3, 4)"),
}


@pytest.mark.parametrize("case", GRID_CASES)
def test_grid_yaml_mistakes_are_one_line(case, tmp_path, capsys):
    text, expected = GRID_CASES[case]
    assert grid.main(["--grid", grid_file(tmp_path, text), "--folds", "1000", "--storage", str(tmp_path / "runs")]) == 2
    one_error_line(capsys, expected)
    assert not (tmp_path / "runs").exists() and no_ray()


def sweep_of(tmp_path, text, *argv):
    args = grid.build_parser().parse_args(["--grid", grid_file(tmp_path, text), *argv])
    return grid.make_sweep(args)


def test_grid_reads_yaml_strings_as_the_numbers_they_mean_and_runs_each_value_once(tmp_path, capsys):
    sweep = sweep_of(tmp_path, "set: {lr: 1e-3}\ngrid: {kl_weight: [1e-2, 0.01, 2e-2]}")  # YAML 1.1: 1e-2 is a string
    assert [p.cfg.kl_weight for p in sweep.points] == [0.01, 0.02] and sweep.points[0].cfg.lr == 0.001
    assert "each value runs once" in capsys.readouterr().err


def test_grid_with_a_model_as_base_builds_that_model(tmp_path):
    sweep = sweep_of(tmp_path, "base: attention\ngrid: {hidden_dim: [16, 32]}")
    assert [(p.cfg.model, p.cfg.hidden_dim) for p in sweep.points] == [("attention", 16), ("attention", 32)]


@pytest.mark.parametrize("argv, grace, note", [
    (["--quick"], 15, "(the patience 40 clamped to the 15 epochs)"),
    (["--epochs", "5"], 5, "(the patience 40 clamped to the 5 epochs)"),
    (["--epochs", "5", "--grace-period", "9"], 5, "(the --grace-period 9 clamped to the 5 epochs)"),
    (["--epochs", "50"], 40, ""),
])
def test_grace_period_is_clamped_to_the_epochs(argv, grace, note, tmp_path):
    sweep = sweep_of(tmp_path, "grid: {kl_weight: [0.1]}", *argv)
    epochs = sweep.points[0].cfg.epochs
    assert plan.asha_horizon(sweep) == (epochs, 40, grace, f" {note}" if note else "")
    assert asha.milestones(grace, epochs) == ([] if grace == epochs else [40])


def test_epochs_may_vary_without_pruning(tmp_path):
    sweep = sweep_of(tmp_path, "grid: {epochs: [5, 10]}", "--no-asha")
    assert plan.asha_horizon(sweep)[0] == 10


def test_quick_line_shows_the_settings_in_use(tmp_path, capsys):
    assert ablation.main(["--quick", "--epochs", "3", "--set", "lr=0.01", "--folds", "1",
                          "--storage", str(tmp_path)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("quick settings: epochs=3, batch_size=64, lr=0.01 ") and err[1].startswith("error:")


# ---------------------------------------------------------------- left behind, Ray's hints

def test_stale_temp_files_are_removed_when_a_sweep_starts(tmp_path):
    root = tmp_path / "sweep"
    (root / "checkpoints").mkdir(parents=True)
    stale = [root / "checkpoints" / ".Exp4-abc.pt.k2j3.tmp", root / "results" / ".Exp4-abc.parquet.x1.tmp",
             root / ".pred-Exp4-abc.q9"]
    for p in stale:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"x")
    keep = [root / "checkpoints" / "Exp4-abc.pt", root / "checkpoints" / ".Exp4-new.pt.z.tmp"]
    for p in keep:
        p.write_bytes(b"x")
    old = time.time() - 60
    for p in stale + keep[:1]:
        os.utime(p, (old, old))
    assert driver._clean_stale_temp(root, started=time.time() - 30) == 3
    assert not any(p.exists() for p in stale) and all(p.exists() for p in keep)


def test_tunes_restore_hint_is_replaced_by_ours(capsys):
    log = logging.getLogger("ray.tune.tune")
    hint = tune_adapter._ResumeHint()
    log.addFilter(hint)
    try:
        assert not hint.filter(log.makeRecord(log.name, logging.WARNING, __file__, 1,
                                              "Resume experiment with: Tuner.restore(path=%r, trainable=...)",
                                              ("/x",), None))
        assert hint.interrupted  # the sweep then ends with "interrupted: kept N stored trials ...; run the same command again ..."
        assert hint.filter(log.makeRecord(log.name, logging.WARNING, __file__, 1, "other", (), None))
    finally:
        log.removeFilter(hint)


def test_a_script_entry_point_prints_one_line_not_a_traceback(tmp_path):
    path = grid_file(tmp_path, "base: attention\ngrid: {model: [attention_robust]}")
    proc = subprocess.run([sys.executable, str(REPO / "sweeps" / "grid.py"), "--grid", path], capture_output=True,
                          text=True, cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        f"error: {path}: a grid over model: run one grid per model, with the model "
        f"(attention, attention_robust, attention_robust_v2) or an experiment preset as base:"]


def test_an_experiment_named_twice_runs_once():
    args = ablation.build_parser().parse_args(["--experiments", "Exp1, Exp4,Exp1"])
    assert [p.label for p in ablation.make_sweep(args).points] == ["Exp1", "Exp4"]
