"""`sbatch slurm/launch_ray.sh` on a real Slurm (slurmctld + two slurmd on this host).

- a two-node job runs a tiny ablation sweep on the built-in data and leaves the full store,
  its trials spread over both nodes, and nothing of Ray behind;
- a job interrupted twice -- by the time-limit warning (USR1: it stops the sweep and requeues
  itself) and by `scontrol requeue` -- comes back each time, resumes, never re-runs a finished
  trial, and ends with exactly the rows of the uninterrupted run;
- the first job as a new user meets it: the Slurm itself comes from slurm/local-slurm.sh, the
  login-node check (`--check`, no allocation) explains a request the nodes cannot run in one hint
  line, `scancel` says in one line how to resume, and `make venv CUDA=...` reinstalls torch.

Needs Slurm installed (slurm/install-test-slurm.sh); fails with one line if it is not.
Timings (cluster up, job to completion, requeue to resume) are printed and, with
PRMF_CLUSTER_TIMINGS=FILE, appended to FILE as JSON lines.
"""
import json
import os
import re
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from clusters import REPO, slurm_cluster_in, wait_until  # noqa: E402

LAUNCHER = REPO / "slurm" / "launch_ray.sh"
SWEEP_ARGS = "--data synthetic --profile small --experiments Exp1,Exp4 --epochs 2 --folds 5 --seeds 1"
PRESETS = {"Exp1", "Exp4"}
FOLDS = 5
SPLITS = {"cv", "test1", "test2", "test3"}
# columns that differ between two runs of the same trial by design
VOLATILE = {"sweep", "wall_time_s", "train_time_s", "node_ip", "hostname", "node_id"}
JOB_TIMEOUT = 300

pytestmark = pytest.mark.timeout(900)


def record(**timings):
    line = json.dumps({k: round(v, 1) if isinstance(v, float) else v for k, v in timings.items()})
    print(f"\n[cluster timings] {line}")
    if os.environ.get("PRMF_CLUSTER_TIMINGS"):
        with open(os.environ["PRMF_CLUSTER_TIMINGS"], "a") as f:
            f.write(line + "\n")


@pytest.fixture(scope="module")
def slurm(tmp_path_factory, data_dir):
    t0 = time.monotonic()
    with slurm_cluster_in(tmp_path_factory.mktemp("slurm")) as cluster:
        record(what="slurm cluster up (slurmctld + 2 slurmd, nodes idle)", seconds=time.monotonic() - t0)
        yield cluster


@pytest.fixture(scope="module")
def storage(tmp_path_factory):
    return tmp_path_factory.mktemp("sweeps")


def submit(slurm, storage, name, nodes, cpus):
    """sbatch the launcher with the sweep's defaults overridden only through its interface:
    sbatch options and PRMF_* variables. Ray token auth is left at the launcher's default."""
    log = storage / f"{name}.log"
    env = slurm.env(PRMF_STORAGE=storage, PRMF_SWEEP_ARGS=f"{SWEEP_ARGS} --name {name}",
                    PRMF_PYTHON=sys.executable, PRMF_VENV="", PRMF_STOP_TIMEOUT=60)
    env.pop("RAY_AUTH_MODE", None)
    env.pop("RAY_ADDRESS", None)
    opts = [f"--job-name={name}", f"--nodes={nodes}", f"--cpus-per-task={cpus}", "--gpus-per-node=0",
            "--time=20", f"--output={log}"]  # > the script's USR1 lead (300 s), or USR1 comes at once
    return slurm.sbatch(LAUNCHER, opts, env=env), log


def results(store_dir):
    from prmf.store import read_results
    return read_results(store_dir)


def result_files(store_dir):
    d = Path(store_dir) / "results"
    return {p.stem: p.stat() for p in d.glob("*.parquet")} if d.is_dir() else {}


def ray_leftovers(job_id):
    """Ray temp dirs or processes of this job still on the host."""
    left = [str(p) for p in Path("/tmp").glob(f"ray-{job_id}.*")]
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if f"/tmp/ray-{job_id}." in cmd:
                left.append(f"PID {proc.name}: {cmd[:120]}")
    return left


def check_store(df):
    assert not df.empty, "no results"
    assert set(df.experiment) == PRESETS
    assert df.trial_id.nunique() == len(PRESETS)
    assert set(df.status) == {"finished"}
    assert set(df.split) == SPLITS
    assert set(df.fold.dropna()) == set(range(FOLDS)) and df.fold.isna().equals(df.is_aggregate)
    assert not df.duplicated(["trial_id", "seed", "fold", "split", "scenario"]).any()


@pytest.fixture(scope="module")
def uninterrupted(slurm, storage):
    """The reference: a two-node job, one CPU per node, so the two trials run one per node."""
    t0 = time.monotonic()
    job, log = submit(slurm, storage, "plain", nodes=2, cpus=1)
    slurm.wait_state(job, "RUNNING", 60, log)
    t_run = time.monotonic()
    slurm.wait_state(job, "COMPLETED", JOB_TIMEOUT, log)
    t_end = time.monotonic()
    text = log.read_text()
    up = re.search(r"\+(\d+)s\] Ray cluster is up", text)
    record(what="2-node job: submit to completion", seconds=t_end - t0, queued_s=t_run - t0,
           ray_cluster_up_s=int(up.group(1)) if up else None)
    return job, log, storage / "plain"


def test_sbatch_runs_sweep_on_two_nodes(slurm, uninterrupted):
    job, log, store_dir = uninterrupted
    info = slurm.job(job)
    text = log.read_text()
    assert info["ExitCode"] == "0:0", text[-4000:]
    assert "cluster up: 2 node(s)" in text
    assert "Ray head" in text and "(auth: token)" in text
    assert "sweep driver exited with status 0" in text
    assert "--num-gpus 0" in text              # the allocation's GPUs, passed to the sweep
    # each node's `ray start` banner (next steps, "ray stop", ...) is one line in the job log
    assert text.count("Ray runtime started (the rest of the ray start banner is not shown") == 2, text[:4000]
    assert "ray stop" not in text and "Next steps" not in text, text[:4000]
    df = results(store_dir)
    check_store(df)
    # the two trials ran on the two Ray nodes of the allocation
    per_trial = df.groupby("trial_id").node_id.nunique()
    assert (per_trial == 1).all()
    assert df.node_id.nunique() == 2, df.groupby("trial_id").node_id.first()
    assert not ray_leftovers(job)


def test_requeue_resumes_without_rerunning_finished_trials(slurm, storage, uninterrupted):
    """One node, one CPU: the two trials run one after the other, so the job can be
    interrupted with one trial finished and the other one running."""
    job, log = submit(slurm, storage, "requeued", nodes=1, cpus=1)
    store_dir = storage / "requeued"
    slurm.wait_state(job, "RUNNING", 60, log)

    def one_finished_while_running():
        assert slurm.state(job) == "RUNNING", log.read_text()[-4000:]
        files = result_files(store_dir)
        assert len(files) < 2, "both trials finished before the job could be interrupted"
        return files if len(files) == 1 else None
    finished = wait_until(one_finished_while_running, JOB_TIMEOUT, interval=0.2, what="the first trial")

    # 1. the time-limit warning (--signal=B:USR1@...): the job stops the sweep and requeues itself
    t_usr1 = time.monotonic()
    r = slurm.run(["scancel", "--signal=USR1", "--batch", str(job)])
    assert r.returncode == 0, r.stderr
    wait_until(lambda: slurm.job(job).get("Restarts") == "1", 120, what="the job to requeue itself")
    slurm.wait_state(job, "PENDING", 60, log)
    t_pending1 = time.monotonic()
    slurm.release_if_held(job)
    slurm.wait_state(job, "RUNNING", 60, log)
    wait_until(lambda: "1 already done" in log.read_text(), 120, what="the sweep to resume after USR1")
    t_resumed1 = time.monotonic()

    # 2. `scontrol requeue` of the running job (what preemption with requeue does too), once the
    # resumed sweep reports the second trial's first epoch
    def second_trial_running():
        text = log.read_text()
        return re.search(r"done 1/2 .*running 1", text[text.index("(restart 1)"):])
    wait_until(second_trial_running, 120, interval=0.2, what="the second trial to run after the restart")
    t_requeue = time.monotonic()
    r = slurm.run(["scontrol", "requeue", str(job)])
    assert r.returncode == 0, r.stderr
    assert len(result_files(store_dir)) == 1, "the second trial finished before the requeue"
    slurm.wait_state(job, "PENDING", 60, log)
    t_pending2 = time.monotonic()
    assert slurm.job(job).get("Restarts") == "2"
    slurm.release_if_held(job)
    slurm.wait_state(job, "RUNNING", 60, log)
    t_running2 = time.monotonic()
    wait_until(lambda: log.read_text().count("1 already done") >= 2, 120, what="the sweep to resume after requeue")
    t_resumed2 = time.monotonic()
    slurm.wait_state(job, "COMPLETED", JOB_TIMEOUT, log)
    t_end = time.monotonic()
    record(what="USR1 -> self-requeued (PENDING)", seconds=t_pending1 - t_usr1)
    record(what="USR1 -> sweep resumed (Slurm's requeue delay: cred_expire=5s)", seconds=t_resumed1 - t_usr1)
    record(what="scontrol requeue -> PENDING", seconds=t_pending2 - t_requeue)
    record(what="scontrol requeue -> RUNNING again", seconds=t_running2 - t_requeue)
    record(what="scontrol requeue -> sweep resumed", seconds=t_resumed2 - t_requeue)
    record(what="resumed -> job completed", seconds=t_end - t_resumed2)

    text = log.read_text()
    assert slurm.job(job)["ExitCode"] == "0:0", text[-4000:]
    assert "SIGUSR1 received: the sweep is interrupted and the job requeues itself" in text and "requeueing job" in text
    # `scontrol requeue` (SIGTERM, as scancel and preemption): one line says what happens; the
    # driver's Ray no longer dumps a C++ stack and aborts
    assert "SIGTERM received: the sweep is interrupted, finished trials are kept in " in text, text
    assert "SIGTERM received at time=" not in text and not re.search(r" \d+ (Aborted|Killed|Terminated) ", text), text
    assert "(restart 1)" in text and "(restart 2)" in text
    # the trial finished before the interruptions was never run again: its file is untouched
    (tid, before), = finished.items()
    after = result_files(store_dir)
    assert (after[tid].st_ino, after[tid].st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert len(after) == 2

    # ... and the store holds exactly the rows of the uninterrupted run
    got, want = results(store_dir), results(uninterrupted[2])
    check_store(got)
    key = ["trial_id", "seed", "fold", "split", "scenario"]
    cols = [c for c in want.columns if c not in VOLATILE]
    got = got[cols].sort_values(key).reset_index(drop=True)
    want = want[cols].sort_values(key).reset_index(drop=True)
    pd.testing.assert_frame_equal(got, want, check_exact=False, rtol=1e-6, atol=1e-9)
    assert not ray_leftovers(job)


@pytest.mark.parametrize("gpu_options", [["--gpus-per-node=1"], ["--gpus-per-node=0", "--gres=gpu:1"]],
                         ids=["gpus-per-node", "gres"])
def test_allocation_gpus_reach_ray_and_the_sweep(slurm, storage, gpu_options):
    """Each test node has one (fake) GPU: however they are requested, both Ray nodes advertise
    theirs and the sweep command gets --num-gpus 2. (A stand-in command: no CUDA here.)"""
    log = storage / f"gpus-{gpu_options[-1].strip('-').replace('=', '-').replace(':', '-')}.log"
    env = slurm.env(PRMF_PYTHON=sys.executable, PRMF_VENV="", PRMF_SKIP_CUDA_CHECK="1",
                    PRMF_SWEEP_CMD='echo "sweep gets --num-gpus $PRMF_NUM_GPUS"')
    job = slurm.sbatch(LAUNCHER, ["--nodes=2", "--cpus-per-task=1", "--time=10", f"--output={log}", *gpu_options],
                       env=env)
    slurm.wait_state(job, "COMPLETED", 120, log)
    text = log.read_text()
    assert re.search(r"cluster up: 2 node\(s\) .*, 2 GPUs", text), text[-3000:]
    assert "sweep gets --num-gpus 2" in text
    assert not ray_leftovers(job)


def first_job(slurm, storage, name, opts=(), **env):
    """sbatch the launcher with its own #SBATCH defaults (only CPUs lowered to the test nodes' 2),
    as a first job would; returns (final state, log text)."""
    log = storage / f"{name}.log"
    env = slurm.env(PRMF_STORAGE=storage, PRMF_PYTHON=sys.executable, PRMF_VENV="", **env)
    job = slurm.sbatch(LAUNCHER, ["--cpus-per-task=1", f"--output={log}", *opts], env=env)
    state = slurm.wait_state(job, {"COMPLETED", "FAILED"}, 120, log)
    return state, log.read_text()


def test_dry_run_shows_the_first_job_defaults_and_starts_nothing(slurm, storage):
    state, text = first_job(slurm, storage, "dry", PRMF_DRY_RUN="1", PRMF_DATA="/data/mer2023")
    assert state == "COMPLETED", text
    assert "dry run: 1 node(s)" in text and "GPUs per node 1" in text, text
    assert "time limit 04:00:00" in text, text
    assert re.search(r"sweep command: .*sweeps/ablation\.py --num-gpus 1 .*--data /data/mer2023", text), text
    assert "nothing started" in text and "Ray head" in text and "ray start" not in text, text


def test_no_data_is_refused_before_anything_starts(slurm, storage):
    state, text = first_job(slurm, storage, "nodata", ["--gpus-per-node=0"])
    assert state == "FAILED", text
    assert "no data given: set PRMF_DATA=" in text and "ray start" not in text, text


def test_gpus_without_cuda_in_torch_are_refused(slurm, storage):
    """A GPU allocation whose torch is a CPU build (the venv made on a login node) fails at once,
    in one line, instead of training on CPUs for the whole job."""
    import torch
    state, text = first_job(slurm, storage, "nocuda", PRMF_DATA="synthetic", PRMF_RAY_START_TIMEOUT="30")
    if torch.cuda.is_available():  # a real GPU behind the fake GRES: the check passes
        assert "torch.cuda.is_available() is False" not in text, text
    else:
        assert state == "FAILED", text
        assert "torch.cuda.is_available() is False" in text and "ray start" not in text, text


def test_scancel_says_in_one_line_how_to_resume(slurm, storage):
    """`scancel`: the log says the sweep was interrupted and that the same sbatch resumes it.
    (A stand-in driver: the real one's SIGTERM path is the requeue test's.)"""
    log = storage / "cancelled.log"
    env = slurm.env(PRMF_STORAGE=storage, PRMF_PYTHON=sys.executable, PRMF_VENV="", PRMF_SWEEP_CMD="sleep 300")
    env.pop("RAY_AUTH_MODE", None)  # the launcher's default, token auth
    job = slurm.sbatch(LAUNCHER, ["--cpus-per-task=1", "--gpus-per-node=0", "--time=10", f"--output={log}"], env=env)
    wait_until(lambda: log.exists() and "sweep (restart 0): sleep 300" in log.read_text(), 60, what="the driver to start")
    assert slurm.run(["scancel", str(job)]).returncode == 0
    slurm.wait_state(job, "CANCELLED", 60, log)
    wait_until(lambda: "Ray stopped" in log.read_text(), 30, what="the launcher to stop Ray")
    text = log.read_text()
    assert f"SIGTERM received: the sweep is interrupted, finished trials are kept in {storage}; a requeued or " \
        "preempted job resumes it when it starts again, after scancel submit the same sbatch line again" in text, text
    assert not re.search(r" \d+ (Aborted|Killed|Terminated) ", text), text  # bash's notes on the driver's end
    assert not ray_leftovers(job)


# ---------------------------------------------------------------- the first job, before any allocation

def check(slurm, storage, *options, **env):
    """`bash slurm/launch_ray.sh --check OPTIONS` on the "login node": no allocation."""
    import subprocess
    env = slurm.env(PRMF_STORAGE=storage / "checked", PRMF_PYTHON=sys.executable, PRMF_VENV="", **env)
    r = subprocess.run(["bash", str(LAUNCHER), "--check", *options], env=env, cwd=REPO, capture_output=True,
                       text=True, timeout=120)
    return r.returncode, r.stdout + r.stderr


def test_local_slurm_is_one_command(slurm):
    """The cluster of these tests was started by slurm/local-slurm.sh, as docs/CLUSTERS.md tells a
    user to try the launcher on a workstation; it says how to use it."""
    out = (slurm.dir / "local-slurm.out").read_text()
    assert "local Slurm up: 2 node(s) n1,n2 with 2 CPUs and 1 GPU(s) each, partition local" in out, out
    assert f"export SLURM_CONF={slurm.conf}" in out, out
    assert slurm.run(["sinfo", "-h", "-N", "-o", "%N %c %G"]).stdout.split() == ["n1", "2", "gpu:1", "n2", "2", "gpu:1"]


def test_check_without_allocation_explains_a_request_that_cannot_fit(slurm, storage):
    """The script's defaults ask for 8 CPUs; the test nodes have 2. The check says so in one hint
    line, names the CPU build of torch if it is one (GPUs are requested), creates nothing and
    queues nothing."""
    import torch
    rc, out = check(slurm, storage, PRMF_DATA="synthetic")
    assert rc == 1, out
    assert "sbatch would request 1 node(s), 1 task(s) x 8 CPUs and 1 GPU(s) per node, time 04:00:00, partition local" in out, out
    assert "FAILED sbatch --test-only: allocation failure: Requested node configuration is not available" in out, out
    hints = [line for line in out.splitlines() if "] hint: " in line]
    assert len(hints) == 1 and "asks for 8 CPUs per node but the nodes of partition local have at most 2: " \
        "add --cpus-per-task=2" in hints[0], out
    assert ("is a CPU build but the job asks for GPUs: make venv CUDA=12.4" in out) == (torch.version.cuda is None), out
    assert "nothing was submitted" in out and "ray start" not in out, out
    assert not (storage / "checked").exists()
    assert not slurm.run(["squeue", "-h", "-n", "prmf-sweep"]).stdout.strip()


def test_check_passes_a_request_that_fits_and_shows_each_flag_once(slurm, storage):
    """With CPUs and GPUs the nodes have: exit 0, sbatch's own answer, and the sweep command with
    --data once although PRMF_DATA and PRMF_SWEEP_ARGS both name it; data that is not a MERBench
    root is refused."""
    rc, out = check(slurm, storage, "--cpus-per-task=2", "--gpus-per-node=0", PRMF_DATA="synthetic",
                    PRMF_SWEEP_ARGS="--data synthetic --epochs 2")
    assert rc == 0, out
    assert re.search(r"sbatch --test-only: Job \d+ to start at \S+ using 2 processors on nodes n\d in partition local", out), out
    cmd, = re.findall(r"sweep command: (.*)", out)
    assert cmd.endswith(f"sweeps/ablation.py --num-gpus 0 --address HEAD:PORT --storage {storage}/checked "
                        "--data synthetic --epochs 2"), cmd
    assert "check: OK; submit it: sbatch --cpus-per-task=2 --gpus-per-node=0 slurm/launch_ray.sh" in out, out
    rc, out = check(slurm, storage, "-c", "2", "--gpus-per-node=0", PRMF_DATA=str(storage))
    assert rc == 1 and f"FAILED: data {storage} is not a MERBench dataset root" in out, out


def test_prmf_slurm_checks_from_a_folder_without_a_checkout(slurm, storage, tmp_path):
    """The console command runs the packaged batch script's check from any folder: sbatch's own
    answer, and a sweep command that runs the installed package (no sweeps/ablation.py there)."""
    import subprocess
    env = slurm.env(PRMF_STORAGE=storage / "checked", PRMF_VENV="", PRMF_DATA="synthetic")
    env.pop("PRMF_PYTHON", None)  # the command's own interpreter
    r = subprocess.run([str(Path(sys.executable).parent / "prmf-slurm"), "--check", "-c", "2", "--gpus-per-node=0"],
                       env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out
    assert re.search(r"sbatch --test-only: Job \d+ to start at \S+ using 2 processors", out), out
    assert f"{sys.executable} -m sweeps.ablation --num-gpus 0 --address HEAD:PORT" in out, out
    assert "check: OK; submit it: prmf-slurm -c 2 --gpus-per-node=0" in out, out


def test_venv_is_rebuilt_when_the_torch_choice_changes(tmp_path):
    """`make venv CUDA=...` on an existing venv reinstalls torch from the new index; a plain
    `make venv` (or `make demo`) keeps the venv's own choice. The venv's python is a stand-in
    that logs its arguments: what is tested is the Makefile's decision, not pip."""
    import subprocess
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").write_text(f'#!/bin/sh\necho "$*" >> {tmp_path}/calls\n')
    (venv / "bin" / "python").chmod(0o755)

    def make(*args):
        calls = tmp_path / "calls"
        calls.unlink(missing_ok=True)
        r = subprocess.run(["make", "-s", "-C", str(REPO), "venv", f"VENV={venv}", *args],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        return r.stdout, calls.read_text().splitlines() if calls.exists() else []

    out, calls = make("TORCH_SPEC=torch==2.13.0")
    assert calls == ["-m pip install -q torch==2.13.0", "-m pip install -q -e .[test]"], calls
    assert make() == ("", [])                            # nothing changed
    out, calls = make("CUDA=12.4")
    assert "torch choice changed from 'torch==2.13.0' to 'torch --index-url https://download.pytorch.org/whl/cu124'" in out
    assert calls[:2] == ["-m pip uninstall -q -y torch",
                         "-m pip install -q torch --index-url https://download.pytorch.org/whl/cu124"], calls
    assert make("CUDA=12.4") == ("", [])
    assert make() == ("", [])                            # `make demo` keeps the CUDA build
    out, calls = make("CUDA=cpu")
    assert calls[1] == "-m pip install -q torch --index-url https://download.pytorch.org/whl/cpu", calls
