"""Fidelity to the sources (docs/FIDELITY.md): MERBench-exact baselines in MERBench's loop, the
published file (fidelity 'published', the default), the design plan's code ('design_plan') and the
paper's equations ('paper'). Each mode's schedule, masking and dropout placement is pinned by a test
that fails if another mode's behaviour leaks in; expected numbers come from the formulas and from
torch's own optimisers, parameter counts from the reference architectures' arithmetic."""
import math

import pandas as pd
import pytest
import torch

from prmf import records, store
from prmf.config import PRESETS, ConfigError, effective_config, for_data, make_config, preset_config
from prmf.engine import Engine, stratified_folds, train_trial
from prmf.models import build_model, n_params
from prmf.models.draws import Draws
from prmf.schedules import modality_dropout_rate
from sweeps import ablation, plan
from sweeps.definition import DEFAULT_STORAGE

from helpers import batch, fra_root

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
    """The published VAE path without proxy attention: VariationalMLPEncoder = two-layer trunk
    (d->h, h->h) + mu_layer + logvar_layer (h->h); ModalityDecoder = h->h, h->h, h->d; the
    uncertainty fusion has no parameters; output heads."""
    enc = sum(lin(d, h) + lin(h, h) + 2 * lin(h, h) for d in dims)
    dec = sum(2 * lin(h, h) + lin(h, d) for d in dims)
    return enc + dec + lin(h, c) + lin(h, 1)


def proxy_attention(h):
    """ProxyCrossModalAttention: 3 x MultiheadAttention (in_proj 3h x h + 3h, out_proj h->h),
    LayerNorm (2h), FFN h->2h->h."""
    return 3 * (3 * h * h + 3 * h + lin(h, h)) + 2 * h + lin(h, 2 * h) + lin(2 * h, h)


MODES = ["published", "design_plan", "paper"]


@pytest.mark.parametrize("fidelity", MODES)
def test_parameter_counts_are_the_reference_architectures(fidelity):
    want = {"attention": merbench_attention(DIMS, H, C), "attention_robust": merbench_attention(DIMS, H, C),
            "Exp1": merbench_attention(DIMS, H, C),  # forward_original: MERBench's encoders and attention
            "Exp2": seeds_vae(DIMS, H, C), "Exp3": seeds_vae(DIMS, H, C) + proxy_attention(H),
            "Exp4": seeds_vae(DIMS, H, C) + proxy_attention(H),
            # the published code builds no proxy attention without the VAE; the paper's Exp5 has one
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
            "optimizer", "lr_schedule", "grad_clip", "use_vae", "use_proxy_attention", "use_modality_dropout", "modality_dropout",
            "modality_dropout_warmup", "kl_weight", "recon_weight", "cross_kl_weight", "fusion_temperature"}
    for name, preset in PRESETS.items():
        assert keys <= set(preset), name
    assert preset_config("attention_robust").modality_dropout_warmup == 0  # not Exp4's 15
    assert (preset_config("attention").model, preset_config("attention_robust").model) == ("attention", "attention_robust")
    for name in ("attention", "attention_robust"):  # MERBench's main-release.py loop, model-tune.yaml's grad_clip
        assert (PRESETS[name]["optimizer"], PRESETS[name]["lr_schedule"], PRESETS[name]["grad_clip"]) == ("adam", "constant", -1.0)
    for name in ("Exp1", "Exp2", "Exp3", "Exp4", "Exp5"):  # the design plan's model-tune.yaml: grad_clip 1.0
        assert (PRESETS[name]["optimizer"], PRESETS[name]["lr_schedule"], PRESETS[name]["grad_clip"]) == ("adamw", "plateau", 1.0)


def test_the_former_default_name_is_refused_with_its_new_name():
    with pytest.raises(ConfigError, match="'seeds_code' is now called 'design_plan'"):
        make_config(fidelity="seeds_code")
    assert make_config().fidelity == "published"


# ---------------------------------------------------------------- the modality-dropout schedule

@pytest.mark.parametrize("epochs", [15, 30, 150])
def test_dropout_rate_per_epoch_in_both_modes_never_depends_on_epochs(epochs):
    def rates(name, fidelity):
        cfg = preset_config(name, fidelity=fidelity, epochs=epochs)
        return [modality_dropout_rate(cfg, e) for e in range(1, epochs + 1)]

    # the published code (train_v2.sh's warm-up 15): 0 through epoch 15, then 0.2*(e-15)/15, 0.2 from epoch 30 on
    code = [0.0] * 15 + [0.2 * k / 15 for k in range(1, 16)] + [0.2] * 120
    # paper: 0 through epoch 15, then 0.2*(e-15)/(150-15), reaching 0.2 at E = 150
    paper = [0.0] * 15 + [0.2 * k / 135 for k in range(1, 136)]
    for code_mode in ("published", "design_plan"):
        assert rates("Exp4", code_mode) == pytest.approx(code[:epochs], abs=1e-12)
        # no warm-up: the code drops at p_max from epoch 1
        assert rates("Exp1", code_mode) == [0.2] * epochs
        assert rates("attention_robust", code_mode) == [0.2] * epochs
    assert rates("Exp4", "paper") == pytest.approx(paper[:epochs], abs=1e-12)
    # the paper's ramp starts from 0 at e = 0
    assert rates("Exp1", "paper") == pytest.approx([0.2 * e / 150 for e in range(1, epochs + 1)], abs=1e-12)
    assert all(modality_dropout_rate(preset_config("Exp4", fidelity=f, epochs=epochs), e) == 0 for f in
               MODES for e in range(1, 16))


def test_ramp_key_overrides_the_fidelity():
    cfg = preset_config("Exp4", modality_dropout_ramp="last_epoch")
    assert cfg.fidelity == "published" and modality_dropout_rate(cfg, 30) == pytest.approx(0.2 * 15 / 135)
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

@pytest.mark.parametrize("fidelity", MODES)
def test_modality_dropout_reaches_the_classifier_except_under_the_design_plan(fidelity, fixed_noise):
    # Exp4 on the VAE path in training, no other randomness: with modality dropout at 0.95 vs 0 the
    # logits are unchanged under design_plan (z only: the decoders) and changed under published and
    # paper (mu and std reach the fusion); the reconstruction sees the dropped z in every mode
    outs = {}
    for p in (0.0, 0.95):
        torch.manual_seed(0)
        cfg = preset_config("Exp4", fidelity=fidelity, hidden_dim=H, dropout=0.0, modality_dropout=p)
        model = build_model(cfg, DIMS, C).train()
        torch.manual_seed(1)
        outs[p] = model(batch(), modality_p=modality_dropout_rate(cfg, 150))  # the full rate in every ramp
    assert torch.equal(outs[0.0][1], outs[0.95][1]) == (fidelity == "design_plan")
    assert not torch.equal(outs[0.0][3], outs[0.95][3])


def test_published_reading_without_z_leaves_the_decoders_the_intact_z(fixed_noise):
    # modality_dropout_z=False: the classifier sees the drop, the VAE losses (KL on the undropped
    # posteriors, reconstruction from the intact z) do not
    outs = {}
    for p in (0.0, 0.95):
        torch.manual_seed(0)
        cfg = preset_config("Exp4", hidden_dim=H, dropout=0.0, modality_dropout=p, modality_dropout_z=False)
        model = build_model(cfg, DIMS, C).train()
        torch.manual_seed(1)
        outs[p] = model(batch(), modality_p=modality_dropout_rate(cfg, 150))
    assert not torch.equal(outs[0.0][1], outs[0.95][1])
    assert torch.equal(outs[0.0][3], outs[0.95][3])


def seeds_fusion_weight(tau, std, others):
    """The published UncertaintyWeightedFusion for one dropped modality (std 1e6, mean std u = 1e6)
    beside two of std `others`: softmax((1/(u+1e-6))/tau) over the three."""
    logits = [1 / (std + 1e-6) / tau] + [1 / (others + 1e-6) / tau] * 2
    return math.exp(logits[0]) / sum(math.exp(v) for v in logits)


@pytest.mark.parametrize("others, published", [(1.0, 0.1253), (0.5, 0.0394), (0.1, 0.0)])
def test_a_dropped_modality_keeps_the_seeds_fusion_weight_under_the_default(others, published):
    # Exp4 (tau 0.8), audio dropped in every sample, the other modalities' stds all `others`
    # (logvar head set to 2 ln others): the weight the proxy attention receives is the published formula
    assert seeds_fusion_weight(0.8, 1e6, others) == pytest.approx(published, abs=5e-5)  # the numbers
    seen = {}
    for fidelity, want in (("published", seeds_fusion_weight(0.8, 1e6, others)), ("design_plan", 1 / 3), ("paper", 0.0)):
        model = build_model(preset_config("Exp4", fidelity=fidelity, hidden_dim=H, dropout=0.0), DIMS, C).train()
        with torch.no_grad():
            for enc in model.encoders:
                enc.heads.logvar_layer.weight.zero_()
                enc.heads.logvar_layer.bias.fill_(2 * math.log(others))
        model.proxy_attention.register_forward_hook(lambda mod, args, out: seen.update(w=args[2]))
        keep = torch.tensor([[False, True, True]]).expand(1, 16, 3)
        present = keep if fidelity == "paper" else None
        model.forward_members([x[None] for x in batch()], [None] * 3, present, keep, Draws.from_global(1, "cpu"))
        w = seen["w"][0].double()
        assert torch.allclose(w[:, 0], torch.full((16,), want, dtype=torch.float64), atol=1e-6 if want else 1e-12), fidelity
        assert torch.allclose(w[:, 1], w[:, 2])  # the two kept modalities share the rest


def test_attention_is_merbenchs_raw_scores_and_robust_v1_the_softmax():
    torch.manual_seed(0)
    for name, softmax, feat_dropout in [("attention", False, 0.0), ("attention_robust", True, 0.4)]:
        model = build_model(preset_config(name, hidden_dim=H), DIMS, C).eval()
        assert model.fusion.softmax is softmax and model.uses_feat_dropout == (feat_dropout > 0)
        assert model.value("dropout") == 0.4
        hid = [torch.rand(1, 4, H) for _ in range(3)]
        fused, w = model.fusion(hid, 0.0, None)
        raw = model.fusion.fc_att(model.fusion.attention_mlp(torch.cat(hid, -1), None, 0.0, None))
        assert torch.allclose(w, torch.softmax(raw, -1) if softmax else raw)


def test_exp5_is_exp1_in_the_seeds_code_and_the_proxy_variant_under_paper():
    assert effective_config(preset_config("Exp5")) == effective_config(preset_config("Exp1"))
    assert (effective_config(preset_config("Exp5", fidelity="design_plan"))
            == effective_config(preset_config("Exp1", fidelity="design_plan")))
    assert effective_config(preset_config("Exp5", fidelity="paper")) != effective_config(preset_config("Exp1", fidelity="paper"))
    torch.manual_seed(0)
    m5 = build_model(preset_config("Exp5", hidden_dim=H), DIMS, C)
    torch.manual_seed(0)
    m1 = build_model(preset_config("Exp1", hidden_dim=H), DIMS, C)
    assert not hasattr(m5, "proxy_attention")
    assert all(torch.equal(a, b) for a, b in zip(m5.state_dict().values(), m1.state_dict().values()))
    assert hasattr(build_model(preset_config("Exp5", hidden_dim=H, fidelity="paper"), DIMS, C), "proxy_attention")


# ---------------------------------------------------------------- the training loop

def reference_epoch(cfg, data, seed, fold, n_folds):
    """One epoch of MERBench's main-release.py loop on one fold, in float64: the fold's model built
    alone, torch.optim.Adam(lr, weight_decay=l2) (or torch's AdamW), clip_grad_value_ unless
    grad_clip is -1, on the engine's batches (its fold split and per-fold batch order). Returns the
    model and how many gradient entries the clip changed."""
    model = build_model(cfg, data.dims, len(data.classes), seed_folds=[(seed, fold)]).double().train()
    train = data.splits["train"]
    tr, _ = stratified_folds(train.emos, n_folds, seed)[fold]
    order = torch.as_tensor(tr)[torch.randperm(len(tr), generator=torch.Generator().manual_seed(seed * 1000 + fold))]
    xs = [torch.as_tensor(x, dtype=torch.float64) for x in train.inputs]
    emos, vals = torch.as_tensor(train.emos), torch.as_tensor(train.vals, dtype=torch.float64)
    optim = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[cfg.optimizer]
    opt = optim(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    clipped = 0
    for start in range(0, len(order), cfg.batch_size):
        idx = order[start:start + cfg.batch_size]
        _, emos_out, vals_out, interloss = model([x[idx] for x in xs])
        has = ~torch.isnan(vals[idx])  # samples without valence are left out of the valence metrics
        val_mse = ((vals_out - torch.nan_to_num(vals[idx])) ** 2 * has).sum() / has.sum().clamp(min=1)
        loss = interloss + torch.nn.functional.cross_entropy(emos_out, emos[idx]) + val_mse
        opt.zero_grad()
        loss.backward()
        if cfg.grad_clip != -1:
            clipped += sum(int((p.grad.abs() > cfg.grad_clip).sum()) for p in model.parameters())
            torch.nn.utils.clip_grad_value_(model.parameters(), cfg.grad_clip)
        opt.step()
    return model, clipped


@pytest.mark.parametrize("name, changes", [("attention", {}), ("attention_robust", {}),
                                           ("Exp1", {"grad_clip": 0.02}), ("Exp4", {"grad_clip": 0.02})])
def test_one_epoch_equals_torchs_optimiser_and_clipping_on_the_same_batches(name, changes, tiny_data, fixed_noise):
    # the presets' loops: baselines Adam with coupled L2 (MERBench), constant lr, no clipping; V2
    # AdamW with clip_grad_value_ (a small clip here, so that it acts). No dropout: deterministic.
    cfg = preset_config(name, hidden_dim=H, dropout=0.0, modality_dropout=0.0, epochs=2, **changes)
    engine = Engine([(cfg, 3)], tiny_data, n_folds=2, device="cpu", dtype=torch.float64)
    engine.step()
    for fold in range(2):
        ref, clipped = reference_epoch(cfg, tiny_data, 3, fold, 2)
        assert (clipped > 0) == (cfg.grad_clip != -1)
        for (pname, mine), theirs in zip(engine.model.named_parameters(), ref.parameters()):
            assert torch.allclose(mine[fold], theirs[0], rtol=0, atol=1e-10), (name, fold, pname)
    lrs = {type(m.scheduler).__name__ for m in engine.members}
    assert lrs == ({"Constant"} if name.startswith("attention") else {"Plateau"})


# ---------------------------------------------------------------- the suite, records, the CLI

def sweep_args(*extra):
    return ablation.build_parser().parse_args(list(extra))


def test_ablation_suite_has_every_row_and_trains_exp5_once_by_default():
    sweep = ablation.make_sweep(sweep_args("--quick"))
    assert [p.label for p in sweep.points] == ["attention", "attention_robust", "Exp1", "Exp2", "Exp3", "Exp4"]
    assert [p for p in sweep.points if p.label == "Exp1"][0].identical == ("Exp5",)
    notes = "\n".join(sweep.notes)
    assert "Exp5 is identical in configuration to Exp1" in notes
    assert "Exp4: modality dropout starts after epoch 15" in notes and "attention_robust:" not in notes
    paper = ablation.make_sweep(sweep_args("--set", "fidelity=paper"))
    assert len(paper.points) == 7 and not any(p.identical for p in paper.points) and not paper.notes
    specs = plan.trial_specs(sweep, "t", DEFAULT_STORAGE, [])
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


def test_fra_folders_train_the_frame_level_encoders(tmp_path, capsys):
    from prmf.train import main
    root = fra_root(tmp_path)
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
    root = fra_root(tmp_path, names=("a-FRA", "t-FRA", "v-UTT"))
    assert main(["--data", str(root), "--features", "a-FRA,t-FRA,v-UTT", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "mixes utterance-level and frame-level" in err and err.count("\n") == 1
    with pytest.raises(ConfigError, match="needs frame-level"):
        for_data(make_config(feat_type="frm_unalign"), "utt")
    with pytest.raises(ConfigError, match="frm_align is not supported"):
        make_config(feat_type="frm_align")
