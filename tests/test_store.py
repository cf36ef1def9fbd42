"""The result store: one row per (trial, seed, fold-or-aggregate, split), NPZ without pickle, atomic writes."""
import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from prmf import records, store
from prmf.config import preset_config
from prmf.engine import train_trial

FAST = dict(lr=3e-3, batch_size=64, hidden_dim=32, dropout=0.1, epochs=2)


@pytest.fixture(scope="module")
def trial(tiny_data):
    cfg = preset_config("Exp2", **FAST)
    return cfg, train_trial(cfg, tiny_data, seed=0)


def write(tmp_path, tiny_data, cfg, result, tid="Exp2-s0-x"):
    results, epochs, preds = records.tables(result, tid=tid, sweep="t", experiment="Exp2", cfg=cfg, seed=0,
                                            dataset=tiny_data, status="finished", wall_time_s=1.0)
    store.write_trial(tmp_path, tid, results, epochs, preds)
    return results


def test_store_round_trip_has_one_row_per_fold_or_aggregate_and_split(tmp_path, tiny_data, trial):
    cfg, result = trial
    write(tmp_path, tiny_data, cfg, result)
    write(tmp_path, tiny_data, cfg, result)  # the same trial written again replaces, never doubles
    df = store.read_results(tmp_path)
    assert len(df) == 4 * 6
    assert not df.duplicated(store.RESULT_KEY).any()
    agg = df[df.is_aggregate & (df.split == "test1")].iloc[0]
    assert agg.acc == pytest.approx(result.splits["test1"].metrics["acc"])
    assert agg.kl_weight == cfg.kl_weight and json.loads(agg.config_json)["use_vae"] is True
    assert agg.model == "attention_robust_v2" and agg.experiment == "Exp2" and set(df.random_streams) == {"member"}
    ep = store.read_epochs(tmp_path)
    assert len(ep) == 5 * 2 and set(ep.columns) >= {"trial_id", "fold", "epoch", "val_emoval", "train_loss", "val_mse"}
    assert (set(ep.sweep), set(ep.experiment)) == ({"t"}, {"Exp2"}) and not any(c.startswith("val_val") for c in ep)


def test_npz_predictions_are_merbench_named_and_load_without_pickle(tmp_path, tiny_data, trial):
    cfg, result = trial
    write(tmp_path, tiny_data, cfg, result)
    files = sorted((tmp_path / "predictions" / "Exp2-s0-x").glob("*.npz"))
    assert [f.name.split("_")[0] for f in files] == ["cv", "test1", "test2", "test3"]
    name = files[1].name
    m = result.splits["test1"].metrics
    assert name.startswith("test1_features:" + "+".join(sorted(tiny_data.features)))
    assert f"_dataset:{tiny_data.name}_model:attention_robust_v2+utt+None_f1:{m['f1']:.4f}_acc:{m['acc']:.4f}" in name
    z = np.load(files[1], allow_pickle=False)
    assert z["logits"].shape == (len(tiny_data.splits["test1"]), 6)
    assert np.array_equal(z["labels"], tiny_data.splits["test1"].emos)
    assert json.loads(str(z["config"]))["kl_weight"] == cfg.kl_weight
    cv = np.load(files[0], allow_pickle=False)
    assert sorted(set(cv["fold_ids"].tolist())) == [0, 1, 2, 3, 4]


def test_object_arrays_are_refused(tmp_path):
    import pandas as pd
    with pytest.raises(store.StoreError, match="dtype object"):
        store.write_trial(tmp_path, "t", pd.DataFrame({"a": [1]}), pd.DataFrame({"a": [1]}),
                          {"x.npz": {"names": np.array([{"a": 1}], dtype=object)}})
    assert store.completed_trials(tmp_path) == set()


def test_killed_writer_leaves_no_half_file(tmp_path):
    """A writer SIGKILLed mid-write leaves either nothing or a whole file, never a truncated one."""
    code = f"""
import os, signal, numpy as np, pandas as pd
import pyarrow.parquet as pq
from prmf import store
real = pq.write_table
def write_then_die(table, path, **kw):
    real(table, path, **kw)
    with open(path, 'r+b') as f: f.truncate(10)
    os.kill(os.getpid(), signal.SIGKILL)
pq.write_table = write_then_die
store.write_table({str(tmp_path / 'results' / 'a.parquet')!r}, pd.DataFrame({{'x': np.arange(1000)}}))
"""
    proc = subprocess.run([sys.executable, "-c", code])
    assert proc.returncode == -9
    assert not (tmp_path / "results" / "a.parquet").exists()
    assert store.read_results(tmp_path).empty  # the leftover temp file is not part of the store


def test_corrupt_result_file_is_a_clear_error(tmp_path, tiny_data, trial):
    cfg, result = trial
    write(tmp_path, tiny_data, cfg, result)
    (tmp_path / "results" / "bad.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(store.StoreError, match=r"bad\.parquet: unreadable results file"):
        store.read_results(tmp_path)


SEEDS_RE = r"f1:(\d+\.\d+)_acc:(\d+\.\d+)_val:(\d+\.\d+)"  # extract_best_results.py of the seeds


def test_every_npz_name_parses_with_the_seeds_regex_test3_included(tmp_path, tiny_data, trial):
    import re

    from prmf.data.merbench import NO_VALENCE
    cfg, result = trial
    results = write(tmp_path, tiny_data, cfg, result)
    files = sorted((tmp_path / "predictions").rglob("*.npz"))
    assert len(files) == 4
    for f in files:
        assert re.search(SEEDS_RE, f.name), f.name
    test3 = next(f for f in files if f.name.startswith("test3_"))
    sr = result.splits["test3"]
    assert np.isnan(sr.vals).all()  # the built-in set, like MER2023, has no test3 valence
    merbench_val = float(np.mean((sr.vals_pred.astype(np.float64) - NO_VALENCE) ** 2))
    assert float(re.search(SEEDS_RE, test3.name).group(3)) == pytest.approx(merbench_val, abs=6e-5)
    agg = results[results.is_aggregate & (results.split == "test3") & (results.scenario == "clean")]
    assert np.isnan(agg.val_mse.iloc[0])  # the Parquet keeps NaN: there is no valence to compare with


def test_dataset_names(tmp_path, tiny_root, data_dir):
    import shutil

    from prmf.data import load_data
    from prmf.data.synthetic import FEATURES
    root = tmp_path / "mer2023"
    shutil.copytree(tiny_root, root)
    assert load_data(str(root), FEATURES["tiny"]).name == "MER2023"
    assert load_data(str(root), FEATURES["tiny"], name="MyLab").name == "MyLab"  # also through the cache
    other = tmp_path / "my-set"
    shutil.copytree(tiny_root, other)
    assert load_data(str(other), FEATURES["tiny"]).name == "my-set"
    ds = load_data("synthetic", profile="tiny")
    assert (ds.name, ds.profile) == ("MER2023-synthetic-tiny", "tiny")


def test_a_store_of_schema_1_reads_as_the_current_schema(tmp_path):
    """Stores written before schema 2 (fold = -1 on aggregate rows, 'all' rows repeating clean,
    `val_val_mse` in the history, no version in the metadata) read as if written today."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    (tmp_path / "results").mkdir()
    (tmp_path / "epochs").mkdir()
    rows = pd.DataFrame({"trial_id": "old", "experiment": "Exp1", "model": "attention_robust_v2", "seed": 0,
                         "fold": [0, 1, -1, -1, -1],
                         "split": ["cv", "cv", "cv", "test1", "test1"], "scenario": ["clean"] * 4 + ["all"],
                         "f1": [0.5, 0.6, 0.55, 0.7, 0.7], "acc": [0.5, 0.6, 0.55, 0.7, 0.7]})
    pq.write_table(pa.Table.from_pandas(rows, preserve_index=False), tmp_path / "results" / "old.parquet")
    hist = pd.DataFrame({"trial_id": "old", "seed": 0, "fold": [0, 1], "epoch": 1, "val_val_mse": [1.0, 2.0]})
    pq.write_table(pa.Table.from_pandas(hist, preserve_index=False), tmp_path / "epochs" / "old.parquet")
    df = store.read_results(tmp_path)
    assert list(df.is_aggregate) == [False, False, True, True] and list(df.fold.isna()) == [False, False, True, True]
    assert "all" not in set(df.scenario) and df.fold.dropna().tolist() == [0, 1]
    assert set(df.random_streams) == {"pack"}  # trained when one generator fed a whole pack
    ep = store.read_epochs(tmp_path)
    assert list(ep.columns[:2]) == ["sweep", "experiment"] and ep.val_mse.tolist() == [1.0, 2.0]
    assert "val_val_mse" not in ep
    from analysis.results import scan  # the table's reader takes the same path
    assert sorted(scan([tmp_path]).split) == ["cv", "test1"]


def test_a_store_says_its_version_and_a_newer_one_or_no_store_is_refused(tmp_path, tiny_data, trial):
    import pyarrow.parquet as pq
    cfg, result = trial
    write(tmp_path, tiny_data, cfg, result)
    part = next((tmp_path / "results").glob("*.parquet"))
    assert pq.read_schema(part).metadata[store.SCHEMA_KEY] == str(store.SCHEMA_VERSION).encode()
    assert store.read_results(tmp_path).is_aggregate.sum() == 4  # one per split
    t = pq.read_table(part)
    pq.write_table(t.replace_schema_metadata({store.SCHEMA_KEY: b"99"}), part)
    with pytest.raises(store.StoreError, match="newer prmf-sweep"):
        store.read_results(tmp_path)
    with pytest.raises(store.StoreError, match="no result store here"):
        store.read_results(tmp_path / "nothing")


def test_stores_of_different_versions_read_as_one_table_as_the_docs_say(tmp_path, tiny_data, trial):
    """A store written before some columns existed beside today's: read_results over a glob, and the
    docs' DuckDB and polars queries on a glob of stores, all union the columns by name."""
    import pyarrow.parquet as pq
    cfg, result = trial
    new = write(tmp_path / "runs" / "new", tiny_data, cfg, result)
    write(tmp_path / "runs" / "old", tiny_data, cfg, result, tid="Exp2-s0-old")
    part = tmp_path / "runs" / "old" / "results" / "Exp2-s0-old.parquet"
    t = pq.read_table(part)  # as written before `version` and `commit` were columns
    pq.write_table(t.drop_columns(["version", "commit"]).replace_schema_metadata(t.schema.metadata), part)
    (tmp_path / "runs" / "notes").mkdir()  # a folder that is no store: the glob passes it by
    df = store.read_results(tmp_path / "runs" / "*")
    assert len(df) == 2 * len(new) and set(df.columns) == set(new.columns)
    old = df.trial_id == "Exp2-s0-old"
    assert df.version[old].isna().all() and (df.version[~old] == new.version.iloc[0]).all()
    assert len(store.read_results(tmp_path / "runs" / "new", tmp_path / "runs" / "old")) == len(df)
    files = str(tmp_path / "runs" / "*" / "results" / "*.parquet")
    duckdb = pytest.importorskip("duckdb")
    rows = duckdb.sql(f"SELECT trial_id, version FROM read_parquet('{files}', union_by_name = true)").df()
    assert len(rows) == len(df) and rows.version.isna().sum() == old.sum()
    pl = pytest.importorskip("polars")
    import glob
    frame = pl.concat([pl.scan_parquet(f) for f in glob.glob(files)], how="diagonal_relaxed").collect()
    assert frame.height == len(df) and set(frame.columns) == set(df.columns)
    with pytest.raises(store.StoreError, match="no result store matches"):
        store.read_results(tmp_path / "elsewhere" / "*")


def rows(tid, acc, model="attention", version_cols=True):
    """A trial's result rows as the writer takes them: 2 folds and the aggregate, cv, clean."""
    return pd.DataFrame({"trial_id": tid, "experiment": "Exp1", "model": model, "seed": 0,
                         "is_aggregate": [False, False, True], "fold": pd.array([0, 1, None], "Int64"),
                         "split": "cv", "scenario": "clean", "f1": acc, "acc": acc, "emoval": acc,
                         "status": "finished", "precision": "fp32"})


def test_the_index_follows_the_trial_files_and_is_rebuilt_when_lost(tmp_path, monkeypatch):
    """Reads go through DIR/index/results.parquet; trials added, rewritten or removed after it was
    written read as their files say, a deleted or damaged index is rebuilt, and a current index
    is read without opening any trial file."""
    from prmf.store import table
    monkeypatch.setattr(table, "RACY_NS", 0)  # trust files just written (the test writes within 2 s)
    for i in range(3):
        store.write_trial(tmp_path, f"t{i}", rows(f"t{i}", 0.5 + i / 10), pd.DataFrame({"epoch": [1]}), {})
    assert sorted(store.read_results(tmp_path).groupby("trial_id").acc.max()) == [0.5, 0.6, 0.7]
    assert store.index_path(tmp_path).exists()
    store.write_trial(tmp_path, "t1", rows("t1", 0.9), pd.DataFrame({"epoch": [1]}), {})  # rewritten
    store.write_trial(tmp_path, "t3", rows("t3", 0.8), pd.DataFrame({"epoch": [1]}), {})  # added
    store.trial_path(tmp_path, "t0").unlink()  # removed
    expect = {"t1": 0.9, "t2": 0.7, "t3": 0.8}
    assert store.read_results(tmp_path).groupby("trial_id").acc.max().to_dict() == expect
    written = store.index_path(tmp_path).stat().st_mtime_ns
    store.write_trial(tmp_path, "t4", rows("t4", 0.4), pd.DataFrame({"epoch": [1]}), {})  # a few new: read beside it
    expect["t4"] = 0.4
    assert store.read_results(tmp_path).groupby("trial_id").acc.max().to_dict() == expect
    assert store.index_path(tmp_path).stat().st_mtime_ns == written
    store.read_results(tmp_path, columns=["trial_id"], fold_in=0)  # a sweep's driver folds them in
    assert store.index_path(tmp_path).stat().st_mtime_ns != written

    def no_file_reads(*a, **k):
        raise AssertionError("a trial file was read although the index is current")
    monkeypatch.setattr(table, "read_file", no_file_reads)
    agg = store.read_results(tmp_path, columns=["trial_id", "acc"], filters=store.CLEAN_AGGREGATE)
    assert list(agg.columns) == ["trial_id", "acc"] and agg.set_index("trial_id").acc.to_dict() == expect
    monkeypatch.undo()
    monkeypatch.setattr(table, "RACY_NS", 0)
    store.index_path(tmp_path).write_bytes(b"PAR1 damaged")
    assert store.read_results(tmp_path).groupby("trial_id").acc.max().to_dict() == expect
    store.index_path(tmp_path).unlink()
    assert store.read_results(tmp_path).groupby("trial_id").acc.max().to_dict() == expect
    assert store.trial_result(tmp_path, "t3") == pytest.approx(0.8) and store.trial_result(tmp_path, "t0") is None


def test_a_file_changed_within_the_racy_window_is_read_again(tmp_path):
    """A file written just before the index could get the same mtime as a later rewrite: it is not
    trusted to the index, so a rewrite in place (same inode and size) is still seen."""
    import pyarrow.parquet as pq
    store.write_trial(tmp_path, "t0", rows("t0", 0.5), pd.DataFrame({"epoch": [1]}), {})
    assert store.read_results(tmp_path).acc.max() == 0.5
    part = store.trial_path(tmp_path, "t0")
    t = pq.read_table(part)
    pq.write_table(t.set_column(t.schema.get_field_index("acc"), "acc", pa_array([0.25] * 3)), part)  # in place
    assert store.read_results(tmp_path).acc.max() == 0.25


def pa_array(values):
    import pyarrow as pa
    return pa.array(values, pa.float64())


def test_compatibility_rules_live_once_in_compat():
    """Keys added later: their old value fills old rows and checkpoints; from IDS_KEPT_FROM on they
    are left out of trial ids at that value; the schema version follows from the keys."""
    from prmf import compat
    from prmf.config import TrialConfig, stable_dict
    assert compat.SCHEMA_VERSION == max(since for _, since in (*compat.LATER_KEYS.values(), *compat.LATER_COLUMNS.values())) == store.SCHEMA_VERSION
    ids = stable_dict(TrialConfig())
    assert "precision" not in ids and "optimizer" in ids  # precision (schema 4) kept old ids; schema 3 keys did not
    assert stable_dict(TrialConfig(precision="bf16-mixed"))["precision"] == "bf16-mixed"
    old = compat.upgrade_results(pd.DataFrame({"fidelity": ["seeds_code"], "acc": [0.5]}), 2)
    assert old.iloc[0][["fidelity", "optimizer", "precision"]].tolist() == ["design_plan", "adamw", "fp32"]
    assert compat.with_later_keys({"precision": "tf32"})["precision"] == "tf32"
