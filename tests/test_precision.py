"""The config key `precision` (prmf/precision.py): bf16-mixed trains and scores under autocast with
fp32 master weights, gradients, Adam moments and best states, the custom autograd layers included;
fp32 (the default, the published runs') is unchanged, ids and old checkpoints and stores included;
a precision the device cannot run is refused in one line before any work."""
import hashlib
import io
import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch

from prmf import precision, records, store
from prmf.config import PRESETS, ConfigError, effective_config, make_config, pack_key, preset_config
from prmf.engine import CheckpointError, Engine
from prmf.evaluation import predict
from prmf.models.layers import _Linear, _ReconMSE

from helpers import fra_root

FAST = dict(lr=3e-3, batch_size=64, hidden_dim=16, dropout=0.1)
BF16 = dict(rtol=3e-2, atol=3e-2)  # bf16 keeps 8 significant bits: ~4e-3 relative per rounding


def autocast():
    return torch.autocast("cpu", dtype=torch.bfloat16)


def linear_inputs(scale_kind):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 8, 16, generator=g, requires_grad=True)
    w = torch.randn(2, 12, 16, generator=g).div_(4).requires_grad_()
    b = torch.randn(2, 12, generator=g).requires_grad_()
    scale = {"one": 1.0, "float": 1.25, "member": torch.tensor([1.25, 0.5])}[scale_kind]
    return x, w, b, scale, torch.randn(2, 8, 12, generator=g)  # and the gradient fed back


@pytest.mark.parametrize("scale_kind", ["one", "float", "member"])
def test_linear_under_autocast_computes_in_bf16_and_returns_fp32_gradients(scale_kind):
    x, w, b, scale, grad = linear_inputs(scale_kind)
    with autocast():
        out = _Linear.apply(x, w, b, scale)
    assert out.dtype == torch.bfloat16
    out.backward(grad.bfloat16())
    assert (x.grad.dtype, w.grad.dtype, b.grad.dtype) == (torch.float32,) * 3
    # the fp32 computation in float64 as reference
    x64, w64, b64 = (t.detach().double().requires_grad_() for t in (x, w, b))
    s = scale if isinstance(scale, float) else scale.double().view(-1, 1, 1)
    ref = torch.bmm(x64, w64.transpose(1, 2)) * s + b64.unsqueeze(1)
    ref.backward(grad.double())
    torch.testing.assert_close(out.double(), ref.detach(), **BF16)
    for got, want in ((x.grad, x64.grad), (w.grad, w64.grad), (b.grad, b64.grad)):
        torch.testing.assert_close(got.double(), want, **BF16)


@pytest.mark.parametrize("scale_kind", ["one", "float", "member"])
def test_linear_without_autocast_is_the_fp32_computation_bit_for_bit(scale_kind):
    x, w, b, scale, grad = linear_inputs(scale_kind)
    out = _Linear.apply(x, w, b, scale)
    out.backward(grad)
    xd, wd, bd = x.detach(), w.detach(), b.detach()
    if isinstance(scale, float):
        want = torch.baddbmm(bd.unsqueeze(1), xd, wd.transpose(1, 2), alpha=scale)
        g = grad if scale == 1.0 else grad * scale
    else:
        want = torch.bmm(xd, wd.transpose(1, 2)).mul_(scale.view(-1, 1, 1)).add_(bd.unsqueeze(1))
        g = grad * scale.view(-1, 1, 1)
    assert out.dtype == torch.float32 and torch.equal(out, want)
    assert torch.equal(x.grad, torch.bmm(g, wd)) and torch.equal(w.grad, torch.bmm(g.transpose(1, 2), xd))
    assert torch.equal(b.grad, grad.sum(1))


def recon_inputs():
    g = torch.Generator().manual_seed(1)
    h = torch.randn(2, 32, 8, generator=g, requires_grad=True)
    w = torch.randn(2, 640, 8, generator=g).div_(3).requires_grad_()
    b = torch.randn(2, 640, generator=g).requires_grad_()
    return h, w, b, torch.randn(2, 32, 640, generator=g)


def test_recon_mse_under_autocast_reconstructs_in_bf16_and_averages_in_fp32():
    h, w, b, x = recon_inputs()
    with autocast():
        out = _ReconMSE.apply(h, w, b, x)
    assert out.dtype == torch.float32
    out.backward(torch.tensor([1.0, 0.5]))
    assert (h.grad.dtype, w.grad.dtype, b.grad.dtype) == (torch.float32,) * 3
    h64, w64, b64 = (t.detach().double().requires_grad_() for t in (h, w, b))
    ref = (torch.baddbmm(b64.unsqueeze(1), h64, w64.transpose(1, 2)) - x.double()).pow(2).mean((1, 2))
    (ref * torch.tensor([1.0, 0.5], dtype=torch.float64)).sum().backward()
    torch.testing.assert_close(out.double(), ref.detach(), **BF16)
    for got, want in ((h.grad, h64.grad), (w.grad, w64.grad), (b.grad, b64.grad)):
        torch.testing.assert_close(got.double(), want, rtol=3e-2, atol=3e-2 * want.abs().max().item())
    # the bf16 reconstruction's difference and mean square in fp32: a bf16 sum over 32*640 elements
    # would be off by ~1e-3 relative
    recon = torch.baddbmm(*(t.detach().bfloat16() for t in (b.unsqueeze(1), h, w.transpose(1, 2))))
    torch.testing.assert_close(out, (recon.float() - x).pow(2).mean((1, 2)), rtol=1e-5, atol=0)


def test_recon_mse_without_autocast_is_the_fp32_computation_bit_for_bit():
    h, w, b, x = recon_inputs()
    out = _ReconMSE.apply(h, w, b, x)
    out.backward(torch.tensor([1.0, 0.5]))
    hd, wd, bd = h.detach(), w.detach(), b.detach()
    diff = torch.baddbmm(bd.unsqueeze(1), hd, wd.transpose(1, 2)).sub_(x).flatten(1)
    assert torch.equal(out, torch.linalg.vecdot(diff, diff) / diff.shape[1])
    g = (diff * (2.0 / diff.shape[1]) * torch.tensor([1.0, 0.5])[:, None]).view(2, 32, -1)
    assert torch.equal(h.grad, torch.bmm(g, wd)) and torch.equal(w.grad, torch.bmm(g.transpose(1, 2), hd))
    assert torch.equal(b.grad, g.sum(1))


# ---------------------------------------------------------------- the engine

def run_two_epochs(data, prec):
    """(engine, its state after the first epoch (weights, Adam moments), that epoch's validation
    logits, the trial's result)."""
    engine = Engine([(preset_config("Exp4", epochs=2, precision=prec, **FAST), 0)], data, n_folds=2)
    engine.step()
    state = {n: p.detach().clone() for n, p in engine.model.named_parameters()}
    state |= {f"exp_avg.{i}": m.clone() for i, m in enumerate(engine.optimizer.exp_avg + engine.optimizer.exp_avg_sq)}
    first = [m.best_val["logits"].clone() for m in engine.members]
    engine.step()
    return engine, state, first, engine.score()[0]


@pytest.fixture(scope="module")
def fp32_and_bf16(tiny_data):
    return run_two_epochs(tiny_data, "fp32"), run_two_epochs(tiny_data, "bf16-mixed")


def test_a_bf16_mixed_trial_keeps_fp32_state_and_scores_close_to_fp32(fp32_and_bf16):
    (_, state32, first32, r32), (engine, state16, first16, r16) = fp32_and_bf16
    assert {t.dtype for t in [*state16.values(), *engine.best.values()]} == {torch.float32}
    assert all(np.isfinite(r16.splits[s].logits).all() for s in ("cv", "test1"))
    for split in ("cv", "test1", "test2"):
        for key in ("acc", "f1"):
            assert np.isfinite(r16.splits[split].metrics[key])
            assert abs(r16.splits[split].metrics[key] - r32.splits[split].metrics[key]) < 0.1, (split, key)
    # autocast acted: training from the same start on the same batches gave other weights, and the
    # first epoch's validation logits differ from fp32's, but only by bf16 rounding
    assert not torch.equal(state32["fc_out_1.weight"], state16["fc_out_1.weight"])
    assert not any(torch.equal(a, b) for a, b in zip(first32, first16))
    assert all(torch.allclose(a, b, rtol=0.1, atol=0.1) for a, b in zip(first32, first16))
    # and the final scoring predicted under it: the same weights predicted in fp32 give other logits
    model, test1 = engine.best_model([0, 1]), engine.splits["test1"]
    (bf16, _), (fp32, _) = predict(model, test1.inputs, precision="bf16-mixed"), predict(model, test1.inputs)
    assert np.allclose(r16.splits["test1"].logits, bf16.mean(0), rtol=0, atol=1e-6)
    assert not np.array_equal(bf16, fp32) and np.allclose(bf16, fp32, rtol=0.1, atol=0.1)


def test_a_packed_bf16_mixed_checkpoint_resumes_bit_for_bit(tiny_data):
    cfg = preset_config("Exp4", epochs=3, modality_dropout_warmup=1, precision="bf16-mixed", **FAST)
    # a pack of two trials with their own loss weights, lr, optimiser and schedule
    trials = [(cfg, 0), (cfg.replace(kl_weight=0.05, lr=1e-3, optimizer="adam", lr_schedule="constant"), 1)]
    straight = Engine(trials, tiny_data, n_folds=2)
    while not straight.done:
        straight.step()
    first = Engine(trials, tiny_data, n_folds=2)
    first.step()
    buf = io.BytesIO()
    torch.save(first.state_dict(), buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    assert {t.dtype for t in [*state["model"].values(), *state["best"].values(), *state["optimizer"]["exp_avg"]]} \
        == {torch.float32}
    resumed = Engine(trials, tiny_data, n_folds=2)
    resumed.load_state_dict(state)
    while not resumed.done:
        resumed.step()
    assert resumed.history == straight.history
    a, b = resumed.score(), straight.score()
    assert all(np.array_equal(a[t].splits["test1"].logits, b[t].splits["test1"].logits) for t in (0, 1))
    assert all(np.isfinite(a[t].splits["test1"].logits).all() for t in (0, 1))


def test_a_checkpoint_written_before_the_key_resumes_as_fp32_only(tiny_data):
    cfg = preset_config("Exp4", epochs=1, **FAST)
    state = Engine([(cfg, 0)], tiny_data, n_folds=2).state_dict()
    state["trials"] = [({k: v for k, v in c.items() if k != "precision"}, seed) for c, seed in state["trials"]]
    Engine([(cfg, 0)], tiny_data, n_folds=2).load_state_dict(state)  # the same pack
    with pytest.raises(CheckpointError, match="another pack"):
        Engine([(cfg.replace(precision="bf16-mixed"), 0)], tiny_data, n_folds=2).load_state_dict(state)


def test_frame_level_features_train_and_store_under_bf16_mixed(tmp_path, capsys, monkeypatch):
    from prmf.train import main
    monkeypatch.setattr(precision, "native_bf16", lambda device: False)  # as on a CPU without it: a note
    out = tmp_path / "out"
    rc = main(["--data", str(fra_root(tmp_path)), "--features", "a-FRA,t-FRA,v-FRA", "--experiment", "Exp4",
               "--epochs", "2", "--folds", "2", "--out", str(out), "--device", "cpu", "--set", "hidden_dim=8",
               "--set", "precision=bf16-mixed"])
    assert rc == 0
    notes = [line for line in capsys.readouterr().err.splitlines() if line.startswith("note:")]
    assert len(notes) == 1 and "has no native bf16: bf16-mixed runs emulated by torch" in notes[0]
    df = store.read_results(out)
    assert set(df.feat_type) == {"frm_unalign"} and set(df.precision) == {"bf16-mixed"}
    assert np.isfinite(df[df.scenario == "clean"][["f1", "acc"]].to_numpy()).all()
    assert json.loads(df.config_json.iloc[0])["precision"] == "bf16-mixed"


# ---------------------------------------------------------------- config, checks, ids, store, tables

def test_an_unknown_precision_is_refused_naming_the_key():
    with pytest.raises(ConfigError, match="config key 'precision': must be fp32, bf16-mixed, tf32, got 'fp16'"):
        make_config(precision="fp16")


def test_precision_splits_packs_is_in_no_preset_and_stays_in_the_effective_config(tiny_data):
    cfg = preset_config("Exp4", **FAST)
    bf16 = cfg.replace(precision="bf16-mixed")
    assert cfg.precision == "fp32" and pack_key(cfg) != pack_key(bf16)
    assert not any("precision" in p for p in PRESETS.values())
    assert effective_config(bf16)["precision"] == "bf16-mixed" and effective_config(cfg) != effective_config(bf16)
    with pytest.raises(ValueError, match="share every config key"):
        Engine([(cfg, 0), (bf16, 1)], tiny_data)


def test_tf32_on_the_cpu_is_refused_in_one_line_before_any_work(tmp_path, data_dir):
    proc = subprocess.run([sys.executable, "-m", "prmf.train", "--data", "synthetic", "--profile", "tiny", "--device",
                           "cpu", "--set", "precision=tf32", "--out", str(tmp_path / "out")], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr == "error: precision 'tf32' changes CUDA matmuls only; on the CPU use fp32 or bf16-mixed\n"
    assert not (tmp_path / "out").exists()
    with pytest.raises(ConfigError, match="tf32"):  # a worker's engine checks again, a ValueError
        Engine([(preset_config("Exp4", precision="tf32"), 0)], None, device="cpu")


def test_a_sweep_refuses_tf32_without_gpus_before_ray_starts(tmp_path, capsys, data_dir, monkeypatch):
    from sweeps import ablation, driver

    def no_ray(*a, **k):
        raise AssertionError("Ray started")
    monkeypatch.setattr(driver, "_init_ray", no_ray)
    assert ablation.main(["--data", "synthetic", "--profile", "tiny", "--experiments", "Exp1", "--set", "precision=tf32",
                          "--num-gpus", "0", "--storage", str(tmp_path / "s")]) == 2
    assert capsys.readouterr().err == \
        "error: precision 'tf32' changes CUDA matmuls only; on the CPU use fp32 or bf16-mixed\n"
    assert not (tmp_path / "s").exists()


def test_an_fp32_sweep_records_the_settings_it_had_before_the_key(tmp_path, capsys, data_dir, monkeypatch):
    # sweep.json of an fp32 sweep has no precision, as before the key existed: such a sweep resumes
    from sweeps import ablation, driver
    monkeypatch.setattr(driver, "_launch", lambda *a, **k: None)  # checks, settings, no training
    argv = ["--data", "synthetic", "--profile", "tiny", "--experiments", "Exp1", "--storage", str(tmp_path), "--name", "s"]
    assert ablation.main(argv) == 1  # its trial did not run
    settings = json.loads((tmp_path / "s" / "sweep.json").read_text())
    assert settings["Exp1.lr"] == 3e-4 and "Exp1.precision" not in settings
    capsys.readouterr()
    assert ablation.main(argv + ["--set", "precision=bf16-mixed"]) == 2
    assert 'Exp1.precision: null -> "bf16-mixed"' in capsys.readouterr().err


def test_bf16_is_refused_on_mps_and_a_cpu_without_it_gets_a_note(monkeypatch):
    with pytest.raises(ConfigError, match="'bf16-mixed' is not supported on MPS"):
        precision.check("bf16-mixed", "mps")
    assert precision.check("fp32", "cpu") == ""
    monkeypatch.setattr(precision, "native_bf16", lambda device: True)
    assert precision.check("bf16-mixed", "cpu") == ""
    monkeypatch.setattr(precision, "native_bf16", lambda device: False)
    assert "has no native bf16: bf16-mixed runs emulated" in precision.check("bf16-mixed", "cpu")


def test_tf32_flags_are_set_only_inside_the_context_and_restored():
    matmul, cudnn = torch.backends.cuda.matmul, torch.backends.cudnn
    before = matmul.allow_tf32, cudnn.allow_tf32
    matmul.allow_tf32 = cudnn.allow_tf32 = False
    try:
        with precision.matmuls("tf32", "cuda"):
            assert matmul.allow_tf32 and cudnn.allow_tf32
        with precision.matmuls("fp32", "cuda"), precision.matmuls("tf32", "cpu"):
            assert not matmul.allow_tf32 and not cudnn.allow_tf32
        with pytest.raises(KeyError), precision.matmuls("tf32", "cuda"):
            raise KeyError  # a failed step restores them too
        assert (matmul.allow_tf32, cudnn.allow_tf32) == (False, False)
    finally:
        matmul.allow_tf32, cudnn.allow_tf32 = before


def test_fp32_trial_ids_are_those_of_the_config_without_the_key(tiny_data):
    cfg = preset_config("Exp4")
    without = {k: v for k, v in cfg.to_dict().items() if k != "precision"}

    def old_id(key):
        return "Exp4-s0-" + hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:8]
    assert records.trial_id("Exp4", cfg, 0) == old_id(without)
    assert records.trial_id("Exp4", cfg, 0, tiny_data) == old_id(
        {"config": without, "dataset": tiny_data.name, "features": list(tiny_data.features), "dims": list(tiny_data.dims)})
    assert records.trial_id("Exp4", cfg.replace(precision="bf16-mixed"), 0) != old_id(without)


def result_rows(tid, prec, acc):
    rows = pd.DataFrame({"trial_id": tid, "experiment": "Exp4", "model": "attention_robust_v2", "seed": 0,
                         "is_aggregate": [True, True], "fold": pd.array([None, None], dtype="Int64"),
                         "split": ["cv", "test1"], "scenario": "clean", "f1": acc, "acc": acc, "val_mse": 0.5,
                         "dataset": "MER2023", "features": "a+b+c", "status": "finished", "fidelity": "published",
                         "lr": 3e-4})
    return rows if prec is None else rows.assign(precision=prec)


def write_rows(root, tid, rows, schema=None):
    import pyarrow.parquet as pq
    store.write_trial(root, tid, rows, pd.DataFrame({"trial_id": [tid], "fold": [0], "epoch": [1]}), predictions={})
    if schema is not None:
        part = root / "results" / f"{tid}.parquet"
        pq.write_table(pq.read_table(part).replace_schema_metadata({store.SCHEMA_KEY: schema}), part)


def test_a_store_written_without_the_column_reads_fp32(tmp_path):
    write_rows(tmp_path, "old", result_rows("old", None, 0.7), schema=b"3")
    write_rows(tmp_path, "new", result_rows("new", "bf16-mixed", 0.8))
    df = store.read_results(tmp_path).set_index("trial_id")
    assert set(df.loc["old", "precision"]) == {"fp32"} and set(df.loc["new", "precision"]) == {"bf16-mixed"}
    from analysis.stats import varying_params  # the report lists precision where it varies
    assert "precision" in varying_params(store.read_results(tmp_path))["Exp4"]
    assert "precision" not in varying_params(store.read_results(tmp_path).query("trial_id == 'old'"))["Exp4"]


def test_best_results_puts_a_bf16_row_in_its_own_row(tmp_path, capsys):
    from analysis import best_results
    from analysis.results import scan, select_best
    write_rows(tmp_path / "a", "t32", result_rows("t32", None, 0.70), schema=b"3")
    write_rows(tmp_path / "b", "t16", result_rows("t16", "bf16-mixed", 0.90))  # better, but not the fp32 cell
    best = select_best(scan([tmp_path]), by="experiment")
    cells = {(r.display_name, r.split): r.acc for r in best.itertuples()}
    assert cells == {("P-RMF full (Exp4)", "cv"): 0.70, ("P-RMF full (Exp4)", "test1"): 0.70,
                     ("P-RMF full (Exp4) [bf16-mixed]", "cv"): 0.90, ("P-RMF full (Exp4) [bf16-mixed]", "test1"): 0.90}
    assert list(dict.fromkeys(best.display_name)) == ["P-RMF full (Exp4)", "P-RMF full (Exp4) [bf16-mixed]"]
    assert best_results.main(["--result-dir", str(tmp_path), "--by", "experiment", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert {(c["display_name"], c["precision"]) for c in out} == {
        ("P-RMF full (Exp4)", "fp32"), ("P-RMF full (Exp4) [bf16-mixed]", "bf16-mixed")}


def test_provenance_records_what_precision_meets_on_the_machine():
    from prmf.provenance import machine
    m = machine()
    assert m["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert m["bf16_native"]["cpu"] == precision.native_bf16("cpu")
    assert m["cuda_tf32"] == {"matmul": torch.backends.cuda.matmul.allow_tf32, "cudnn": torch.backends.cudnn.allow_tf32}
