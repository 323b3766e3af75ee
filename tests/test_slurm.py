"""slurm/smrl.sh's launch logic under a faked SLURM allocation: 1 node, 2 CPU processes.

``srun`` and ``scontrol`` are small stand-ins on PATH (srun runs its command on this machine
as node 0; scontrol answers ``show hostnames`` and records ``requeue``); everything else is
the real script: it reads the config, derives the accelerate launch from SLURM's variables,
trains the SMRL stages (tiny Qwen2, DeepSpeed ZeRO-2, 2 gloo ranks) and evaluates the final
stage sharded over the same ranks. The requeue test sends the batch shell the pre-timeout
USR1 in the middle of stage 2.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.mini_beir import mini_data_dir

pytestmark = pytest.mark.distributed

ROOT = Path(__file__).resolve().parents[1]
JOB_ID = "4242"

FAKE_SRUN = """#!/bin/bash
# fake srun: one task on this machine, node 0; srun's own options are dropped
while [[ $# -gt 0 && $1 == -* ]]; do shift; done
export SLURM_NODEID=0 SLURM_PROCID=0 SLURM_LOCALID=0
exec "$@"
"""
FAKE_SCONTROL = """#!/bin/bash
case "$1 $2" in
  "show hostnames") echo localhost ;;
  requeue*) echo "requeue $2" >> "$FAKE_SLURM_LOG" ;;
  *) echo "fake scontrol: unexpected: $*" >&2; exit 1 ;;
esac
"""


@pytest.fixture(scope="module")
def cluster(tmp_path_factory) -> dict:
    """The fake Slurm bin folder, the data and the environment of a 1-node, 2-process job."""
    root = tmp_path_factory.mktemp("slurm")
    bin_dir = root / "bin"
    bin_dir.mkdir()
    for name, text in (("srun", FAKE_SRUN), ("scontrol", FAKE_SCONTROL)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    env = dict(os.environ)
    env.setdefault("SMEC_CACHE", str(ROOT / ".cache"))
    env.setdefault("TORCH_EXTENSIONS_DIR", str(Path(env["SMEC_CACHE"]) / "torch_extensions"))
    env.update({
        "PATH": f"{bin_dir}{os.pathsep}{Path(os.sys.executable).parent}{os.pathsep}{env['PATH']}",
        "FAKE_SLURM_LOG": str(root / "slurm.log"), "SLURM_JOB_ID": JOB_ID, "SLURM_NNODES": "1",
        "SLURM_GPUS_ON_NODE": "2", "SLURM_JOB_NODELIST": "localhost", "SLURM_SUBMIT_DIR": str(ROOT),
        "ACCEL_CONFIG": "configs/accelerate/cpu-2proc-zero2.yaml", "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1", "SMEC_LOG_LEVEL": "INFO", "PYTHONPATH": str(ROOT),
    })
    env.pop("ACCELERATE_USE_CPU", None)
    return {"root": root, "env": env, "log": root / "slurm.log", "data": mini_data_dir(tmp_path_factory)}


def smrl_args(cluster: dict, out: Path) -> list[str]:
    return ["bash", "slurm/smrl.sh", "configs/tiny-qwen2-cpu.yaml", f"data.data_dir={cluster['data']}",
            "data.dataset=mini", "model.max_length=48", "run.dims=[32,16]", "run.progress=false",
            f"run.output_dir={out}", "e2e.steps_per_stage=16", "e2e.checkpoint_every=0", "e2e.basis_docs=32",
            "e2e.deepspeed=ds_configs/zero2.json", "track.backend=none"]


def start(cluster: dict, out: Path, port: int, restart: int = 0) -> subprocess.Popen:
    env = dict(cluster["env"], MAIN_PORT=str(port), SLURM_RESTART_COUNT=str(restart))
    path = out.with_name(out.name + f"-{restart}.log")
    with open(path, "w") as log:
        proc = subprocess.Popen(smrl_args(cluster, out), cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    proc.log_path = path  # type: ignore[attr-defined]
    return proc


def finish(proc: subprocess.Popen, timeout: int = 600) -> str:
    rc = proc.wait(timeout=timeout)
    text = proc.log_path.read_text()  # type: ignore[attr-defined]
    assert rc == 0, text[-4000:]
    return text


def requeues(cluster: dict) -> list[str]:
    return cluster["log"].read_text().splitlines() if cluster["log"].exists() else []


@pytest.fixture(scope="module")
def uninterrupted(cluster) -> Path:
    out = cluster["root"] / "uninterrupted"
    log = finish(start(cluster, out, port=29611))
    assert "1 node(s) x 2 processes" in log and "cpu-2proc-zero2.yaml" in log and "2 stages" in log
    return out


@pytest.mark.slow  # a whole smrl.sh run on 2 ranks: minutes on 2 cores (.ci/run's second step)
def test_smrl_sh_trains_every_stage_and_evaluates_sharded(cluster, uninterrupted):
    train_log = json.loads((uninterrupted / "train_log.json").read_text())
    assert train_log["world_size"] == 2 and train_log["deepspeed"] is True
    assert len(train_log["losses"]) == 32  # 2 stages x 16 steps
    for s in (1, 2):
        assert (uninterrupted / "stages" / f"stage{s}" / "head.safetensors").exists()
    result = json.loads((uninterrupted / "stages" / "stage2" / "eval" / "eval.json").read_text())
    assert result["world_size"] == 2
    assert set(result["metrics"]) == {"full", "smec", "truncate"}
    assert set(result["metrics"]["smec"]) == {"32", "16"}
    assert requeues(cluster) == []


@pytest.mark.slow  # a whole smrl.sh run on 2 ranks: minutes on 2 cores (.ci/run's second step)
def test_pre_timeout_signal_mid_stage_checkpoints_requeues_and_resumes_exactly(cluster, uninterrupted):
    out = cluster["root"] / "requeued"
    proc = start(cluster, out, port=29621)
    stage1 = out / "stages" / "stage1" / "smec.json"
    deadline = time.time() + 400
    while not stage1.exists():  # stage 1 exported: stage 2 is about to start
        assert proc.poll() is None, proc.log_path.read_text()[-4000:]
        assert time.time() < deadline, "stage 1 never finished"
        time.sleep(0.05)
    proc.send_signal(signal.SIGUSR1)  # what #SBATCH --signal=B:USR1@300 sends the batch shell
    log = finish(proc)
    assert "time limit near (USR1)" in log
    assert requeues(cluster) == [f"requeue {JOB_ID}"]
    assert not (out / "train_log.json").exists() and not (out / "stages" / "stage2").exists()
    # the checkpoint written on the way out is in the middle of stage 2
    marks = [json.loads(p.read_text()) for p in (out / "checkpoints").glob("step-*/complete.json")]
    newest = max(marks, key=lambda m: m["global_step"])
    assert newest["stage"] == 2 and 0 < newest["step_in_stage"] < 16, newest

    # the requeued job: same id, restart count 1; stage 1 is neither trained nor exported again
    stamp = (out / "stages" / "stage1" / "head.safetensors").stat().st_mtime_ns
    log = finish(start(cluster, out, port=29631, restart=1))
    assert f"resuming from {out / 'checkpoints' / ('step-%08d' % newest['global_step'])}" in log
    assert (out / "stages" / "stage1" / "head.safetensors").stat().st_mtime_ns == stamp
    assert requeues(cluster) == [f"requeue {JOB_ID}"]  # no second requeue

    a = json.loads((uninterrupted / "train_log.json").read_text())
    b = json.loads((out / "train_log.json").read_text())
    assert b["losses"] == a["losses"]  # all 32 steps, bit for bit
    ea = json.loads((uninterrupted / "stages" / "stage2" / "eval" / "eval.json").read_text())
    eb = json.loads((out / "stages" / "stage2" / "eval" / "eval.json").read_text())
    assert eb["metrics"] == ea["metrics"]  # the same final metrics, exactly


def test_bad_override_fails_before_any_launch(cluster, tmp_path):
    env = dict(cluster["env"], MAIN_PORT="29641")
    proc = subprocess.run(["bash", "slurm/smrl.sh", "configs/tiny-qwen2-cpu.yaml", "e2e.no_such_key=1",
                           f"run.output_dir={tmp_path / 'x'}"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode != 0
    assert "smec: error:" in proc.stderr and "no_such_key" in proc.stderr
    assert "smec-smrl: job" not in proc.stdout  # nothing was launched
