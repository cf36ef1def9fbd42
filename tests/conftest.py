"""Shared fixtures: a generated MERBench root (tiny profile) and its loaded dataset."""
import os

import pytest

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
    """PRMF_DATA_DIR for the whole test session, so `--data synthetic` never touches ~/.cache."""
    d = tmp_path_factory.mktemp("prmf-data")
    os.environ["PRMF_DATA_DIR"] = str(d)
    return d


@pytest.fixture(scope="session")
def tiny_root(data_dir):
    from prmf.data import synthetic
    return synthetic.ensure("tiny", seed=0)


@pytest.fixture(scope="session")
def tiny_data(tiny_root):
    from prmf.data import load_merbench
    from prmf.data.synthetic import FEATURES
    return load_merbench(tiny_root, FEATURES["tiny"])


@pytest.fixture(scope="session")
def small_data(data_dir):
    from prmf.data import load_data
    return load_data("synthetic", profile="small")
