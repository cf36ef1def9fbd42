"""Hostile and careless inputs, a full disk and signals, in process: one line saying what and where,
a non-zero exit, no traceback, and nothing written outside the command's folders (names are
checked before they become paths). docs/BAD_INPUTS.md lists the same cases. The sweeps that need a
real Ray (SIGTERM to a running sweep, a full disk under a sweep) are in test_hostile_sweeps.py."""
import os
import signal
import socket
import subprocess
import threading
import time

import numpy as np
import pandas as pd
import pytest

from analysis import report
from cluster.address import grpc_problem
from prmf import store, train
from prmf.data import load_data
from sweeps import ablation, driver, grid, stops
from sweeps.definition import SweepError

from helpers import EMOS, FEATS, merbench_root, write_root
from test_bad_inputs import no_ray, one_error_line

TRAIN = ["--features", ",".join(FEATS), "--folds", "2", "--epochs", "2", "--no-robustness"]


def files_under(path):
    return sorted(p.relative_to(path) for p in path.rglob("*")) if path.exists() else []


# ---------------------------------------------------------------- names are not paths

@pytest.mark.parametrize("name, expected", [
    ("n" * 300, "300 bytes long (at most 200)"),
    ("../escaped", "contains '/'"),
    ("..", "'..' is a folder reference"),
    ("a\udcff\udcfeb", "not valid UTF-8"),  # bytes of another encoding, as Python keeps them from argv
])
def test_a_sweep_name_that_is_not_one_folder_name_is_refused_writing_nothing(name, expected, tmp_path, capsys):
    storage = tmp_path / "box" / "runs"
    assert grid.main(["--storage", str(storage), "--name", name, "--epochs", "2"]) == 2
    assert one_error_line(capsys, expected).endswith("(it names the sweep's folder under --storage)")
    assert files_under(tmp_path) == [] and no_ray()


def test_a_sample_name_that_is_a_path_is_refused_before_any_file_is_read(tmp_path, capsys):
    labels = {"train": {f"s{i}": {"emo": EMOS[i % 6], "val": 0.0} for i in range(12)}}
    root = merbench_root(tmp_path / "root", labels)
    np.save(root / "label-6way.npy", np.ones(3, np.float32))  # what '../../label-6way' would reach from a feature folder
    labels["train"]["../../label-6way"] = {"emo": "happy", "val": 0.0}
    np.savez(root / "label-6way.npz", train_corpus=np.array(labels["train"], dtype=object))
    out = tmp_path / "out"
    assert train.main(["--data", str(root), *TRAIN, "--out", str(out)]) == 2
    one_error_line(capsys, "label-6way.npz:train_corpus: sample name '../../label-6way': contains '/'")
    assert not out.exists() and not (root / ".prmf-cache").exists()


def test_feature_folder_and_dataset_names_that_are_paths_are_refused(tmp_path, capsys):
    root = merbench_root(tmp_path / "root")
    (tmp_path / "elsewhere").mkdir()
    assert train.main(["--data", str(root), "--features", "a-UTT,../../elsewhere,v-UTT", "--out", str(tmp_path / "o")]) == 2
    one_error_line(capsys, "feature folder name '../../elsewhere': contains '/'")
    assert train.main(["--data", str(root), *TRAIN, "--dataset-name", "x/../../y", "--out", str(tmp_path / "o")]) == 2
    one_error_line(capsys, "--dataset-name 'x/../../y': contains '/'")
    assert not (tmp_path / "o").exists()


# ---------------------------------------------------------------- data files

def test_a_symlink_loop_in_a_feature_folder_is_one_line(tmp_path, capsys):
    root = merbench_root(tmp_path / "root")
    (root / "features" / FEATS[0] / "stray.npy").symlink_to("stray.npy")  # not a sample: ignored
    sample = root / "features" / FEATS[1] / "s1.npy"
    sample.unlink()
    sample.symlink_to("s1.npy")
    assert train.main(["--data", str(root), *TRAIN, "--out", str(tmp_path / "out")]) == 2
    one_error_line(capsys, f"{sample}: cannot be read (Too many levels of symbolic links)")
    folder = root / "features" / FEATS[2]
    for f in folder.iterdir():
        f.unlink()
    folder.rmdir()
    folder.symlink_to(FEATS[2])
    assert train.main(["--data", str(root), *TRAIN, "--out", str(tmp_path / "out")]) == 2
    one_error_line(capsys, f"{folder}: cannot be read (Too many levels of symbolic links)")
    assert not (tmp_path / "out").exists()


def test_a_feature_file_that_is_a_fifo_is_refused_not_waited_on(tmp_path, capsys):
    root = merbench_root(tmp_path / "root")
    fifo = root / "features" / FEATS[1] / "s1.npy"
    fifo.unlink()
    os.mkfifo(fifo)  # np.load would block until a writer came
    assert train.main(["--data", str(root), *TRAIN, "--out", str(tmp_path / "out")]) == 2
    one_error_line(capsys, f"{fifo}: not a regular file")


def test_the_mixed_dimension_error_names_the_odd_file_even_when_it_is_read_first(tmp_path, capsys):
    root = merbench_root(tmp_path / "root")
    odd = root / "features" / FEATS[1] / "s0.npy"  # s0 sorts first
    np.save(odd, np.ones(5, np.float32))
    assert train.main(["--data", str(root), *TRAIN, "--out", str(tmp_path / "out")]) == 2
    one_error_line(capsys, f"{odd}: shape (5,) does not match (D,) with D = 3 of the other 11 samples")


def test_a_sample_in_train_and_a_test_split_is_refused_unless_allowed(tmp_path, capsys):
    train_corpus = {f"s{i}": {"emo": EMOS[i % 6], "val": 0.0} for i in range(12)}
    test1 = {"s3": {"emo": "sad", "val": 0.0}, "t1": {"emo": "happy", "val": 0.0}}
    root = write_root(tmp_path / "root", {"train": train_corpus, "test1": test1}, FEATS, lambda k, i: np.ones(3, np.float32))
    out = tmp_path / "out"
    assert train.main(["--data", str(root), *TRAIN, "--out", str(out)]) == 2
    one_error_line(capsys, "label-6way.npz: 1 sample(s) of test1 are also in train ('s3'): a test leak")
    assert ablation.main(["--data", str(root), "--features", ",".join(FEATS), "--storage", str(tmp_path / "runs")]) == 2
    one_error_line(capsys, "pass --allow-split-overlap")
    assert not out.exists() and not (tmp_path / "runs").exists() and no_ray()
    ds = load_data(str(root), FEATS, allow_overlap=True)
    assert "s3" in ds.splits["test1"].names
    assert "kept (--allow-split-overlap)" in capsys.readouterr().err


@pytest.mark.parametrize("text, expected", [
    ("grid:\n  kl_weight: [0.1, 0.2]\n  recon_weight: [0.1]\n  kl_weight: [0.3]\n",
     "cannot read grid (key 'kl_weight' is given twice (line 4)"),
    (b"grid: {kl_weight: [0.1]}\n\xfb\xff\n", "cannot read grid ('utf-8' codec can't decode byte 0xfb"),
])
def test_a_grid_key_given_twice_or_a_file_not_in_utf8_is_refused(text, expected, tmp_path, capsys):
    path = tmp_path / "g.yaml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    assert grid.main(["--grid", str(path), "--storage", str(tmp_path / "runs")]) == 2
    one_error_line(capsys, expected)
    assert not (tmp_path / "runs").exists()


# ---------------------------------------------------------------- resources, --address

def test_more_cpus_per_trial_than_this_machine_has_are_refused_before_a_folder_exists(tmp_path, capsys):
    assert grid.main(["--cpus-per-trial", str((os.cpu_count() or 1) + 62), "--storage", str(tmp_path / "runs"),
                      "--epochs", "2"]) == 2
    one_error_line(capsys, f"is more than this machine has ({os.cpu_count()} CPUs): no trial could ever start")
    assert files_under(tmp_path) == [] and no_ray()


def test_a_cluster_without_a_node_large_enough_is_waited_for_then_refused(monkeypatch, capsys):
    import ray
    nodes = [{"Alive": True, "Resources": {"CPU": 2.0}}, {"Alive": False, "Resources": {"CPU": 64.0}}]
    monkeypatch.setattr(ray, "nodes", lambda: nodes)  # what a joined cluster of one live 2-CPU node answers
    monkeypatch.setattr(ray, "shutdown", lambda: None)
    monkeypatch.setenv("PRMF_NODE_WAIT_S", "0.2")
    with pytest.raises(SweepError, match=r"needs a node with 64 CPUs, the largest of its 1 node has 2 CPUs \(waited 0.2 s"):
        stops.wait_for_a_node(64, 0, "10.0.0.1:6379")
    assert "waiting up to 0.2 s for a node with 64 CPUs to join" in capsys.readouterr().err
    nodes.append({"Alive": True, "Resources": {"CPU": 64.0}})  # a node joined
    stops.wait_for_a_node(64, 0, "10.0.0.1:6379")


def test_an_address_that_hangs_up_says_when(capsys):
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()

    def hang_up():
        conn, _ = server.accept()
        time.sleep(0.5)
        conn.close()
    threading.Thread(target=hang_up, daemon=True).start()
    try:
        problem = grpc_problem("127.0.0.1", server.getsockname()[1], timeout=5)
    finally:
        server.close()
    assert problem.startswith("it accepted the connection, then closed it after 0.") and "without answering" in problem


# ---------------------------------------------------------------- foreign files in a store

def foreign_parquet(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"x": [1.0, 2.0]}).to_parquet(path)


@pytest.fixture(scope="module")
def stored_trial(tmp_path_factory):
    """One prmf.train run of a 2-fold, 2-epoch trial: its store (read-only for the tests)."""
    d = tmp_path_factory.mktemp("stored")
    root = merbench_root(d / "root")
    assert train.main(["--data", str(root), *TRAIN, "--out", str(d / "out")]) == 0
    return root, d / "out"


def test_a_foreign_parquet_file_in_a_store_is_left_out_with_one_warning(stored_trial, tmp_path, capsys):
    import shutil
    out = tmp_path / "out"
    shutil.copytree(stored_trial[1], out)
    foreign_parquet(out / "results" / "notes.parquet")
    with pytest.raises(store.StoreError, match="notes.parquet: not a results file of this store"):
        store.read_results(out)
    warned = []
    rows = store.read_results(out, warn=warned.append)
    assert rows.trial_id.nunique() == 1 and len(warned) == 1
    assert store.trial_result(out, "notes") is None  # the progress line's best and a search's objective skip it
    capsys.readouterr()
    driver.summary(rows)  # the sweep's summary, where the foreign file was a TypeError
    assert report.main(["--result-dir", str(out), "--out", str(tmp_path / "report")]) == 0
    err = capsys.readouterr().err
    assert "Traceback" not in err and "notes.parquet: not a results file of this store" in err
    assert "unnamed" not in (tmp_path / "report" / "report.md").read_text()


# ---------------------------------------------------------------- signals and a full disk (prmf.train)

@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_during_training_is_one_line_and_stores_nothing(sig, code, stored_trial, tmp_path, monkeypatch, capsys):
    progress = train.Progress.__call__

    def signalled(self, epoch, score):  # the signal arrives while the engine trains
        os.kill(os.getpid(), sig)
        return progress(self, epoch, score)
    monkeypatch.setattr(train.Progress, "__call__", signalled)
    out = tmp_path / "out"
    assert train.main(["--data", str(stored_trial[0]), *TRAIN, "--out", str(out)]) == code
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.strip().splitlines()[-1] == (
        f"interrupted ({signal.Signals(sig).name}): no trial was stored in {out}; run the same command again to train it")
    assert not out.exists()
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # handlers given back


def test_signals_take_sigterm_from_a_library_but_leave_an_ignored_sigint_ignored():
    """ray.init sets a SIGTERM handler of its own (sys.exit, then Ray's C++ stack dump): install()
    takes it back; a SIGINT ignored by the shell (a background job) stays ignored; exit restores both."""
    def rays(signum, frame):
        raise SystemExit(signum)
    old = signal.signal(signal.SIGINT, signal.SIG_IGN), signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        with train.Signals() as signals:
            signal.signal(signal.SIGTERM, rays)  # what ray.init does
            signals.install()
            assert signal.getsignal(signal.SIGTERM) == signals.handler
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL and signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, old[0])
        signal.signal(signal.SIGTERM, old[1])


def test_sigterm_to_a_sweep_before_its_folder_exists_is_one_line(tmp_path, monkeypatch, capsys, data_dir):
    load = driver.load_data

    def signalled(*args, **kw):  # while the driver reads the data, before any folder is made
        os.kill(os.getpid(), signal.SIGTERM)
        return load(*args, **kw)
    monkeypatch.setattr(driver, "load_data", signalled)
    assert ablation.main(["--profile", "tiny", "--storage", str(tmp_path / "runs")]) == 143
    assert capsys.readouterr().err.strip().splitlines()[-1] == \
        "interrupted (SIGTERM) before the sweep folder was made: nothing was written"
    assert files_under(tmp_path) == [] and no_ray()


def test_sigterm_at_any_store_write_then_the_same_write_leaves_every_row_once(stored_trial, tmp_path, monkeypatch):
    """A trial's files are written to temporary names and renamed, the results file last: a SIGTERM
    at any rename leaves no temporary file and no trial half there, and writing it again stores
    each row once."""
    src = stored_trial[1]
    tid = next(iter(store.completed_trials(src)))
    results = store.read_results(src)
    epochs = store.read_epochs(src)
    preds = {p.name: dict(np.load(p)) for p in (src / "predictions" / tid).iterdir()}
    replace = os.replace
    for k in range(3):  # the predictions folder, the epochs file, the results file
        out, calls = tmp_path / f"out{k}", []

        def killed_at_k(a, b, k=k, calls=calls):
            calls.append(b)
            if len(calls) == k + 1:
                os.kill(os.getpid(), signal.SIGTERM)  # under prmf.interrupt.Signals: a KeyboardInterrupt here
            return replace(a, b)
        monkeypatch.setattr(os, "replace", killed_at_k)
        with train.Signals(), pytest.raises(KeyboardInterrupt):
            store.write_trial(out, tid, results, epochs, preds)
        monkeypatch.setattr(os, "replace", replace)
        assert [p for p in out.rglob("*") if p.is_file()] == [] and store.completed_trials(out) == set()
        store.write_trial(out, tid, results, epochs, preds)
        again = store.read_results(out)
        assert len(again) == len(results) and not again.duplicated(store.RESULT_KEY).any()


def test_a_full_disk_under_train_out_is_one_line_and_the_same_command_resumes(stored_trial, tmp_path, capsys):
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    mnt = tmp_path / "small"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("mount -t tmpfs is not allowed here (a container without CAP_SYS_ADMIN)")
    try:
        filler = mnt / "filler"
        with open(filler, "wb") as f:  # all but 16 KiB taken: a trial's files do not fit
            f.write(b"\0" * (240 * 1024))
        argv = ["--data", str(stored_trial[0]), *TRAIN, "--out", str(mnt / "out")]
        assert train.main(argv) == 1
        err = capsys.readouterr().err
        assert "Traceback" not in err and err.strip().splitlines()[-1].startswith(
            f"error: the disk holding {mnt / 'out'} is full (No space left on device) while storing trial ")
        assert [p for p in (mnt / "out").rglob("*") if p.is_file()] == []  # nothing half-written
        filler.unlink()  # space freed: the same command stores the trial
        assert train.main(argv) == 0
        rows = store.read_results(mnt / "out")
        assert rows.trial_id.nunique() == 1 and not rows.duplicated(store.RESULT_KEY).any()
    finally:
        subprocess.run(["umount", str(mnt)], check=False)
