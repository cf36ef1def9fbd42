"""The typed config, the ablation presets, and the single-trial CLI's errors."""
import re
import subprocess
import sys

import pytest

from prmf import store
from prmf.config import PRESETS, ConfigError, make_config, parse_sets, preset_config
from prmf.train import main


def test_defaults_are_the_papers_best_config():
    c = make_config()
    assert (c.hidden_dim, c.dropout, c.lr, c.weight_decay, c.batch_size, c.epochs, c.patience) == \
        (128, 0.4, 3e-4, 1e-4, 32, 150, 40)
    assert preset_config("Exp4") == c


def test_ablation_presets_match_the_spec_table():
    table = {  # exp: use_vae, use_proxy, kl, recon, tau, warm-up
        "Exp1": (False, False, None, None, None, 0), "Exp2": (True, False, 0.01, 0.1, 1.0, 0),
        "Exp3": (True, True, 0.01, 0.1, 1.0, 0), "Exp4": (True, True, 0.005, 0.15, 0.8, 15),
        "Exp5": (False, True, None, None, 1.0, 0)}
    assert set(table) | {"attention", "attention_robust"} == set(PRESETS)
    for name, (vae, proxy, kl, recon, tau, warm) in table.items():
        c = preset_config(name)
        assert (c.use_vae, c.use_proxy_attention, c.modality_dropout, c.modality_dropout_warmup) == (vae, proxy, 0.2, warm)
        if kl is not None:
            assert (c.kl_weight, c.recon_weight, c.cross_kl_weight) == (kl, recon, 0.01)
        if tau is not None:
            assert c.fusion_temperature == tau


@pytest.mark.parametrize("changes, message", [
    ({"kl_wieght": 0.1}, "unknown config key 'kl_wieght'"),
    ({"hidden_dim": 1.5}, "config key 'hidden_dim': expected int"),
    ({"use_vae": "yes"}, "config key 'use_vae': expected bool"),
    ({"kl_weight": -0.1}, "config key 'kl_weight': must be >= 0"),
    ({"dropout": 1.0}, r"config key 'dropout': must be in \[0, 1\)"),
    ({"fusion_temperature": 0}, "config key 'fusion_temperature': must be > 0"),
    ({"model": "misa"}, "config key 'model': must be one of"),
])
def test_bad_config_values_name_the_key(changes, message):
    with pytest.raises(ConfigError, match=message):
        make_config(**changes)


def test_set_values_are_parsed_to_the_field_type():
    assert parse_sets(["lr=0.01", "use_vae=false", "epochs=3"]) == {"lr": 0.01, "use_vae": False, "epochs": 3}
    with pytest.raises(ConfigError, match="cannot read 'abc' as float"):
        parse_sets(["lr=abc"])


def test_cli_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys):
    assert main(["--data", str(tmp_path / "missing"), "--out", str(tmp_path / "out")]) == 2
    assert main(["--data", "synthetic", "--set", "dropout=2", "--out", str(tmp_path / "out")]) == 2
    assert main(["--data", "synthetic", "--threads", "0", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: {tmp_path / 'missing'}: dataset root not found",
                   "error: config key 'dropout': must be in [0, 1), got 2.0", "error: --threads must be >= 1, got 0"]
    assert not (tmp_path / "out").exists()


def test_cli_runs_one_trial_into_a_store(tmp_path, data_dir):
    out = tmp_path / "store"
    proc = subprocess.run([sys.executable, "-m", "prmf.train", "--data", "synthetic", "--profile", "tiny",
                           "--experiment", "Exp1", "--epochs", "2", "--set", "hidden_dim=16", "--threads", "1", "--out", str(out)],
                          capture_output=True)
    err = proc.stderr.decode()  # not text=True: its universal newlines would turn "\r" into "\n"
    assert proc.returncode == 0, err
    # stderr is a pipe here, as in a job log: plain lines, no carriage returns running them together
    assert "\r" not in err and re.search(r"^\S+: epoch 2/2  mean val emoval [-\d.]+  ETA ", err, re.M), err
    df = store.read_results(out)
    clean = df[df.scenario == "clean"]
    assert len(clean) == 24 and set(clean.split) == {"cv", "test1", "test2", "test3"} and (df.experiment == "Exp1").all()
    assert set(df.scenario) >= {"-t", "-a-v", "noise:1"}  # robustness rows are on by default


def test_threads_sets_torchs_threads_before_training(tmp_path, monkeypatch, data_dir):
    import torch

    class Applied(Exception):
        pass

    def set_num_threads(n):
        raise Applied(n)

    monkeypatch.setattr(torch, "set_num_threads", set_num_threads)  # stop there: no training, no global change
    with pytest.raises(Applied, match="^3$"):
        main(["--data", "synthetic", "--profile", "tiny", "--threads", "3", "--out", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()
