"""Robustness scenarios: missing modalities and seeded feature noise, stored as fold-averaged rows."""
import numpy as np
import pytest
import torch

from prmf import records, robustness, store
from prmf.config import preset_config
from prmf.train import main as train_main
from prmf.engine import train_trial

FAST = dict(lr=3e-3, batch_size=64, hidden_dim=16, dropout=0.1, epochs=2)
NAMES = ["-a", "-t", "-v", "-a-t", "-a-v", "-t-v", "noise:0.5", "noise:1", "noise:2"]  # 'all' is the clean input
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def inputs(n=200, frames=None, device="cpu"):
    g = torch.Generator().manual_seed(1)
    shape = (n,) if frames is None else (n, frames)
    xs = [torch.randn(*shape, d, generator=g) * s for d, s in ((8, 1.0), (12, 3.0), (6, 0.5))]
    xs[1][:10] = 0  # ten samples without text
    return [x.to(device) for x in xs]


def test_scenario_names_and_missing_patterns():
    sc = robustness.scenarios()
    assert list(sc) == NAMES and robustness.missing_patterns()[0] == "all"
    x = inputs()
    for name, dropped in {"-a": {0}, "-t": {1}, "-v": {2}, "-a-t": {0, 1}, "-a-v": {0, 2}, "-t-v": {1, 2}}.items():
        out = sc[name](x)
        for i in range(3):
            assert torch.equal(out[i], torch.zeros_like(x[i]) if i in dropped else x[i]), (name, i)
    assert robustness.noise_level("noise:0.5") == 0.5 and robustness.noise_level("-a") is None


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("frames", [None, 5])
def test_noise_is_seeded_scaled_and_keeps_missing_rows(device, frames):
    x = inputs(frames=frames, device=device)
    noisy = robustness.add_noise(1.0, seed=0)
    a, b = noisy(x), noisy(x)
    assert all(torch.equal(p, q) for p, q in zip(a, b))  # repeated calls: the same noise
    c = robustness.add_noise(1.0, seed=1)(x)
    assert not torch.equal(a[0], c[0])
    for xi, ai in zip(x, a):
        assert ai.device == xi.device and ai.shape == xi.shape
        present = (xi != 0).any(-1)
        assert torch.equal(ai[~present], xi[~present])  # missing rows still read as missing
        delta = (ai - xi)[present].reshape(-1, xi.shape[-1])
        ref = xi[present].reshape(-1, xi.shape[-1]).std(0)
        assert torch.allclose(delta.std(0) / ref, torch.ones_like(ref), atol=0.25)
    big = robustness.add_noise(2.0, seed=0)(x)
    assert torch.allclose(big[0] - x[0], 2 * (a[0] - x[0]), atol=1e-5)  # same draw, twice the scale
    if device != "cpu":  # the noise does not depend on the device
        cpu = noisy([t.cpu() for t in x])
        assert all(torch.allclose(p.cpu(), q, atol=1e-5) for p, q in zip(a, cpu))


@pytest.fixture(scope="module")
def trial(tiny_data):
    cfg = preset_config("Exp4", **FAST)
    return cfg, train_trial(cfg, tiny_data, seed=0, scenarios=robustness.scenarios())


def test_every_scenario_is_stored_once_and_all_is_the_clean_rows(tmp_path, tiny_data, trial):
    cfg, result = trial
    tests = ["test1", "test2", "test3"]
    assert set(result.scenarios) == {(s, n) for s in tests for n in NAMES}  # 'all' is not scored twice
    results, epochs, preds = records.tables(result, tid="Exp4-s0-r", sweep="t", experiment="Exp4", cfg=cfg, seed=0,
                                            dataset=tiny_data, status="finished", wall_time_s=1.0)
    store.write_trial(tmp_path, "Exp4-s0-r", results, epochs, preds)
    df = store.read_results(tmp_path)
    rob = df[df.scenario != "clean"]
    assert rob.is_aggregate.all() and rob.fold.isna().all()
    assert sorted(zip(rob.split, rob.scenario)) == sorted((s, n) for s in tests for n in NAMES)
    # the report's 'all' column is the clean fold-averaged rows themselves
    from analysis.report import robustness_table
    table = robustness_table(df.assign(group="Exp4")).set_index(["split", "scenario"])
    clean = df[(df.scenario == "clean") & df.is_aggregate].set_index("split")
    for s in tests:
        assert table.loc[(s, "all"), "acc_mean"] == clean.acc[s] and table.loc[(s, "all"), "f1_mean"] == clean.f1[s]
    # the scenarios really change the inputs
    assert all(any(result.scenarios[(s, n)] != result.splits[s].metrics for s in tests) for n in NAMES)


def test_train_cli_writes_scenario_rows_unless_disabled(tmp_path, data_dir):
    common = ["--data", "synthetic", "--profile", "tiny", "--experiment", "Exp1", "--epochs", "1", "--folds", "2",
              "--set", "hidden_dim=16"]
    assert train_main(common + ["--out", str(tmp_path / "on")]) == 0
    assert train_main(common + ["--no-robustness", "--out", str(tmp_path / "off")]) == 0
    on, off = store.read_results(tmp_path / "on"), store.read_results(tmp_path / "off")
    assert set(on.scenario) == {"clean", *NAMES}
    assert set(off.scenario) == {"clean"}
    assert np.array_equal(on[on.scenario == "clean"].acc.to_numpy(), off.acc.to_numpy())
