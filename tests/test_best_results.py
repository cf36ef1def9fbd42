"""analysis/best_results.py: MERBench file names and store rows -> best per (model, split)."""
import argparse
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

REPO = Path(__file__).resolve().parent.parent

from analysis import best_results  # noqa: E402
from analysis.results import JSON_KEYS, features_key, parse_name, scan, select_best  # noqa: E402
from prmf.data import dataset_name  # noqa: E402
from prmf.store import prediction_name, write_trial  # noqa: E402

SCRIPT = REPO / "analysis" / "best_results.py"
FEATS = "Baichuan-13B-Base-UTT+chinese-hubert-large-UTT+CLIP-ViT-large-patch14-UTT"


def mer_name(split, model, f1, acc, val="0.6317", ts=1769910916, dataset=None, model_field=None):
    ds = f"_dataset:{dataset}" if dataset else ""
    field = model_field or f"{model}+utt+None"
    return f"{split}_features:{FEATS}{ds}_model:{field}_f1:{f1}_acc:{acc}_val:{val}_{ts}.npz"


def save_args_npz(path: Path, pickled=True):
    """A file shaped like MERBench's: only `args`, a pickled Namespace (or a small plain array)."""
    args = np.array(argparse.Namespace(model="attention", lr=1e-3), dtype=object) if pickled else np.arange(3)
    np.savez(path, args=args)


class Trap:
    """Unpickling this creates `marker` (a stand-in for arbitrary code in a foreign pickle)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def save_trap_npz(path: Path, marker: Path):
    arr = np.empty((), dtype=object)
    arr[()] = Trap(marker)
    np.savez(path, args=arr)  # np.save(allow_pickle=True) of an object array, as args.npy


@pytest.fixture
def merbench(tmp_path):
    """A MERBench-style result folder with decoys, a tie, junk, a truncated file and a trap."""
    root = tmp_path / "MERBench" / "saved-trimodal"
    res = root / "result"
    res.mkdir(parents=True)
    (root / "older" / "result").mkdir(parents=True)
    save_args_npz(res / mer_name("cv", "attention", "0.7366", "0.7376"))
    save_args_npz(res / mer_name("cv", "attention", "0.7600", "0.7300"), pickled=False)  # higher F1, lower ACC
    save_args_npz(res / mer_name("test1", "attention", "0.7956", "0.7956", model_field="attention+utt"))
    # tie on ACC: the higher F1 wins
    save_args_npz(res / mer_name("cv", "attention_robust_v2", "0.7500", "0.7593", ts=1))
    save_args_npz(res / mer_name("cv", "attention_robust_v2", "0.7586", "0.7593", ts=2))
    # our own naming (dataset field, val nan), nested one level deeper
    save_args_npz(root / "older" / "result" / mer_name("test3", "attention_robust_v2", "0.8995", "0.9029",
                                                        val="nan", dataset="MER2023"))
    save_args_npz(res / mer_name("test2", "attention_robust", "0.7609", "0.7621"))
    save_args_npz(res / mer_name("test1", "attention_robust_v5", "0.8113", "0.8127"))
    save_args_npz(res / mer_name("test1", "misa", "0.7000", "0.7100"))
    # junk: an unparsable name, a truncated NPZ whose name would win, a non-NPZ file
    save_args_npz(res / "f1.npz")
    (res / mer_name("cv", "attention", "0.9900", "0.9900")).write_bytes(b"PK\x03\x04 truncated garbage")
    (res / "notes.txt").write_text("not a result")
    # a pickle that would create a file if anything loaded it
    marker = tmp_path / "PWNED"
    save_trap_npz(res / mer_name("test3", "attention_robust", "0.8910", "0.8945"), marker)
    return root, marker


def make_results(trial_id, model, experiment, seed, clean, decoy=0.99, dataset="MER2023", features=FEATS,
                 status="ok"):
    """Result rows of one trial: per-fold rows and a robustness scenario as decoys, plus the
    aggregate clean rows `clean` = {split: (f1, acc, val_mse)}."""
    rows = []

    def add(fold, split, scenario, f1, acc, val):
        rows.append(dict(trial_id=trial_id, experiment=experiment, model=model, seed=seed,
                         is_aggregate=fold is None, fold=fold,
                         split=split, scenario=scenario, f1=f1, acc=acc, val_mse=val, emoval=f1 - 0.25 * val,
                         best_epoch=30, epochs_run=70, wall_time_s=12.5, status=status,
                         features=features, dataset=dataset, lr=3e-4, hidden_dim=128))

    for fold in range(5):
        add(fold, "cv", "clean", decoy, decoy, 0.5)
    for split, (f1, acc, val) in clean.items():
        add(None, split, "clean", f1, acc, val)
        add(None, split, "missing_audio", decoy, decoy, 0.5)
    return pd.DataFrame(rows)


def make_epochs(trial_id):
    return pd.DataFrame(dict(trial_id=trial_id, fold=0, epoch=[1, 2], train_loss=[1.0, 0.8], val_loss=[1.1, 0.9]))


@pytest.fixture
def store(tmp_path):
    """A store with two ablation trials of V2 and one baseline trial, with a winning decoy NPZ."""
    s = tmp_path / "runs" / "ablation"
    decoy = prediction_name("cv", ["a", "b", "c"], "MER2023", "attention_robust_v2", "utt",
                            0.999, 0.999, math.nan, 1769910916)
    write_trial(s, "t4", make_results("t4", "attention_robust_v2", "Exp4", 0,
                                      {"cv": (0.7586, 0.7593, 0.63), "test1": (0.8348, 0.8345, 0.64)}),
                make_epochs("t4"), predictions={decoy: {"logits": np.zeros((2, 6)), "labels": np.arange(2)}})
    write_trial(s, "t1", make_results("t1", "attention_robust_v2", "Exp1", 1,
                                      {"cv": (0.7700, 0.7650, 0.62), "test1": (0.8200, 0.8210, 0.65)}),
                make_epochs("t1"), predictions={})
    write_trial(s, "b0", make_results("b0", "attention", None, 0, {"cv": (0.7366, 0.7376, 0.66)}),
                make_epochs("b0"), predictions={})
    return s


def best_map(best):
    return {(r.display_name, r.split): (r.f1, r.acc) for r in best.itertuples()}


# ---------------------------------------------------------------- names


def test_parse_name_merbench_and_own_formats():
    seeds_example = ("cv_features:Baichuan-13B-Base-UTT+chinese-hubert-large-UTT+CLIP-ViT-large-patch14-UTT"
                     "_model:attention_robust_v2+utt+None_f1:0.7586_acc:0.7593_val:0.6317_1769910916.npz")
    info = parse_name(seeds_example)
    assert info["split"] == "cv" and info["model"] == "attention_robust_v2" and info["feat_type"] == "utt"
    assert (info["f1"], info["acc"], info["val"]) == (0.7586, 0.7593, 0.6317)
    assert info["dataset"] is None and info["features"].startswith("Baichuan")

    ours = parse_name(prediction_name("test3", ["b", "a"], "MER2023", "attention", "utt",
                                      0.5, 0.25, math.nan, 123))
    assert ours["dataset"] == "MER2023" and ours["model"] == "attention" and ours["features"] == "a+b"
    assert ours["split"] == "test3" and (ours["f1"], ours["acc"]) == (0.5, 0.25) and math.isnan(ours["val"])

    short = parse_name(mer_name("test1", None, "0.1", "0.2", model_field="attention+utt"))
    assert short["model"] == "attention" and short["feat_type"] == "utt" and short["e2e"] is None

    frm = parse_name(mer_name("cv", None, "0.1", "0.2", model_field="tfn+frm_align+None"))
    assert (frm["model"], frm["feat_type"], frm["e2e"]) == ("tfn", "frm_align", "None")

    for bad in ("f1.npz", "att_test1.npz", "misa_cv.npz",
                "cv_features:a_model:attention+utt+None_f1:x_acc:0.1_val:0.1_1.npz"):
        assert parse_name(bad) is None


# ---------------------------------------------------------------- MERBench folders


def test_merbench_folder_best_rows_and_warnings(merbench):
    root, marker = merbench
    warnings = []
    cands = scan([root], warn=warnings.append)
    best = best_map(select_best(cands))
    assert best[("Baseline (v0)", "cv")] == (0.7366, 0.7376)  # not the higher-F1 decoy, not the truncated file
    assert best[("Baseline (v0)", "test1")] == (0.7956, 0.7956)  # 'attention+utt' -> attention
    assert best[("P-RMF V2 (VAE)", "cv")] == (0.7586, 0.7593)  # tie on ACC broken by F1
    assert best[("P-RMF V2 (VAE)", "test3")] == (0.8995, 0.9029)  # recursive, own naming
    assert best[("Robust v1 (Dropout)", "test2")] == (0.7609, 0.7621)
    assert best[("Robust v1 (Dropout)", "test3")] == (0.8910, 0.8945)  # counted by name, never loaded
    assert best[("Robust v5", "test1")] == (0.8113, 0.8127)
    assert best[("misa", "test1")] == (0.7, 0.71)
    assert len(best) == 8

    assert len(warnings) == 2
    assert any("f1.npz" in w and "name" in w for w in warnings)
    assert any("0.9900" in w and "not a readable NPZ" in w for w in warnings)
    assert not marker.exists()


def test_trap_really_fires_when_unpickled(tmp_path):
    """Guard for the test above: the trap file does create its marker when loaded with pickle."""
    marker = tmp_path / "fired"
    path = tmp_path / "trap.npz"
    save_trap_npz(path, marker)
    with np.load(path, allow_pickle=True) as z:
        z["args"]
    assert marker.exists()


def test_metric_f1_prefers_f1(merbench):
    root, marker = merbench
    best = best_map(select_best(scan([root], warn=lambda m: None), metric="f1"))
    assert best[("Baseline (v0)", "cv")] == (0.76, 0.73)
    assert not marker.exists()


def test_same_dir_twice_counts_once(merbench):
    root, _ = merbench
    once = scan([root], warn=lambda m: None)
    twice = scan([root, root / "result", root], warn=lambda m: None)
    assert len(twice) == len(once) == 10


def test_real_renamed_files_are_skipped_with_warning(tmp_path, capsys, shared):
    real = shared("data", "merbench-results")
    assert list(real.glob("*.npz")), f"{real}: holds no MERBench result files"
    folder = tmp_path / "real"
    folder.mkdir()
    names = []
    for f in sorted(real.glob("*.npz")):
        shutil.copy(f, folder / f.name)
        names.append(f.name)
    warnings = []
    assert scan([folder], warn=warnings.append).empty
    assert len(warnings) == len(names)
    for name in names:
        assert sum(name in w for w in warnings) == 1

    assert best_results.main(["--result-dir", str(folder)]) == 2
    err = capsys.readouterr().err
    assert "no results found" in err and err.count("warning:") == len(names)


# ---------------------------------------------------------------- stores


def test_store_rows_not_its_predictions(store):
    warnings = []
    cands = scan([store], warn=warnings.append)
    assert warnings == []
    assert len(cands) == 5  # aggregate clean rows only: 2 + 2 + 1
    best = select_best(cands)
    got = {(r.model, r.split): r for r in best.itertuples()}
    v2cv = got[("attention_robust_v2", "cv")]
    assert (v2cv.f1, v2cv.acc, v2cv.val) == (0.77, 0.765, 0.62)  # Exp1 beats Exp4 on cv ACC
    assert v2cv.source == f"{store}#t1" and v2cv.display_name == "P-RMF V2 (VAE)"
    assert got[("attention_robust_v2", "test1")].source == f"{store}#t4"
    assert got[("attention", "cv")].acc == 0.7376
    assert 0.99 not in set(best["acc"]) and 0.999 not in set(best["acc"])


def test_by_experiment(store):
    best = select_best(scan([store]), by="experiment")
    assert list(dict.fromkeys(best["display_name"])) == [
        "Baseline (v0)", "P-RMF: V1 baseline (Exp1)", "P-RMF full (Exp4)"]
    rows = best_map(best)
    assert rows[("P-RMF full (Exp4)", "cv")] == (0.7586, 0.7593)
    assert rows[("P-RMF: V1 baseline (Exp1)", "test1")] == (0.82, 0.821)


def test_corrupt_parquet_skips_only_itself(store, merbench, tmp_path):
    broken = tmp_path / "runs" / "broken"
    write_trial(broken, "ok", make_results("ok", "attention", None, 0, {"cv": (0.9, 0.9, 0.5)}),
                make_epochs("ok"), predictions={})
    (broken / "results" / "zz.parquet").write_bytes(b"PAR1 this is not parquet")
    root, _ = merbench
    warnings = []
    best = select_best(scan([tmp_path / "runs", root], warn=warnings.append))
    store_warnings = [w for w in warnings if "zz.parquet" in w]
    assert len(store_warnings) == 1 and str(broken / "results" / "zz.parquet") in store_warnings[0]
    got = {(r.dataset, r.display_name, r.split): (r.f1, r.acc, r.source) for r in best.itertuples()}
    assert got[("MER2023", "P-RMF V2 (VAE)", "test1")][:2] == (0.8348, 0.8345)  # from the good store
    assert got[("MER2023", "Baseline (v0)", "cv")] == (0.9, 0.9, f"{broken}#ok")  # the good trial beside the bad file


def test_nonsense_metrics_in_names_are_rejected_and_json_stays_json(tmp_path, capsys):
    res = tmp_path / "result"
    res.mkdir()
    save_args_npz(res / mer_name("cv", "attention", "0.7000", "0.7100"))
    for acc in ("inf", "12345", "-0.5", "nan"):
        save_args_npz(res / mer_name("cv", "attention", "0.5000", acc, ts=7))
    save_args_npz(res / mer_name("test1", "attention", "1.5", "0.8"))  # F1 > 1
    save_args_npz(res / mer_name("test1", "attention", "0.8", "0.8", val="-1.0"))  # negative MSE
    save_args_npz(res / mer_name("test2", "attention", "0.6", "0.6", val="inf"))
    assert best_results.main(["--result-dir", str(res), "--json"]) == 0
    out = capsys.readouterr()
    records = json.loads(out.out, parse_constant=lambda c: pytest.fail(f"not JSON: {c}"))
    assert [(r["split"], r["acc"]) for r in records] == [("cv", 0.71)]
    warnings = out.err.strip().splitlines()
    warnings = [w for w in warnings if w.startswith("warning:")]
    assert len(warnings) == 7
    for acc in ("acc:inf", "acc:12345", "acc:-0.5", "acc:nan", "f1:1.5", "val:-1.0", "val:inf"):
        assert sum(acc in w for w in warnings) == 1, acc


def test_nonsense_metrics_in_a_store_row_are_rejected(tmp_path):
    s = tmp_path / "store"
    write_trial(s, "good", make_results("good", "attention", None, 0, {"cv": (0.7, 0.7, 0.5)}), make_epochs("good"), {})
    write_trial(s, "bad", make_results("bad", "attention", None, 0, {"cv": (0.7, math.inf, 0.5)}), make_epochs("bad"), {})
    warnings = []
    best = select_best(scan([s], warn=warnings.append))
    assert list(best["acc"]) == [0.7] and best["source"][0].endswith("#good")
    assert len(warnings) == 1 and "bad.parquet" in warnings[0] and "acc inf" in warnings[0]


FEATS_B = "bert-base-chinese-4-UTT+eGeMAPS_UTT+manet_UTT"


@pytest.fixture
def mixed(tmp_path):
    """Two data sets x two feature sets, from MERBench-named files and from stores. Each
    (data set, feature set) has its own winner; the higher numbers of the others must not leak."""
    root = tmp_path / "results"
    res = root / "merbench" / "result"
    res.mkdir(parents=True)

    def npz(split, model, f1, acc, dataset, feats, ts):
        name = mer_name(split, model, f1, acc, ts=ts, dataset=dataset).replace(FEATS, feats)
        save_args_npz(res / name)

    npz("cv", "attention", "0.6000", "0.6100", "MER2023", FEATS, 1)
    npz("test1", "attention", "0.6200", "0.6300", "MER2023", FEATS, 1)
    npz("cv", "attention", "0.9000", "0.9100", "MER2023", FEATS_B, 2)  # other features
    npz("cv", "attention", "0.9500", "0.9600", "IEMOCAPFour", FEATS, 3)  # other data set
    npz("cv", "attention_robust", "0.5000", "0.5100", "iemocapfour", FEATS_B, 4)  # MERBench's spelling
    s1 = root / "store-mer"
    write_trial(s1, "e4a", make_results("e4a", "attention_robust_v2", "Exp4", 0,
                                        {"cv": (0.7000, 0.7100, 0.6), "test1": (0.7200, 0.7300, 0.6)}),
                make_epochs("e4a"), {})
    write_trial(s1, "e4b", make_results("e4b", "attention_robust_v2", "Exp4", 0,
                                        {"cv": (0.8000, 0.8100, 0.6), "test1": (0.8200, 0.8300, 0.6)},
                                        features="eGeMAPS_UTT,bert-base-chinese-4-UTT,manet_UTT"), make_epochs("e4b"), {})
    s2 = root / "store-iemocap"
    write_trial(s2, "e2", make_results("e2", "attention_robust_v2", "Exp2", 0,
                                       {"cv": (0.4000, 0.4100, 0.6), "test1": (0.4200, 0.4300, 0.6)},
                                       dataset="IEMOCAPFour"), make_epochs("e2"), {})
    write_trial(s2, "e5", make_results("e5", "attention_robust_v2", "Exp5", 0,
                                       {"cv": (0.3000, 0.3100, 0.6)}, dataset="IEMOCAPFour"), make_epochs("e5"), {})
    return root


def test_mixed_tree_gives_one_exact_table_per_dataset_and_features(mixed, capsys):
    assert best_results.main(["--result-dir", str(mixed)]) == 0
    tables, _ = parse_tables(capsys.readouterr().out)
    dash = ["–"] * 4
    assert tables == {
        f"IEMOCAPFour · features {FEATS}": {
            "Baseline (v0)": ["0.9500", "0.9600"] + dash + ["–", "–"],
            "P-RMF V2 (VAE)": ["0.4000", "0.4100", "0.4200", "0.4300"] + dash},
        f"IEMOCAPFour · features {FEATS_B}": {"Robust v1 (Dropout)": ["0.5000", "0.5100"] + dash + ["–", "–"]},
        f"MER2023 · features {FEATS}": {
            "Baseline (v0)": ["0.6000", "0.6100", "0.6200", "0.6300"] + dash,
            "P-RMF V2 (VAE)": ["0.7000", "0.7100", "0.7200", "0.7300"] + dash},
        f"MER2023 · features {FEATS_B}": {
            "Baseline (v0)": ["0.9000", "0.9100"] + dash + ["–", "–"],
            "P-RMF V2 (VAE)": ["0.8000", "0.8100", "0.8200", "0.8300"] + dash},
    }

    assert best_results.main(["--result-dir", str(mixed), "--by", "experiment", "--dataset", "iemocapfour",
                              "--features", FEATS.replace("+", ",")]) == 0
    tables, _ = parse_tables(capsys.readouterr().out)
    assert tables == {f"IEMOCAPFour · features {FEATS}": {
        "Baseline (v0)": ["0.9500", "0.9600"] + dash + ["–", "–"],
        "P-RMF: VAE only (Exp2)": ["0.4000", "0.4100", "0.4200", "0.4300"] + dash,
        "P-RMF: no VAE (Exp5)": ["0.3000", "0.3100"] + dash + ["–", "–"]}}

    assert best_results.main(["--result-dir", str(mixed), "--experiment", "Exp4", "--json"]) == 0
    records = json.loads(capsys.readouterr().out)
    assert {(r["dataset"], r["features"], r["experiment"], r["split"], r["acc"]) for r in records} == {
        ("MER2023", FEATS, "Exp4", "cv", 0.71), ("MER2023", FEATS, "Exp4", "test1", 0.73),
        ("MER2023", FEATS_B, "Exp4", "cv", 0.81), ("MER2023", FEATS_B, "Exp4", "test1", 0.83)}

    assert best_results.main(["--result-dir", str(mixed), "--dataset", "SIMS"]) == 2
    assert "matching --dataset SIMS" in capsys.readouterr().err


def test_select_by_cv_keeps_one_run_per_row(store, capsys):
    # t1 (Exp1) wins cv, t4 (Exp4) wins test1: the paper's rule mixes them, --select-by cv does not
    assert best_results.main(["--result-dir", str(store), "--json"]) == 0
    seeds = {(r["model"], r["split"]): r for r in json.loads(capsys.readouterr().out)}
    assert seeds[("attention_robust_v2", "cv")]["source"].endswith("#t1")
    assert seeds[("attention_robust_v2", "test1")]["source"].endswith("#t4")
    assert best_results.main(["--result-dir", str(store), "--json", "--select-by", "cv"]) == 0
    out = capsys.readouterr()
    cv = {(r["model"], r["split"]): r for r in json.loads(out.out)}
    assert cv[("attention_robust_v2", "cv")]["source"].endswith("#t1")
    assert cv[("attention_robust_v2", "test1")]["source"].endswith("#t1")
    assert (cv[("attention_robust_v2", "test1")]["acc"], cv[("attention_robust_v2", "test1")]["n_runs"]) == (0.821, 2)
    assert cv[("attention_robust_v2", "test1")]["experiment"] == "Exp1"
    assert "highest cv ACC" in out.err


def test_pruned_failed_and_diverged_trials_are_left_out_unless_asked(store, capsys):
    for tid, status in (("p", "pruned"), ("f", "failed"), ("d", "diverged")):
        write_trial(store, tid, make_results(tid, "attention_robust_v2", "Exp4", 0, {"cv": (0.95, 0.95, 0.5)},
                                             status=status), make_epochs(tid), {})
    assert best_results.main(["--result-dir", str(store)]) == 0
    out = capsys.readouterr().out
    tables, other = parse_tables(out)
    assert tables[f"MER2023 · features {FEATS}"]["P-RMF V2 (VAE)"][:2] == ["0.7700", "0.7650"]
    assert "Left out (stopped before the end; --include-pruned counts them): 1 diverged, 1 failed, 1 pruned trials." in other
    assert best_results.main(["--result-dir", str(store), "--include-pruned"]) == 0
    out = capsys.readouterr().out
    tables, other = parse_tables(out)
    assert tables[f"MER2023 · features {FEATS}"]["P-RMF V2 (VAE)"][:2] == ["0.9500", "0.9500"]
    assert not any(line.startswith("Left out") for line in other)


# ---------------------------------------------------------------- CLI


def parse_tables(text):
    """{table header: {method: [cells]}} of best_results' Markdown, plus the lines outside tables."""
    tables, other, current = {}, [], None
    for line in text.strip().splitlines():
        if line.startswith("## "):
            current = tables.setdefault(line[3:], {})
        elif line.startswith("| Method |"):
            assert line == ("| Method | cv F1 | cv ACC | test1 F1 | test1 ACC | test2 F1 | test2 ACC "
                            "| test3 F1 | test3 ACC |")
        elif line.startswith("|") and set(line) <= set("|-:"):
            continue
        elif line.startswith("| "):
            cells = [c.strip() for c in line.strip("|").split("|")]
            assert len(cells) == 9
            current[cells[0]] = cells[1:]
        elif line:
            other.append(line)
    return tables, other


def test_markdown_table_and_output_file(store, merbench, tmp_path, capsys):
    root, marker = merbench
    out = tmp_path / "report" / "best.md"
    rc = best_results.main(["--result-dir", str(store), "--result-dir", str(root), "--output", str(out)])
    assert rc == 0
    captured = capsys.readouterr()
    tables, other = parse_tables(captured.out)
    # names without a _dataset: field are not assumed to be MER2023
    assert list(tables) == [f"MER2023 · features {FEATS}", f"unnamed · features {FEATS}"]
    mer, unnamed = tables.values()
    assert list(mer) == ["Baseline (v0)", "P-RMF V2 (VAE)"]
    assert mer["Baseline (v0)"] == ["0.7366", "0.7376", "–", "–", "–", "–", "–", "–"]
    assert mer["P-RMF V2 (VAE)"] == ["0.7700", "0.7650", "0.8348", "0.8345", "–", "–", "0.8995", "0.9029"]
    assert list(unnamed) == ["Baseline (v0)", "Robust v1 (Dropout)", "P-RMF V2 (VAE)", "Robust v5", "misa"]
    assert unnamed["Baseline (v0)"] == ["0.7366", "0.7376", "0.7956", "0.7956", "–", "–", "–", "–"]
    assert any(line.startswith("Selection: the paper's rule") for line in other)
    assert out.read_text(encoding="utf-8") == captured.out
    assert captured.err.count("warning:") == 2
    assert not marker.exists()


def test_json_keys_and_values(merbench, capsys):
    root, _ = merbench
    assert best_results.main(["--result-dir", str(root), "--json"]) == 0
    records = json.loads(capsys.readouterr().out)
    assert len(records) == 8
    assert all(list(r) == JSON_KEYS for r in records)
    got = {(r["dataset"], r["model"], r["split"]): r for r in records}
    first = got[("unnamed", "attention", "cv")]
    assert (first["display_name"], first["experiment"], first["features"]) == ("Baseline (v0)", None, FEATS)
    assert (first["f1"], first["acc"], first["val"], first["n_runs"]) == (0.7366, 0.7376, 0.6317, 2)
    assert first["source"].endswith(mer_name("cv", "attention", "0.7366", "0.7376"))
    v2test3 = got[("MER2023", "attention_robust_v2", "test3")]
    assert v2test3["val"] is None  # nan in the name -> null


def test_default_root_reads_stores_and_npz(store, merbench, tmp_path, monkeypatch, capsys):
    runs = store.parent
    shutil.copytree(merbench[0], runs / "merbench")
    monkeypatch.setattr(best_results, "DEFAULT_RESULT_DIR", runs)
    assert best_results.main(["--json"]) == 0
    records = json.loads(capsys.readouterr().out)
    sources = {r["source"].split("#")[0] for r in records}
    assert str(store) in sources and any("/merbench/" in s for s in sources)
    assert {r["features"] for r in records} == {FEATS}


def test_feature_order_and_dataset_spelling_are_normalised():
    assert features_key("chinese-hubert-large-UTT,CLIP-ViT-large-patch14-UTT,Baichuan-13B-Base-UTT") == FEATS
    assert features_key(["b", "a"]) == "a+b"
    assert [dataset_name(n) for n in ("mer2023", "Iemocapfour", "simsv2", "MyData")] == [
        "MER2023", "IEMOCAPFour", "SIMSv2", "MyData"]


def test_missing_dir_and_nothing_found(tmp_path, capsys):
    assert best_results.main(["--result-dir", str(tmp_path / "nope")]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "nope" in err[0]

    (tmp_path / "empty").mkdir()
    assert best_results.main(["--result-dir", str(tmp_path / "empty")]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no results found" in err[0]


def test_script_runs_from_any_cwd(merbench, tmp_path):
    root, marker = merbench
    proc = subprocess.run([sys.executable, str(SCRIPT), "--result-dir", str(root)],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("## MER2023 · features") and "| P-RMF V2 (VAE) |" in proc.stdout
    assert proc.stderr.count("warning:") == 2
    assert not marker.exists()


def test_rows_of_the_former_default_never_share_a_cell_with_the_published_default(store, tmp_path, capsys):
    # an older store (schema 2) whose rows say fidelity 'seeds_code' (the design plan's modality
    # dropout, the default then), with a better Exp4 than the published default's: it is its own row
    import pyarrow.parquet as pq

    from prmf.store import SCHEMA_KEY, read_results
    old = tmp_path / "runs" / "old-ablation"
    rows = make_results("o4", "attention_robust_v2", "Exp4", 0, {"cv": (0.80, 0.81, 0.6), "test1": (0.90, 0.91, 0.6)})
    write_trial(old, "o4", rows.assign(fidelity="seeds_code"), make_epochs("o4"), predictions={})
    part = old / "results" / "o4.parquet"
    pq.write_table(pq.read_table(part).replace_schema_metadata({SCHEMA_KEY: b"2"}), part)
    assert set(read_results(old).fidelity) == {"design_plan"} and set(read_results(old).optimizer) == {"adamw"}
    write_trial(store, "t4p", make_results("t4p", "attention_robust_v2", "Exp4", 1, {"cv": (0.70, 0.71, 0.6)})
                .assign(fidelity="published"), make_epochs("t4p"), predictions={})
    rows = best_map(select_best(scan([tmp_path / "runs"]), by="experiment"))
    assert rows[("P-RMF full (Exp4)", "cv")] == (0.7586, 0.7593)  # the published rows' best, not 0.81
    assert rows[("P-RMF full (Exp4) [design_plan]", "cv")] == (0.80, 0.81)
    by_model = select_best(scan([tmp_path / "runs"]))
    assert list(dict.fromkeys(by_model.display_name)) == ["Baseline (v0)", "P-RMF V2 (VAE)", "P-RMF V2 (VAE) [design_plan]"]
    assert best_results.main(["--result-dir", str(tmp_path / "runs"), "--json"]) == 0
    cells = json.loads(capsys.readouterr().out)
    assert {(c["display_name"], c["fidelity"]) for c in cells if c["split"] == "cv"} == {
        ("Baseline (v0)", "published"), ("P-RMF V2 (VAE)", "published"), ("P-RMF V2 (VAE) [design_plan]", "design_plan")}
