"""Shared fixtures: a generated MERBench root (tiny profile) and its loaded dataset."""
import glob
import os
import shutil
import signal
import subprocess
import tempfile
import sys
import time
import urllib.request
from pathlib import Path

import pytest

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

# Modules whose every test starts a real Ray, Slurm or MLflow server, or runs whole sweeps in
# subprocesses: the slow tier. `pytest -m "not slow"` runs the rest (the pack runner's pruning,
# storing and resume in process included) in about a minute; `make test` runs both.
SLOW_MODULES = {"test_sweeps", "test_search", "test_trackers", "test_integrity", "test_ray_cluster", "test_security",
                "test_slurm_launch", "test_install", "test_multihost", "test_hostile_sweeps"}


def pytest_collection_modifyitems(items):
    for item in items:
        if item.module.__name__ in SLOW_MODULES:
            item.add_marker(pytest.mark.slow)


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


@pytest.fixture(scope="session")
def shared():
    """find(*parts): a path in the lab's shared folder (beside the repo, or $PRMF_SHARED), which holds
    the real MER2023 label file and real MERBench result files. The product never needs it; a test
    that reads it is skipped, naming the missing path, in a clone with nothing beside it."""
    root = Path(os.environ.get("PRMF_SHARED") or Path(__file__).resolve().parents[2] / "shared")

    def find(*parts):
        path = root.joinpath(*parts)
        if not path.exists():
            pytest.skip(f"{path} is missing (the shared data folder beside the repo; or set PRMF_SHARED)")
        return path
    return find


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    """`mlflow server` on 127.0.0.1 with a SQLite backend and proxied artifacts; stopped by PID."""
    d = tmp_path_factory.mktemp("mlflow")
    from cluster.free_ports import free_ports
    pytest.importorskip("mlflow")
    port = free_ports(1)[0]
    log = open(d / "server.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{d}/mlflow.db",
                             "--artifacts-destination", str(d / "artifacts"), "--host", "127.0.0.1",
                             "--port", str(port), "--workers", "1"],
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while True:
        try:
            urllib.request.urlopen(uri + "/health", timeout=2)
            break
        except OSError:
            if proc.poll() is not None or time.time() > deadline:
                proc.kill()
                pytest.fail(f"mlflow server did not start: {(d / 'server.log').read_text()[-2000:]}")
            time.sleep(0.5)
    yield uri
    os.killpg(proc.pid, signal.SIGTERM)  # the server and its uvicorn worker, by our own PID
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    log.close()


@pytest.fixture(scope="session")
def postgres_url():
    """A PostgreSQL server (Debian's postgresql) on 127.0.0.1 in a temp folder, run as a non-root
    user (`nobody` when the tests run as root: PostgreSQL refuses root); its SQLAlchemy URL. Stopped
    with pg_ctl. Skipped, with the reason, where it cannot start."""
    pytest.importorskip("psycopg2", reason="psycopg2 (pip install 'prmf-sweep[test]') talks to PostgreSQL")
    bins = [shutil.which("initdb")] + sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    initdb = next((b for b in bins if b), None)
    if not initdb:
        pytest.skip("PostgreSQL is not installed (Debian: apt-get install postgresql)")
    pg_ctl = str(Path(initdb).with_name("pg_ctl"))
    from cluster.free_ports import free_ports
    d = Path(tempfile.mkdtemp(prefix="prmf-postgres-"))  # in /tmp itself: `nobody` cannot enter pytest's folders
    user = "nobody" if os.geteuid() == 0 else None
    if user:
        shutil.chown(d, user)
    port = free_ports(1)[0]

    def pg(*cmd):
        return subprocess.run(cmd, capture_output=True, text=True, timeout=120, user=user, cwd=d)
    done = pg(initdb, "-D", str(d / "data"), "-U", "prmf", "--auth=trust", "-E", "UTF8", "--no-sync")
    if done.returncode == 0:
        done = pg(pg_ctl, "-D", str(d / "data"), "-l", str(d / "server.log"), "-w", "-t", "60",
                  "-o", f"-h 127.0.0.1 -p {port} -k {d} -F", "start")
    if done.returncode != 0:
        shutil.rmtree(d, ignore_errors=True)
        pytest.skip(f"PostgreSQL did not start: {(done.stderr or done.stdout).strip()[-300:]}")
    yield f"postgresql+psycopg2://prmf@127.0.0.1:{port}/postgres"
    pg(pg_ctl, "-D", str(d / "data"), "-m", "fast", "-w", "stop")
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def fixed_noise(monkeypatch):
    """The VAE's eps ~ N(0, I) replaced by one fixed pattern over (sample, unit), the same for every
    member and step: with dropout off, training has no randomness left (for comparisons with a plain
    torch loop, whose draws could not be the engine's)."""
    import torch
    from prmf.models.draws import Draws

    def pattern(self, t):
        self.skip()
        rows, cols = t.shape[-2:]
        eps = torch.sin(0.37 * torch.arange(rows * cols, dtype=t.dtype, device=t.device))
        return eps.view(rows, cols).expand(t.shape)
    monkeypatch.setattr(Draws, "normal", pattern)
