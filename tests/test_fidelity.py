"""Fidelity to the sources (docs/FIDELITY.md): MERBench-exact baselines, the seeds' code
(fidelity 'seeds_code', the default) and the paper's equations (fidelity 'paper'). Each mode's
schedule, masking and dropout placement is pinned by a test that fails if the other mode's
behaviour leaks in; parameter counts are pinned to the reference architectures' arithmetic."""
import numpy as np
import pandas as pd
import pytest
import torch

from prmf import records, store
from prmf.config import (PRESETS, ConfigError, effective_config, for_data, make_config, modality_dropout_rate,
                         preset_config)
from prmf.engine import Engine, train_trial
from prmf.models import build_model, n_params
from sweeps import ablation, core

DIMS, H, C = [10, 20, 8], 16, 6
PAPER_DIMS = [1024, 5120, 768]  # chinese-hubert-large, Baichuan-13B-Base, clip-vit-large-patch14 (UTT)


def lin(i, o):
    return i * o + o


def merbench_attention(dims, h, c):
    """MERBench's Attention: per modality MLPEncoder = Dropout + linear_1 (d->h) + linear_2, linear_3
    (h->h); attention_mlp = MLPEncoder(3h, h); fc_att (h->3); fc_out_1 (h->c); fc_out_2 (h->1)."""
    encoders = sum(lin(d, h) + 2 * lin(h, h) for d in dims)
    return encoders + lin(3 * h, h) + 2 * lin(h, h) + lin(h, 3) + lin(h, c) + lin(h, 1)


def seeds_vae(dims, h, c):
    """The seeds' VAE path without proxy attention: VariationalMLPEncoder = two-layer trunk
    (d->h, h->h) + mu_layer + logvar_layer (h->h); ModalityDecoder = h->h, h->h, h->d; the
    uncertainty fusion has no parameters; output heads."""
    enc = sum(lin(d, h) + lin(h, h) + 2 * lin(h, h) for d in dims)
    dec = sum(2 * lin(h, h) + lin(h, d) for d in dims)
    return enc + dec + lin(h, c) + lin(h, 1)


def proxy_attention(h):
    """ProxyCrossModalAttention: 3 x MultiheadAttention (in_proj 3h x h + 3h, out_proj h->h),
    LayerNorm (2h), FFN h->2h->h."""
    return 3 * (3 * h * h + 3 * h + lin(h, h)) + 2 * h + lin(h, 2 * h) + lin(2 * h, h)


@pytest.mark.parametrize("fidelity", ["seeds_code", "paper"])
def test_parameter_counts_are_the_reference_architectures(fidelity):
    want = {"attention": merbench_attention(DIMS, H, C), "attention_robust": merbench_attention(DIMS, H, C),
            "Exp1": merbench_attention(DIMS, H, C),  # forward_original: MERBench's encoders and attention
            "Exp2": seeds_vae(DIMS, H, C), "Exp3": seeds_vae(DIMS, H, C) + proxy_attention(H),
            "Exp4": seeds_vae(DIMS, H, C) + proxy_attention(H),
            # seeds_code builds no proxy attention without the VAE; the paper's Exp5 has one
            "Exp5": merbench_attention(DIMS, H, C) + (proxy_attention(H) if fidelity == "paper" else 0)}
    for name, n in want.items():
        model = build_model(preset_config(name, hidden_dim=H, fidelity=fidelity), DIMS, C)
        assert n_params(model) == n, name


def test_attention_at_paper_dims_has_merbenchs_parameter_count():
    # 3 encoders: 6912*128+3*128 + 3*2*(128*128+128) = 984192; attention_mlp 384*128+128 + 2*16512 = 82304;
    # fc_att 387, fc_out_1 774, fc_out_2 129 -> 1,067,786 (MERBench's Attention, hidden_dim 128)
    model = build_model(preset_config("attention"), PAPER_DIMS, 6)
    assert n_params(model) == merbench_attention(PAPER_DIMS, 128, 6) == 1_067_786
    names = {n for n, _ in model.named_parameters()}
    assert {"encoders.0.linear_3.weight", "fusion.attention_mlp.linear_3.bias", "fusion.fc_att.weight"} <= names


def test_every_preset_writes_out_every_training_setting():
    keys = {"model", "hidden_dim", "dropout", "lr", "weight_decay", "batch_size", "epochs", "patience",
            "grad_clip", "use_vae", "use_proxy_attention", "use_modality_dropout", "modality_dropout",
            "modality_dropout_warmup", "kl_weight", "recon_weight", "cross_kl_weight", "fusion_temperature"}
    for name, preset in PRESETS.items():
        assert keys <= set(preset), name
    assert preset_config("attention_robust").modality_dropout_warmup == 0  # not Exp4's 15
    assert (preset_config("attention").model, preset_config("attention_robust").model) == ("attention", "attention_robust")


# ---------------------------------------------------------------- the modality-dropout schedule

@pytest.mark.parametrize("epochs", [15, 30, 150])
def test_dropout_rate_per_epoch_in_both_modes_never_depends_on_epochs(epochs):
    def rates(name, fidelity):
        cfg = preset_config(name, fidelity=fidelity, epochs=epochs)
        return [modality_dropout_rate(cfg, e) for e in range(1, epochs + 1)]

    # seeds_code (train_v2.sh's warm-up 15): 0 through epoch 15, then 0.2*(e-15)/15, 0.2 from epoch 30 on
    code = [0.0] * 15 + [0.2 * k / 15 for k in range(1, 16)] + [0.2] * 120
    # paper: 0 through epoch 15, then 0.2*(e-15)/(150-15), reaching 0.2 at E = 150
    paper = [0.0] * 15 + [0.2 * k / 135 for k in range(1, 136)]
    assert rates("Exp4", "seeds_code") == pytest.approx(code[:epochs], abs=1e-12)
    assert rates("Exp4", "paper") == pytest.approx(paper[:epochs], abs=1e-12)
    # no warm-up: the code drops at p_max from epoch 1; the paper's ramp starts from 0 at e = 0
    assert rates("Exp1", "seeds_code") == [0.2] * epochs
    assert rates("Exp1", "paper") == pytest.approx([0.2 * e / 150 for e in range(1, epochs + 1)], abs=1e-12)
    assert rates("attention_robust", "seeds_code") == [0.2] * epochs
    assert all(modality_dropout_rate(preset_config("Exp4", fidelity=f, epochs=epochs), e) == 0 for f in
               ("seeds_code", "paper") for e in range(1, 16))


def test_ramp_key_overrides_the_fidelity():
    cfg = preset_config("Exp4", modality_dropout_ramp="last_epoch")
    assert cfg.fidelity == "seeds_code" and modality_dropout_rate(cfg, 30) == pytest.approx(0.2 * 15 / 135)
    cfg = preset_config("Exp4", fidelity="paper", modality_dropout_ramp="warmup")
    assert modality_dropout_rate(cfg, 30) == pytest.approx(0.2)


def test_epoch_history_records_the_rate_used(tiny_data):
    cfg = preset_config("Exp4", epochs=3, modality_dropout_warmup=1, hidden_dim=8, batch_size=128)
    r = Engine([(cfg, 0)], tiny_data, n_folds=2)
    while not r.done:
        r.step()
    got = pd.DataFrame(r.history).groupby("epoch").modality_dropout_p.unique()
    assert [list(v) for v in got] == [[0.0], [0.2], [0.2]]  # warm-up 1: 0, then 0.2*min(1, (e-1)/1)
    base = Engine([(preset_config("attention", epochs=1, hidden_dim=8), 0)], tiny_data, n_folds=2)
    base.step()
    assert {h["modality_dropout_p"] for h in base.history} == {0.0}


# ---------------------------------------------------------------- placement and masking

def batch(n=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, d, generator=g) for d in DIMS]


@pytest.mark.parametrize("fidelity", ["seeds_code", "paper"])
def test_dropped_modality_reaches_the_fusion_only_in_paper_mode(fidelity, fixed_noise):
    # the VAE path in training, no other randomness: with modality dropout at 0.95 vs 0, the fused
    # output is unchanged under seeds_code (z only, the decoders) and changed under paper (mu, std)
    outs = {}
    for p in (0.0, 0.95):
        torch.manual_seed(0)
        cfg = preset_config("Exp3", fidelity=fidelity, hidden_dim=H, dropout=0.0, modality_dropout=p)
        model = build_model(cfg, DIMS, C).train()
        torch.manual_seed(1)
        outs[p] = model(batch(), modality_p=modality_dropout_rate(cfg, 150))  # the full rate in both ramps
    same_fusion = torch.equal(outs[0.0][1], outs[0.95][1])
    assert same_fusion == (fidelity == "seeds_code")
    assert not torch.equal(outs[0.0][3], outs[0.95][3])  # the reconstruction sees the dropped z in both


@pytest.mark.parametrize("name", ["attention", "attention_robust", "Exp1", "Exp2", "Exp4"])
@pytest.mark.parametrize("fidelity", ["seeds_code", "paper"])
def test_all_zero_inputs_are_masked_in_paper_mode_only(name, fidelity):
    # eval; the text input is all zeros. Masked (paper): the text encoder cannot reach the output,
    # so perturbing its weights changes nothing. Unmasked (seeds_code, MERBench): it does.
    torch.manual_seed(0)
    model = build_model(preset_config(name, fidelity=fidelity, hidden_dim=H), DIMS, C).eval()
    x = batch()
    x[1] = torch.zeros_like(x[1])
    before = model(x)[1]
    with torch.no_grad():
        for p in model.encoders[1].parameters():
            p.add_(0.5)
    assert torch.allclose(model(x)[1], before) == (fidelity == "paper"), name


def test_attention_is_merbenchs_raw_scores_and_robust_v1_the_softmax():
    torch.manual_seed(0)
    for name, softmax, feat_dropout in [("attention", False, 0.0), ("attention_robust", True, 0.4)]:
        model = build_model(preset_config(name, hidden_dim=H), DIMS, C).eval()
        assert model.fusion.softmax is softmax and model.uses_feat_dropout == (feat_dropout > 0)
        assert model.value("dropout") == 0.4
        hid = [torch.rand(1, 4, H) for _ in range(3)]
        fused, w = model.fusion(hid, 0.0, False)
        raw = model.fusion.fc_att(model.fusion.attention_mlp(torch.cat(hid, -1), None, 0.0, False))
        assert torch.allclose(w, torch.softmax(raw, -1) if softmax else raw)


def test_exp5_is_exp1_under_seeds_code_and_the_proxy_variant_under_paper():
    assert effective_config(preset_config("Exp5")) == effective_config(preset_config("Exp1"))
    assert effective_config(preset_config("Exp5", fidelity="paper")) != effective_config(preset_config("Exp1", fidelity="paper"))
    torch.manual_seed(0)
    m5 = build_model(preset_config("Exp5", hidden_dim=H), DIMS, C)
    torch.manual_seed(0)
    m1 = build_model(preset_config("Exp1", hidden_dim=H), DIMS, C)
    assert not hasattr(m5, "proxy_attention")
    assert all(torch.equal(a, b) for a, b in zip(m5.state_dict().values(), m1.state_dict().values()))
    assert hasattr(build_model(preset_config("Exp5", hidden_dim=H, fidelity="paper"), DIMS, C), "proxy_attention")


# ---------------------------------------------------------------- the suite, records, the CLI

def sweep_args(*extra):
    return ablation.build_parser().parse_args(list(extra))


def test_ablation_suite_has_every_row_and_trains_exp5_once_under_seeds_code():
    sweep = ablation.make_sweep(sweep_args("--quick"))
    assert [p.label for p in sweep.points] == ["attention", "attention_robust", "Exp1", "Exp2", "Exp3", "Exp4"]
    assert [p for p in sweep.points if p.label == "Exp1"][0].identical == ("Exp5",)
    notes = "\n".join(sweep.notes)
    assert "Exp5 is identical in configuration to Exp1" in notes
    assert "Exp4: modality dropout starts after epoch 15" in notes and "attention_robust:" not in notes
    paper = ablation.make_sweep(sweep_args("--set", "fidelity=paper"))
    assert len(paper.points) == 7 and not any(p.identical for p in paper.points) and not paper.notes
    specs = core.trial_specs(sweep, "t", core.DEFAULT_STORAGE, [])
    assert [s["identical"] for s in specs if s["experiment"] == "Exp1"] == [["Exp5"]]


def test_rows_are_stored_for_identical_presets_with_n_params(tiny_data):
    cfg = preset_config("Exp1", epochs=1, hidden_dim=8)
    result = train_trial(cfg, tiny_data, seed=0, n_folds=2)
    results, epochs, _ = records.tables(result, tid="Exp1-s0-x", sweep="t", experiment="Exp1", cfg=cfg, seed=0,
                                        dataset=tiny_data, status="finished", wall_time_s=1.0, identical=("Exp5",))
    assert set(results.experiment) == {"Exp1", "Exp5"}
    rows = [results[results.experiment == n].drop(columns=["experiment", "identical_to"]).reset_index(drop=True)
            for n in ("Exp1", "Exp5")]
    assert rows[0].equals(rows[1])
    assert set(results[results.experiment == "Exp5"].identical_to) == {"Exp1"}
    assert not results.duplicated(store.RESULT_KEY).any()
    assert set(results.n_params) == {merbench_attention(tiny_data.dims, 8, len(tiny_data.classes))}
    assert "modality_dropout_p" in epochs


def write_fra_root(tmp_path, names=("a-FRA", "t-FRA", "v-FRA"), dims=(3, 5, 2)):
    """A MERBench root with frame-level [T, D] features of varying T (3 classes x 4 train samples)."""
    rng = np.random.default_rng(0)
    root = tmp_path / "fra"
    labels = {"train": {f"s{i}": {"emo": ("happy", "sad", "angry")[i % 3], "val": float(i % 5 - 2)} for i in range(12)},
              "test1": {f"t{i}": {"emo": "happy", "val": 1.0} for i in range(3)}}
    for f, d in zip(names, dims):
        (root / "features" / f).mkdir(parents=True)
        for corpus in labels.values():
            for n in corpus:
                np.save(root / "features" / f / f"{n}.npy", rng.normal(size=(int(rng.integers(2, 7)), d)).astype(np.float32))
    np.savez(root / "label-6way.npz", **{f"{k}_corpus": np.array(v, dtype=object) for k, v in labels.items()})
    return root


def test_fra_folders_train_the_frame_level_encoders(tmp_path, capsys):
    from prmf.train import main
    root = write_fra_root(tmp_path)
    out = tmp_path / "out"
    rc = main(["--data", str(root), "--features", "a-FRA,t-FRA,v-FRA", "--experiment", "attention", "--epochs", "1",
               "--folds", "2", "--no-robustness", "--out", str(out), "--device", "cpu", "--set", "hidden_dim=8"])
    assert rc == 0
    df = store.read_results(out)
    assert set(df.feat_type) == {"frm_unalign"}
    # LSTMEncoder per modality: LSTM (4*8*(d+8) + 2*4*8) + linear_1 (8->8), then the same fusion and heads
    lstm = sum(4 * 8 * (d + 8) + 2 * 4 * 8 + lin(8, 8) for d in (3, 5, 2))
    assert set(df.n_params) == {lstm + lin(24, 8) + 2 * lin(8, 8) + lin(8, 3) + lin(8, 6) + lin(8, 1)}
    assert "n_params" in capsys.readouterr().out


def test_frame_level_errors_are_one_line(tmp_path, capsys):
    from prmf.train import main
    root = write_fra_root(tmp_path, names=("a-FRA", "t-FRA", "v-UTT"))
    assert main(["--data", str(root), "--features", "a-FRA,t-FRA,v-UTT", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "mixes utterance-level and frame-level" in err and err.count("\n") == 1
    with pytest.raises(ConfigError, match="needs frame-level"):
        for_data(make_config(feat_type="frm_unalign"), "utt")
    with pytest.raises(ConfigError, match="frm_align is not supported"):
        make_config(feat_type="frm_align")
