"""The paper table in every format (best_results --format, report --format) and where each cell came from."""
import io
import json
import re

import numpy as np
import pandas as pd

from analysis import best_results
from prmf import provenance

FEATS = "Baichuan-13B-Base-UTT+chinese-hubert-large-UTT+CLIP-ViT-large-patch14-UTT"
CELLS = {  # (model, split) -> (f1, acc), MERBench-named files
    ("attention", "cv"): ("0.7366", "0.7376"), ("attention", "test1"): ("0.7956", "0.7956"),
    ("attention_robust", "cv"): ("0.7509", "0.7516"), ("attention_robust", "test1"): ("0.8213", "0.8248"),
    ("attention_robust_v2", "cv"): ("0.7586", "0.7593"), ("attention_robust_v2", "test1"): ("0.8330", "0.8345"),
}


def tree(tmp_path):
    res = tmp_path / "saved" / "result"
    res.mkdir(parents=True)
    for (model, split), (f1, acc) in CELLS.items():
        name = f"{split}_features:{FEATS}_dataset:MER2023_model:{model}+utt+None_f1:{f1}_acc:{acc}_val:0.6317_1.npz"
        np.savez(res / name, args=np.arange(3))
    return tmp_path / "saved"


def run(capsys, *argv):
    assert best_results.main([*argv]) == 0
    return capsys.readouterr().out


def test_every_format_holds_the_same_cells(tmp_path, capsys):
    d = str(tree(tmp_path))
    csv = pd.read_csv(io.StringIO(run(capsys, "--result-dir", d, "--format", "csv")))
    assert list(csv.columns[:3]) == ["dataset", "features", "Method"]
    assert set(csv["dataset"]) == {"MER2023"} and len(csv) == 3
    got = csv.set_index("Method")
    assert got.loc["Baseline (v0)", "cv ACC"] == 0.7376 and got.loc["P-RMF V2 (VAE)", "test1 F1"] == 0.8330
    cells = json.loads(run(capsys, "--result-dir", d, "--format", "json"))
    assert run(capsys, "--result-dir", d, "--json") == json.dumps(cells, indent=2, ensure_ascii=False) + "\n"
    assert {(c["model"], c["split"]): (c["f1"], c["acc"]) for c in cells} == \
        {k: (float(f), float(a)) for k, (f, a) in CELLS.items()}
    assert all(c["commit"] is None for c in cells)  # MERBench files carry no commit
    md = run(capsys, "--result-dir", d)
    assert "| Robust v1 (Dropout) | 0.7509 | 0.7516 | 0.8213 | 0.8248 |" in md


def test_latex_is_booktabs_with_the_best_of_each_column_in_bold(tmp_path, capsys):
    tex = run(capsys, "--result-dir", str(tree(tmp_path)), "--format", "latex")
    for cmd in (r"\toprule", r"\midrule", r"\bottomrule", r"\begin{table}", r"\caption{MER2023, features"):
        assert cmd in tex
    bold = re.findall(r"\\textbf\{([0-9.]+)\}", tex)
    assert sorted(bold) == sorted(["0.7586", "0.7593", "0.8330", "0.8345"])  # V2 is best in each column shown
    assert "P-RMF V2 (VAE) &" in tex and "Baseline (v0) & 0.7366 & 0.7376" in tex


def test_rows_and_cells_carry_the_commit_and_the_run_its_command(tmp_path, capsys, tiny_root):
    from prmf import train
    from prmf.data.synthetic import FEATURES
    from prmf.store import read_results
    out = tmp_path / "store"
    assert train.main(["--data", str(tiny_root), "--features", ",".join(FEATURES["tiny"]), "--experiment", "Exp1",
                       "--epochs", "1", "--folds", "2", "--no-robustness", "--out", str(out)]) == 0
    commit = provenance.git_commit()
    rows = read_results(out)
    assert set(rows["commit"]) == {commit} and commit != ""
    runs = sorted((out / "provenance").glob("run-*.json"))
    assert len(runs) == 1
    record = json.loads(runs[0].read_text())
    assert record["commit"] == commit.removesuffix("+dirty") and record["dirty"] == commit.endswith("+dirty")
    assert record["command"].startswith("python") and record["cwd"]
    assert set(record["versions"]) >= {"python", "torch", "ray", "pyarrow"} and record["machine"]["host"]
    (tid, trial), = record["trials"].items()
    assert trial["experiment"] == "Exp1" and trial["cfg"]["epochs"] == 1 and tid == rows["trial_id"].iloc[0]
    capsys.readouterr()
    cells = json.loads(run(capsys, "--result-dir", str(out), "--json"))
    assert cells and all(c["commit"] == commit for c in cells)
    from analysis import report
    assert report.main(["--result-dir", str(out), "--out", str(tmp_path / "rep"), "--format", "csv"]) == 0
    summary = pd.read_csv(tmp_path / "rep" / "per_fold_summary.csv")
    assert set(summary["group"]) == {"Exp1"} and set(summary["split"]) >= {"cv", "test1"}
    assert (summary["runs"] == 2).all()  # 2 folds x 1 seed
