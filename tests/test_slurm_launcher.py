"""The Slurm launcher's logic (cluster/slurm*.py, cluster/ray_node.py) without a Slurm: Slurm's
commands (sbatch, sinfo, scontrol) and the nodes' python are answered at the process boundary,
as submitit tests its launcher. tests/test_slurm_launch.py runs the same code on a real Slurm."""
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cluster import ray_node, slurm, slurm_check, slurm_env, slurm_job, slurm_stop
from cluster.slurm_env import LaunchError

REPO = Path(__file__).resolve().parents[1]
REAL_RUN = subprocess.run  # for bash itself, where Slurm's commands are answered by FakeSlurm
TORCH_CPU = (0, "2.13.0+cpu none 0\n")
TORCH_CUDA = (0, "2.6.0+cu124 12.4 1\n")


class FakeSlurm:
    """subprocess.run for the launcher: answers by program name (rc, output), records each call;
    a program with no answer is missing (FileNotFoundError, as for a real missing program)."""

    def __init__(self, **answers):
        self.answers, self.calls = answers, []

    def __call__(self, cmd, **kwargs):
        self.calls.append(list(cmd))
        answer = self.answers.get(Path(cmd[0]).name)
        if answer is None:
            raise FileNotFoundError(cmd[0])
        rc, out = answer(cmd) if callable(answer) else answer
        return subprocess.CompletedProcess(cmd, rc, out, "")

    def called(self, program):
        return [c for c in self.calls if Path(c[0]).name == program]


@pytest.fixture
def fake(monkeypatch):
    def install(**answers):
        f = FakeSlurm(**answers)
        monkeypatch.setattr(subprocess, "run", f)
        return f
    return install


# ---------------------------------------------------------------- sbatch options and Slurm's variables

def test_sbatch_options_as_sbatch_reads_them_later_ones_winning():
    defaults = slurm_env.script_options((REPO / "cluster" / "launch_ray.sh").read_text())
    assert "--cpus-per-task=8" in defaults and not any("YOUR_" in o for o in defaults)  # ##SBATCH lines are off
    req = slurm_env.parse_sbatch_options(defaults + ["-c", "2", "-pgpu", "--nodes", "3", "-A", "lab", "--exclusive"])
    assert req["cpus-per-task"] == "2" and req["partition"] == "gpu" and req["nodes"] == "3"
    assert req["account"] == "lab" and req["exclusive"] == "" and req["time"] == "04:00:00"
    assert req["signal"] == "B:USR1@300" and req["requeue"] == ""


@pytest.mark.parametrize("options, want", [
    (["--gpus-per-node=a100:4"], 4),
    (["--gpus-per-node=0", "--gres=gpu:a100:2"], 2),
    (["--gres=craynetwork:1,gpu:3"], 3),
    (["--gpus=5", "--nodes=2"], 3),
    (["--gpus=a100:8"], 8),
    (["--gpus-per-node=0"], 0),
    ([], 0),
])
def test_gpus_per_node_of_a_request(options, want):
    assert slurm_env.requested_gpus_per_node(slurm_env.parse_sbatch_options(options)) == want


@pytest.mark.parametrize("env, want", [
    ({}, 0),
    ({"SLURM_GPUS_ON_NODE": "4", "SLURM_GPUS_PER_NODE": "8"}, 4),
    ({"SLURM_GPUS_PER_NODE": "a100:4"}, 4),
    ({"SLURM_GPUS_PER_NODE": "a100:2,v100:1"}, 3),
    ({"SLURM_GPUS_PER_NODE": "0"}, 0),
    ({"CUDA_VISIBLE_DEVICES": "0,1,2"}, 3),
    ({"CUDA_VISIBLE_DEVICES": "NoDevFiles", "SLURM_JOB_GPUS": "5"}, 1),
    ({"PRMF_GPUS_PER_NODE": "2", "SLURM_GPUS_ON_NODE": "4"}, 2),
])
def test_gpus_on_node_from_what_slurm_sets_in_a_job(env, want):
    assert slurm_env.gpus_on_node(env) == want


def test_allocation_cpus_and_gpus():
    assert slurm_env.node_cpus("16(x2),8") == [16, 16, 8]
    assert slurm_env.node_cpus("") == []
    assert slurm_env.allocation_gpus({"SLURM_GPUS_PER_NODE": "4"}, 3) == 12
    assert slurm_env.allocation_gpus({"SLURM_GPUS": "a100:6"}, 3) == 6           # --gpus for the whole job
    assert slurm_env.allocation_gpus({"SLURM_GPUS": "6", "SLURM_GPUS_ON_NODE": "2"}, 3) == 6
    assert slurm_env.allocation_gpus({"PRMF_NUM_GPUS": "1", "SLURM_GPUS_PER_NODE": "4"}, 3) == 1


# ---------------------------------------------------------------- the head's address

def scontrol_nodes(addrs):
    def answer(cmd):
        if cmd[1:3] == ["show", "node"]:
            return 0, f"NodeName={cmd[3]} Arch=x86_64 NodeAddr={addrs[cmd[3]]} NodeHostName={cmd[3]}\n"
        return 1, "unexpected"
    return answer


def test_head_address_is_the_route_to_another_node(fake, monkeypatch):
    f = fake(scontrol=scontrol_nodes({"n2": "10.1.0.12"}), hostname=(0, "172.17.0.1\n"))
    routes = {"10.1.0.12": "10.1.0.11", "1.1.1.1": "192.168.5.5"}
    monkeypatch.setattr(slurm_env, "route_source", routes.get)
    assert slurm_env.find_head_ip(["n1", "n2"], {}) == "10.1.0.11"
    assert f.called("scontrol") == [["scontrol", "show", "node", "n2", "-o"]]
    assert slurm_env.find_head_ip(["n1", "n2"], {"PRMF_HEAD_IP": "10.9.9.9"}) == "10.9.9.9"


def test_head_address_falls_back_and_never_loopback_across_hosts(fake, monkeypatch):
    monkeypatch.setattr(slurm_env, "route_source", lambda addr: None)
    monkeypatch.setattr(slurm_env, "resolve_v4", lambda name: ["127.0.1.1"])
    fake(scontrol=scontrol_nodes({"n2": "n2", "n3": "127.0.0.1"}), hostname=(0, "127.0.0.1\n"))
    assert slurm_env.find_head_ip(["n1"], {}) == "127.0.0.1"               # one node: loopback will do
    assert slurm_env.find_head_ip(["n1", "n3"], {}) == "127.0.0.1"         # every node on this host (tests)
    assert slurm_env.find_head_ip(["n1", "n2"], {}) is None                # another host: no loopback
    fake(scontrol=scontrol_nodes({"n2": "n2"}), hostname=(0, "127.0.0.1 10.0.0.7 fd00::1\n"))
    assert slurm_env.find_head_ip(["n1", "n2"], {}) == "10.0.0.7"           # `hostname -I`


# ---------------------------------------------------------------- the sweep command

def sweep_env(**extra):
    return {"PRMF_PYTHON": "python", "PRMF_NUM_GPUS": "4", "PRMF_STORAGE": "/shared/runs", **extra}


def test_sweep_command_gets_the_launchers_flags_unless_the_args_name_them(tmp_path):
    cmd = slurm_job.sweep_command(sweep_env(PRMF_DATA="/d/mer2023"), "10.0.0.1:6379", str(REPO))
    assert cmd == "python sweeps/ablation.py --num-gpus 4 --address 10.0.0.1:6379 --storage /shared/runs --data /d/mer2023"
    cmd = slurm_job.sweep_command(sweep_env(PRMF_DATA="synthetic", PRMF_SWEEP_ARGS="--data=synthetic --num-gpus 1 --seeds 3"),
                                  "H:1", str(REPO))
    assert cmd == "python sweeps/ablation.py --address H:1 --storage /shared/runs --data=synthetic --num-gpus 1 --seeds 3"
    # an installed package, run from a folder without a checkout
    cmd = slurm_job.sweep_command(sweep_env(PRMF_DATA="/my data"), "H:1", str(tmp_path))
    assert cmd == "python -m sweeps.ablation --num-gpus 4 --address H:1 --storage /shared/runs --data '/my data'"
    assert slurm_job.sweep_command(sweep_env(PRMF_SWEEP_CMD="echo hi"), "H:1", str(REPO)) == "echo hi"


@pytest.mark.parametrize("env, error", [
    (sweep_env(), "no data given: set PRMF_DATA="),
    (sweep_env(PRMF_SWEEP_CMD="python sweeps/grid.py --num-gpus 8"), "no data given"),
    (sweep_env(PRMF_DATA="/a", PRMF_SWEEP_ARGS="--data /b"), "PRMF_DATA=/a and PRMF_SWEEP_ARGS' --data /b disagree"),
])
def test_sweep_command_refuses_no_data_and_two_datas(env, error):
    with pytest.raises(LaunchError, match=error):
        slurm_job.sweep_command(env, "H:1", str(REPO))


# ---------------------------------------------------------------- the login-node check

def test_check_passes_a_request_that_fits(fake, tmp_path, capsys):
    f = fake(sbatch=(0, "sbatch: Job 7 to start at 2026-01-01T00:00:00 using 2 processors on nodes n1 in partition local\n"),
             python=TORCH_CPU)
    rc = slurm_check.login_check(["-c", "2", "--gpus-per-node=0", "-p", "local"], str(REPO / "cluster" / "launch_ray.sh"),
                                 {"PRMF_PYTHON": "python", "PRMF_WORKDIR": str(REPO), "PRMF_DATA": "synthetic",
                                  "PRMF_STORAGE": str(tmp_path / "store")}, "sbatch -c 2 slurm/launch_ray.sh")
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "sbatch would request 1 node(s), 1 task(s) x 2 CPUs and 0 GPU(s) per node, time 04:00:00, partition local" in out
    assert "check: sbatch --test-only: Job 7 to start" in out
    assert f"sweep command: python sweeps/ablation.py --num-gpus 0 --address HEAD:PORT --storage {tmp_path}/store " \
        "--data synthetic" in out
    assert out.rstrip().endswith("check: OK; submit it: sbatch -c 2 slurm/launch_ray.sh")
    assert f.called("sbatch") == [["sbatch", "--test-only", "-c", "2", "--gpus-per-node=0", "-p", "local",
                                   str(REPO / "cluster" / "launch_ray.sh")]]
    assert not (tmp_path / "store").exists()  # the check creates nothing


def test_check_explains_a_request_the_partition_cannot_run(fake, tmp_path, capsys):
    def sinfo(cmd):
        fmt = cmd[-1]
        return 0, {"%P": "debug\nlocal*\n", "%c": "2\n2\n", "%G": "gpu:1\ngpu:tesla:1(S:0)\n"}[fmt]
    fake(sbatch=(1, "sbatch: error: Batch job submission failed: Requested node configuration is not available\n"),
         sinfo=sinfo, python=TORCH_CPU)
    (tmp_path / "a-file").write_text("")
    rc = slurm_check.login_check([], str(REPO / "cluster" / "launch_ray.sh"),
                                 {"PRMF_PYTHON": "python", "PRMF_WORKDIR": str(REPO), "PRMF_DATA": str(tmp_path),
                                  "PRMF_STORAGE": str(tmp_path / "a-file" / "store")}, "sbatch slurm/launch_ray.sh")
    out = capsys.readouterr().out
    assert rc == 1
    assert "partition local, account default" in out  # sinfo's default partition
    assert "FAILED sbatch --test-only: error: Batch job submission failed: Requested node configuration" in out
    hints = [line for line in out.splitlines() if "] hint: " in line]
    assert len(hints) == 1 and "asks for 8 CPUs per node but the nodes of partition local have at most 2: " \
        "add --cpus-per-task=2" in hints[0], out
    assert "torch 2.13.0+cpu is a CPU build but the job asks for GPUs: make venv CUDA=12.4" in out
    assert f"FAILED: storage PRMF_STORAGE={tmp_path}/a-file/store cannot be created or written" in out
    assert f"FAILED: data {tmp_path} is not a MERBench dataset root" in out
    assert "check: 4 problem(s) above; nothing was submitted" in out


def test_check_without_slurm_or_torch_says_so(fake, tmp_path, capsys):
    fake(python=(1, "ModuleNotFoundError: No module named 'torch'\n"))
    rc = slurm_check.login_check(["--gpus-per-node=0"], str(REPO / "cluster" / "launch_ray.sh"),
                                 {"PRMF_PYTHON": "python", "PRMF_DATA": "synthetic", "PRMF_STORAGE": str(tmp_path)},
                                 "x")
    out = capsys.readouterr().out
    assert rc == 1 and "check: no sbatch here; run this on a login node of the cluster" in out
    assert "FAILED: python cannot import torch" in out and "check: 2 problem(s) above" in out


@pytest.mark.parametrize("gpus, hint", [
    (2, "asks for 2 GPU(s) per node but the nodes of partition p have at most 1: ask for at most 1 (--gpus-per-node=1)"),
    (1, "see what partition p offers"),
])
def test_fit_hint_names_what_does_not_fit(fake, gpus, hint):
    fake(sinfo=lambda cmd: (0, {"%c": "64\n", "%G": "gpu:a100:1\n"}[cmd[-1]]))
    assert hint in slurm_check.fit_hint("p", 8, 1, gpus)
    fake(sinfo=(1, "slurm_load_partitions: Unable to contact slurm controller"))
    assert "Slurm's controller does not answer here" in slurm_check.fit_hint("p", 8, 1, gpus)


# ---------------------------------------------------------------- in the job: the plan, the dry run, requeue

def job_env(tmp_path, **extra):
    return {"SLURM_JOB_ID": "42", "SLURM_JOB_NODELIST": "n[1-2]", "SLURM_JOB_CPUS_PER_NODE": "4(x2)",
            "SLURM_GPUS_PER_NODE": "gpu:2", "PRMF_PYTHON": "python", "PRMF_WORKDIR": str(REPO),
            "PRMF_STORAGE": str(tmp_path / "a" / ".." / "store"), "PRMF_DATA": "synthetic", "PRMF_HEAD_IP": "10.0.0.1",
            **extra}


def test_plan_is_bash_the_batch_script_evaluates(fake, tmp_path, capsys):
    fake(scontrol=lambda cmd: (0, "n1\nn2\n") if cmd[1:3] == ["show", "hostnames"] else (1, ""))
    plan = slurm_job.job_plan(job_env(tmp_path, PRMF_RAY_TMP="relative/tmp"))
    assert "job 42 (restart 0) on 2 node(s): n1 n2" in capsys.readouterr().out
    assert (tmp_path / "store").is_dir()
    show = 'echo "$RAY_ADDRESS|$PRMF_NUM_GPUS|$PRMF_STORAGE|$PRMF_RAY_TMP|${NODES[1]}|${NODE_CPUS[*]}|$SWEEP_CMD"'
    out = REAL_RUN(["bash", "-c", f"{slurm_job.shell_lines(plan)}\n{show}"], capture_output=True, text=True,
                   check=True).stdout.strip()
    address, gpus, storage, tmp, node, cpus, cmd = out.split("|")
    assert address.startswith("10.0.0.1:") and int(address.split(":")[1]) > 0
    assert (gpus, storage, tmp, node, cpus) == ("4", str(tmp_path / "store"), "/tmp", "n2", "4 4")
    assert cmd == f"python sweeps/ablation.py --num-gpus 4 --address {address} --storage {tmp_path}/store --data synthetic"


def test_dry_run_reports_and_cuda_check_refuses(fake, tmp_path, capsys):
    fake(scontrol=lambda cmd: (0, "n1\nn2\n") if cmd[2] == "hostnames" else (0, "JobId=42 TimeLimit=04:00:00 X=1"),
         python=TORCH_CPU)
    env = job_env(tmp_path)
    plan = slurm_job.job_plan(env)
    slurm_job.dry_run_report(plan, env)
    out = capsys.readouterr().out
    assert "time limit 04:00:00" in out and "dry run: 2 node(s) n1 n2; CPUs per node 4 4; GPUs per node 2" in out
    assert "python python (torch 2.13.0+cpu without CUDA)" in out and "dry run: nothing started" in out
    assert "Slurm gave this node 2 GPU(s) but torch.cuda.is_available() is False in python (torch 2.13.0+cpu)" \
        in slurm_job.cuda_problem(env, 2)
    assert slurm_job.cuda_problem({**env, "PRMF_SKIP_CUDA_CHECK": "1"}, 2) == ""
    fake(python=TORCH_CUDA)
    assert slurm_job.cuda_problem(env, 2) == "" and slurm_job.cuda_problem(env, 0) == ""


def test_plan_through_the_cli_is_one_error_line(fake, tmp_path, monkeypatch, capsys):
    fake(scontrol=(0, "n1\n"))
    for k, v in job_env(tmp_path, PRMF_DATA="", PRMF_SWEEP_ARGS="--seeds 2").items():
        monkeypatch.setenv(k, v)
    assert slurm.cli(["plan"]) == 1
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 2  # the job line and the error, no traceback
    assert "ERROR: no data given: set PRMF_DATA=" in captured.err


def test_requeue_stops_after_the_most_restarts(fake, capsys):
    f = fake(scontrol=(0, ""))
    assert slurm_job.requeue({"SLURM_JOB_ID": "42", "SLURM_RESTART_COUNT": "3"}) == 0
    assert f.called("scontrol") == [["scontrol", "requeue", "42"]]
    assert slurm_job.requeue({"SLURM_JOB_ID": "42", "SLURM_RESTART_COUNT": "3", "PRMF_MAX_REQUEUES": "3"}) == 1
    assert "not requeueing: already restarted 3 times (PRMF_MAX_REQUEUES=3)" in capsys.readouterr().out
    fake(scontrol=(1, "scontrol: error: Job is not requeueable"))
    assert slurm_job.requeue({"SLURM_JOB_ID": "42"}) == 1


def test_env_file_is_for_the_user_only(tmp_path):
    env = {"SLURM_JOB_ID": "42", "PRMF_RAY_ENV_DIR": str(tmp_path / "d"), "RAY_ADDRESS": "10.0.0.1:6379",
           "RAY_AUTH_TOKEN": "ab" * 24}
    path = Path(slurm_job.write_env_file(env))
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    out = subprocess.run(["bash", "-c", f"source {path}; echo $RAY_ADDRESS $RAY_AUTH_MODE $RAY_AUTH_TOKEN"],
                         capture_output=True, text=True).stdout.split()
    assert out == ["10.0.0.1:6379", "token", "ab" * 24]


# ---------------------------------------------------------------- Ray nodes and stopping by PID

def test_ray_start_lines_and_banner(monkeypatch):
    env = {"HEAD_IP": "10.0.0.1", "GCS_PORT": "6379", "RAY_ADDRESS": "10.0.0.1:6379"}
    head = ray_node.start_args("head", env, "/tmp/ray-42.0", "8", 2, [1001, 1002])
    assert head[1:4] == ["start", "--block", "--temp-dir"] and "--head" in head
    assert head[head.index("--port") + 1] == "6379" and head[head.index("--num-gpus") + 1] == "2"
    worker = ray_node.start_args("worker", env, "/tmp/ray-42.1", "8", 0, [1001, 1002])
    assert "--head" not in worker and worker[worker.index("--address") + 1] == "10.0.0.1:6379"
    log = "2026-01-01 00:00:00,000\tINFO scripts.py:1000 -- "
    assert ray_node.banner_filter(log + "Next steps\n") is None
    assert ray_node.banner_filter(log + "  ray stop\n") is None
    assert ray_node.banner_filter(log + "Ray runtime started.\n") == ray_node.STARTED
    assert ray_node.banner_filter("a warning of its own\n") == "a warning of its own"


def start_driver(code):
    """A stand-in sweep driver in a process group of its own, as the batch script starts it."""
    return subprocess.Popen([sys.executable, "-c", code], start_new_session=True)


def test_stop_driver_interrupts_then_terminates_by_pid(monkeypatch, capsys):
    monkeypatch.setattr(slurm_stop, "POLL", 0.05)
    polite = start_driver("import time\ntry:\n    time.sleep(60)\nexcept KeyboardInterrupt:\n    pass")
    time.sleep(0.3)
    t0 = time.monotonic()
    slurm_stop.stop_driver(polite.pid, 30)
    assert polite.wait(5) == 0 and time.monotonic() - t0 < 5  # SIGINT was enough
    stubborn = start_driver("import signal, time\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\ntime.sleep(60)")
    time.sleep(0.3)
    slurm_stop.stop_driver(stubborn.pid, 0.5)
    assert stubborn.wait(5) == -signal.SIGTERM
    out = capsys.readouterr().out
    assert "driver still running after 0.5s: SIGTERM, then SIGKILL" in out and out.count("driver stopped") == 2


def test_stop_driver_does_not_wait_on_a_dead_cluster(monkeypatch, capsys):
    monkeypatch.setattr(slurm_stop, "POLL", 0.05)
    head = subprocess.Popen(["true"])
    head.wait()
    stubborn = start_driver("import signal, time\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\ntime.sleep(60)")
    time.sleep(0.3)
    t0 = time.monotonic()
    slurm_stop.stop_driver(stubborn.pid, 60, head.pid)
    assert stubborn.wait(5) == -signal.SIGKILL and time.monotonic() - t0 < 5
    assert "the Ray head has stopped as well" in capsys.readouterr().out


def test_stop_ray_signals_the_head_and_the_steps(fake, tmp_path, capsys):
    f = fake(scancel=(0, ""))
    (tmp_path / "ray-42.0").mkdir()
    head = subprocess.Popen(["sleep", "60"])
    slurm_stop.stop_ray([head.pid, 99999999], "42", str(tmp_path))
    assert head.wait(5) == -signal.SIGTERM and not (tmp_path / "ray-42.0").exists()
    assert f.called("scancel") == [["scancel", "--signal=TERM", "42"]]
    assert "Ray stopped" in capsys.readouterr().out


# ---------------------------------------------------------------- prmf-slurm and the batch script

def test_prmf_slurm_submits_the_packaged_script(fake, monkeypatch, capsys):
    assert slurm.main(["--script"]) == 0
    script = Path(capsys.readouterr().out.strip())
    assert script == REPO / "cluster" / "launch_ray.sh" and (REPO / "slurm" / "launch_ray.sh").resolve() == script
    calls = []
    monkeypatch.setattr(subprocess, "call", lambda cmd, env: calls.append((cmd, env)) or 0)
    monkeypatch.delenv("PRMF_PYTHON", raising=False)
    assert slurm.main(["-p", "gpu", "--nodes=2"]) == 0
    assert slurm.main(["--dry-run", "-p", "gpu"]) == 0
    assert [c for c, _ in calls] == [["sbatch", "-p", "gpu", "--nodes=2", str(script)],
                                     ["sbatch", "-p", "gpu", str(script), "--dry-run"]]
    env = calls[0][1]
    assert env["PRMF_PYTHON"] == sys.executable and env["PATH"].split(os.pathsep)[0] == str(Path(sys.executable).parent)


def test_prmf_slurm_without_sbatch_is_one_line(monkeypatch, capsys):
    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.setattr(sys, "executable", "/nonexistent/python")
    assert slurm.main(["-p", "gpu"]) == 1
    assert capsys.readouterr().err.count("\n") == 1


def test_batch_script_keeps_only_the_shell_part():
    lines = (REPO / "cluster" / "launch_ray.sh").read_text().splitlines()
    assert len(lines) < 150
    assert os.access(REPO / "cluster" / "launch_ray.sh", os.X_OK)


def test_batch_script_outside_a_job_checks_or_refuses(tmp_path):
    """`bash launch_ray.sh --check` outside a job runs the check (here Slurm's controller does not
    answer: one problem); without --check it refuses in one line."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "PRMF_"))}
    env.update(PATH=f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}", PRMF_PYTHON=sys.executable,
               PRMF_VENV="", PRMF_DATA="synthetic", PRMF_STORAGE=str(tmp_path / "store"),
               SLURM_CONF=str(tmp_path / "empty-slurm.conf"))  # Slurm's clients fail at once on it
    (tmp_path / "empty-slurm.conf").write_text("")
    script = str(REPO / "slurm" / "launch_ray.sh")
    r = REAL_RUN(["bash", script, "--check", "-c", "2", "--gpus-per-node=0"], env=env, cwd=tmp_path, capture_output=True, text=True,
                 timeout=120)
    out = r.stdout + r.stderr
    assert r.returncode == 1 and "check: sbatch would request 1 node(s), 1 task(s) x 2 CPUs" in out, out
    assert "check: 1 problem(s) above; nothing was submitted" in out and "Traceback" not in out, out
    r = REAL_RUN(["bash", script], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and r.stdout.count("\n") == 1 and "ERROR: not inside a Slurm job" in r.stdout
