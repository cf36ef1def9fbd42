"""Smoke tests of the benchmark scripts at the tiny profile (the benchmarks themselves are run by
hand: benchmarks/RESULTS.md). Nothing here measures speed."""
import importlib.util
import math
import types
from pathlib import Path

import pytest
import torch

from prmf.config import MEMBER_KEYS, pack_key
from prmf.models.draws import Draws

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def load(name):
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_grid_throughput_parts(tiny_data, monkeypatch):
    gt = load("grid_throughput")
    trials = gt.grid_trials(gt.DEFAULT_GRID, epochs=2, seeds=2)
    assert len(trials) == 54 and len({pack_key(c) for c, _ in trials}) == 1  # one pack can hold them all
    assert len({tuple(getattr(c, k) for k in MEMBER_KEYS) for c, _ in trials}) == 27
    assert [s for _, s in trials[26:28]] == [0, 1] and trials[0][0].modality_dropout_warmup == 0

    costs = gt.model_costs(trials[0][0], tiny_data, torch.device("cpu"))
    assert costs["flops_train_sample"] > 2 * costs["flops_val_sample"] > 0  # backward ~ 2x forward
    assert costs["saved_bytes_step"] > costs["input_bytes_step"] > 0
    flops, nbytes = gt.epoch_traffic(costs, "1", 5, 400, 100)
    flops_mb, nbytes_mb = gt.epoch_traffic(costs, "merbench", 1, 400, 100)
    assert flops == flops_mb and nbytes_mb > nbytes  # plain AdamW and per-batch validation move more bytes

    keep = gt.seeds_modality_dropout_keep((1, 4000), 0.5, Draws.from_global(1, "cpu"))
    assert keep.shape == (1, 4000, 3) and keep.dtype == torch.bool
    dropped = ~keep.all(-1)
    assert abs(dropped.float().mean().item() - 0.5) < 0.05 and keep[dropped].sum(-1).max() <= 2

    def sync():
        pass
    t, samples, val_samples, _ = gt.run_engine(trials[:1], tiny_data, "cpu", 1, sync)
    n = len(tiny_data.splits["train"])
    assert t > 0 and (samples, val_samples) == (4 * n, n)  # one timed epoch: each sample in 4 folds' training
    import prmf.models.attention as model_base
    monkeypatch.setattr(model_base, "modality_dropout_keep", model_base.modality_dropout_keep)  # the loop swaps in the seeds'
    t, samples, val_samples, _ = gt.run_merbench(trials[:1], 1, tiny_data, "cpu", 1, sync)
    assert t > 0 and math.isclose(samples / val_samples, 4, rel_tol=0.02)


def test_gpu_check_compare_on_cpu(tiny_data, capsys):
    gc = load("gpu_check")
    assert gc.compare(types.SimpleNamespace(device="cpu", profile="tiny", epochs=2))
    assert capsys.readouterr().out.startswith("ok: cpu vs cpu, tiny, 2 epochs")


def test_grid_throughput_bad_inputs(tmp_path, capsys):
    gt = load("grid_throughput")
    good = dict(epochs=2, modes="merbench,1,27", merbench_subset="2,1", seeds=1, packs_measured=0, threads=0,
                device="cpu", grid=str(gt.DEFAULT_GRID), precision="fp32")
    gt.check_args(types.SimpleNamespace(**good))
    bad_grid = tmp_path / "g.yaml"
    bad_grid.write_text("base: Exp4\ngrid:\n  nope: [1]\n")
    for change, says in [({"epochs": 1}, "--epochs 1"), ({"modes": "1,x"}, "--modes: 'x'"),
                         ({"merbench_subset": "2,6"}, "--merbench-subset '2,6'"),
                         ({"grid": str(bad_grid)}, "unknown config key 'nope'")]:
        with pytest.raises(SystemExit) as e:
            gt.check_args(types.SimpleNamespace(**{**good, **change}))
        err = capsys.readouterr().err
        assert e.value.code == 2 and err.startswith("error: ") and says in err and err.count("\n") == 1


def test_one_config_plain_kernels_compute_the_engine_kernels_model(tiny_data, monkeypatch):
    """benchmarks/one_config.py's plain loop swaps the model's hand-written kernels for plain autograd:
    the same model, the same outputs and gradients (dropout off), so the ratio compares loops."""
    from prmf.config import preset_config
    from prmf.models import build_model, layers
    oc = load("one_config")
    cfg = preset_config("Exp4", hidden_dim=16)
    torch.manual_seed(0)
    model = build_model(cfg, tiny_data.dims, len(tiny_data.classes)).double()
    xs = [torch.as_tensor(x[:8], dtype=torch.float64)[None] for x in tiny_data.splits["train"].inputs]

    def run():
        model.zero_grad()
        model.eval()  # no dropout: the two kernels' masks are drawn differently
        _, emos, vals, interloss = model(xs, None)
        (emos.sum() + vals.sum() + interloss.sum()).backward()
        return [emos.detach(), vals.detach(), interloss.detach()] + [p.grad.clone() for p in model.parameters() if p.grad is not None]

    engine = run()
    for owner, name in [(layers._Linear, "apply"), (layers._ReconMSE, "apply"), (Draws, "keep_mask")]:
        monkeypatch.setattr(owner, name, getattr(owner, name))  # restored after the test
    original = layers._Linear.apply
    oc.plain_kernels()
    assert layers._Linear.apply is not original and Draws.keep_mask(None, torch.ones(4), 0.5).dtype == torch.bool
    plain = run()
    assert len(plain) == len(engine) > 20
    for a, b in zip(plain, engine):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)
