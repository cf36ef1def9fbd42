"""A real sweep (subprocesses, a local Ray) under SIGTERM and a full disk: each ends in one line that
says what was kept and how to resume, with no stack dump from Ray's signal handler, and the same
command then resumes it to every row once. One sweep folder carries all three runs (slow tier)."""
import os
import signal
import subprocess
import time

import pytest

from prmf import store

from helpers import sweep_argv, sweep_env

ARGS = ["--experiments", "Exp1", "--epochs", "60", "--folds", "2", "--name", "s"]  # long enough that a SIGTERM at the first progress line lands mid-training on a quiet machine too


def mount_tmpfs(path, size):
    if os.geteuid() != 0:
        return "mounting a small tmpfs needs root"
    path.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True, text=True)
    return f"mount -t tmpfs is not allowed here ({proc.stderr.strip()})" if proc.returncode else ""


def last_line(err):
    assert "Traceback" not in err and "SIGTERM received" not in err and "*** " not in err, err[-3000:]
    return err.strip().splitlines()[-1]


def test_sigterm_to_all_of_a_sweep_then_a_full_disk_then_the_resume(tmp_path, data_dir):
    storage = tmp_path / "small"
    no_mount = mount_tmpfs(storage, "64m")
    if no_mount:
        storage.mkdir(exist_ok=True)
    argv = sweep_argv("ablation.py", *ARGS, "--storage", str(storage))
    try:
        # 1. SIGTERM to every process of the sweep (kill -- -PGID, as a scheduler's cancel does), mid-training
        log = tmp_path / "err.log"
        with open(log, "w") as err:
            proc = subprocess.Popen(argv, stderr=err, stdout=subprocess.DEVNULL, env=sweep_env(), start_new_session=True)
            deadline = time.time() + 300
            while "trials done" not in log.read_text() and proc.poll() is None and time.time() < deadline:
                time.sleep(0.5)
            os.killpg(proc.pid, signal.SIGTERM)
            assert proc.wait(timeout=120) == 143
        line = last_line(log.read_text())
        assert line.startswith("interrupted (SIGTERM): kept 0 stored trials and the running packs' last checkpoints in ")
        assert line.endswith("run the same command again to resume sweep 's'")
        if no_mount:
            pytest.skip(f"the full-disk half: {no_mount}")

        # 2. the same command on a full disk: one line, nothing half-written
        free = os.statvfs(storage).f_bavail * os.statvfs(storage).f_frsize
        filler = storage / "filler"
        with open(filler, "wb") as f:
            f.write(b"\0" * (free - 16 * 1024))
        proc = subprocess.run(argv, capture_output=True, text=True, env=sweep_env(), timeout=600)
        line = last_line(proc.stderr)
        assert proc.returncode == 1 and line.startswith(f"error: the disk holding {storage} is full ("), proc.stderr[-3000:]
        assert "then run the same command again to resume sweep 's'" in line
        assert not list(storage.rglob(".*.tmp")) and not list(storage.rglob(".pred-*"))

        # 3. space freed: the same command finishes the sweep, every row once
        filler.unlink()
        proc = subprocess.run(argv, capture_output=True, text=True, env=sweep_env(), timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        rows = store.read_results(storage / "s")
        assert rows.trial_id.nunique() == 1 and not rows.duplicated(store.RESULT_KEY).any()
    finally:
        if not no_mount:
            subprocess.run(["umount", "-l", str(storage)], check=False)
