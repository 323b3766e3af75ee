"""`smec encode` under `accelerate launch` with 2 CPU processes (gloo) builds the same cache
as one process: each rank encodes its own shards, rank 0 writes the manifest."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from smec_dist.cache import load_cache
from smec_dist.cli import main
from test_cli import DATASET, build_tiny_beir

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.distributed
def test_two_rank_encode_equals_one_process(tmp_path, data_dir):
    build_tiny_beir(data_dir / "scifact", tmp_path / DATASET)
    common = [f"data.data_dir={tmp_path}", f"data.dataset={DATASET}", "cache.shard_size=16", "run.progress=false"]
    assert main(["encode", *common, f"cache.dir={tmp_path / 'one'}"]) == 0

    env = dict(os.environ, ACCELERATE_USE_CPU="1", HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1",
               PYTHONPATH=str(ROOT))
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "29531",
           str(ROOT / "launch" / "encode.py"), *common, f"cache.dir={tmp_path / 'two'}"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = proc.stderr
    assert "rank 0/2" in log and "rank 1/2" in log, log[-3000:]  # both ranks encoded shards

    one, two = load_cache(tmp_path / "one"), load_cache(tmp_path / "two")
    for part in ("corpus", "queries"):
        assert one.ids(part) == two.ids(part)
        np.testing.assert_allclose(one.embeddings(part), two.embeddings(part), atol=1e-5)
    assert len(one.manifest["parts"]["corpus"]["shards"]) >= 4
