"""`smec eval` sharded over 2 processes (accelerate launch, gloo on CPU) gives exactly the
metrics of one process: each rank encodes its own shards (the same texts in the same batches
as one process would), rank 0 searches and scores."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from smec_dist.cache import load_cache
from smec_dist.cli import main
from tests.mini_beir import SCIFACT, mini_data_dir

ROOT = Path(__file__).resolve().parents[1]


def launch_eval(nproc: int, port: int, *args: str, timeout: int = 1800) -> subprocess.CompletedProcess:
    env = dict(os.environ, ACCELERATE_USE_CPU="1", HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT),
               OMP_NUM_THREADS=str(max(1, (os.cpu_count() or 2) // nproc)), SMEC_LOG_LEVEL="INFO")
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(nproc),
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", str(port), str(ROOT / "launch" / "eval.py"), *args]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    errors = [line for line in (proc.stdout + proc.stderr).splitlines() if "error:" in line.lower()]
    assert proc.returncode == 0, "\n".join(errors[:5]) + "\n" + proc.stdout[-2000:] + proc.stderr[-4000:]
    return proc


def _same_result(one: Path, two: Path) -> dict:
    a, b = json.loads((one / "eval.json").read_text()), json.loads((two / "eval.json").read_text())
    assert (a["world_size"], b["world_size"]) == (1, 2)
    assert b["metrics"] == a["metrics"]  # exactly, every method, dim and metric
    for part in ("corpus", "queries"):
        x, y = load_cache(one / "embeddings"), load_cache(two / "embeddings")
        assert x.ids(part) == y.ids(part)
        np.testing.assert_array_equal(x.embeddings(part), y.embeddings(part))
    return a


@pytest.mark.distributed
def test_two_process_eval_equals_one_process(tmp_path_factory, tmp_path):
    data = mini_data_dir(tmp_path_factory, n_queries=24, n_extra_docs=80)
    common = ["--config", "configs/scifact-minilm.yaml", f"data.data_dir={data}", "data.dataset=mini",
              "cache.shard_size=16", "run.progress=false", "model.max_length=128"]
    assert main(["eval", *common, "--output", str(tmp_path / "one")]) == 0
    proc = launch_eval(2, 29551, *common, "--output", str(tmp_path / "two"))
    assert "rank 0/2" in proc.stderr and "rank 1/2" in proc.stderr  # both ranks encoded shards
    result = _same_result(tmp_path / "one", tmp_path / "two")
    assert set(result["metrics"]) == {"full", "truncate"} and set(result["metrics"]["truncate"]) == {"192", "96", "48"}
    assert "| truncate |" in proc.stdout


@pytest.mark.slow
@pytest.mark.scifact
def test_two_process_eval_equals_one_process_on_scifact_test(tmp_path):
    """The acceptance run: MiniLM on the full SciFact test split (300 queries, 5,183 documents)."""
    common = ["--config", "configs/scifact-minilm.yaml", f"data.data_dir={SCIFACT.parent}", "run.progress=false"]
    assert main(["eval", *common, "--output", str(tmp_path / "one")]) == 0
    launch_eval(2, 29552, *common, "--output", str(tmp_path / "two"))
    result = _same_result(tmp_path / "one", tmp_path / "two")
    full = result["metrics"]["full"]["384"]["nDCG@10"]
    print(f"SciFact test, MiniLM full width: nDCG@10 {full:.6f} with 1 and with 2 processes")


@pytest.mark.distributed
def test_barrier_waits_for_every_rank_under_accelerate_launch(tmp_path):
    # accelerate launch on CPU gives PartialState DistributedType.NO, whose wait_for_everyone
    # returns at once: rank 0 then sealed a cache before rank 1 had written its last shard
    env = dict(os.environ, ACCELERATE_USE_CPU="1", PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", "29553", str(ROOT / "tests" / "scripts" / "barrier_probe.py"), str(tmp_path)]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert proc.stdout.count("seen") == 3
