"""Fault injection: SIGKILL at random moments of `smec encode` and `smec train`, then resume.

Each seed kills the whole process tree at a random moment of the run (drawn from the length of
an uninterrupted run, so kills land in loading, encoding or training steps, checkpoint and
export writes alike), reruns the same command (``--resume auto`` for training) and compares the
outcome with an uninterrupted run: the same cache embeddings bit for bit, the same per-step
losses and the same final head bit for bit. A few seeds run in CI; ``-m slow`` runs 10 + 10.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from smec_dist.cache import load_cache
from tests.mini_beir import mini_data_dir

ROOT = Path(__file__).resolve().parents[1]
FAST_SEEDS = [0, 1]
SLOW_SEEDS = list(range(2, 12))


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return mini_data_dir(tmp_path_factory, n_queries=16, n_extra_docs=48)


def _env() -> dict:
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    env.setdefault("SMEC_CACHE", str(ROOT / ".cache"))
    return env


def encode_cmd(data_dir: Path, cache: Path) -> list[str]:
    return [sys.executable, "-m", "smec_dist.cli", "encode", "--config", "configs/scifact-minilm.yaml",
            f"data.data_dir={data_dir}", "data.dataset=mini", "model.max_length=64", "cache.shard_size=8",
            "model.batch_size=8", "run.progress=false", f"cache.dir={cache}"]


def train_cmd(data_dir: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "smec_dist.cli", "train", f"data.data_dir={data_dir}", "data.dataset=mini",
            "model.name=tiny-qwen2", "model.max_length=32", "run.dims=[32,16]", "run.progress=false",
            f"run.output_dir={out}", "train.topk=4", "train.queue_size=16", "e2e.per_device_batch=4",
            "e2e.steps_per_stage=12", "e2e.checkpoint_every=3", "e2e.basis_docs=8", "e2e.backbone=lora",
            "e2e.backbone_lr=5e-3", "track.backend=none", "--resume", "auto"]


def run(cmd: list[str], timeout: int = 600) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return time.perf_counter() - t0


def run_killed(cmd: list[str], after: float) -> bool:
    """Start ``cmd``, SIGKILL its whole process group after ``after`` seconds; True if it was
    still running then (killed), False if it had already finished."""
    proc = subprocess.Popen(cmd, cwd=ROOT, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        proc.wait(timeout=after)
        return False
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        return True


@pytest.fixture(scope="module")
def encoded(data_dir, tmp_path_factory) -> tuple[Path, float]:
    cache = tmp_path_factory.mktemp("encode") / "cache"
    return cache, run(encode_cmd(data_dir, cache))


@pytest.fixture(scope="module")
def trained(data_dir, tmp_path_factory) -> tuple[Path, float]:
    out = tmp_path_factory.mktemp("train") / "out"
    return out, run(train_cmd(data_dir, out))


def _tensors(path: Path) -> tuple[dict, dict]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, f.metadata()


def _encode_case(seed, data_dir, encoded, tmp_path):
    reference, seconds = encoded
    after = random.Random(seed).uniform(0.3, 1.0) * seconds
    cache = tmp_path / "cache"
    killed = run_killed(encode_cmd(data_dir, cache), after)
    run(encode_cmd(data_dir, cache))  # the rerun finishes the missing shards
    a, b = load_cache(reference), load_cache(cache)  # verifies every shard's sha256
    for part in ("corpus", "queries"):
        assert a.ids(part) == b.ids(part)
        np.testing.assert_array_equal(a.embeddings(part), b.embeddings(part))
    print(f"encode seed {seed}: killed at {after:.1f} s of {seconds:.1f} s ({'killed' if killed else 'finished'})")


def _train_case(seed, data_dir, trained, tmp_path):
    reference, seconds = trained
    after = random.Random(1000 + seed).uniform(0.5, 1.0) * seconds  # the first half is mostly start-up
    out = tmp_path / "out"
    killed = run_killed(train_cmd(data_dir, out), after)
    leftovers = sorted(p.name for p in (out / "checkpoints").iterdir()) if (out / "checkpoints").exists() else []
    run(train_cmd(data_dir, out))  # --resume auto
    a = json.loads((reference / "train_log.json").read_text())
    b = json.loads((out / "train_log.json").read_text())
    assert b["losses"] == a["losses"]
    for s in (1, 2):
        head = Path("stages") / f"stage{s}" / "head.safetensors"
        want, got = _tensors(reference / head), _tensors(out / head)
        assert want[1] == got[1] and want[0].keys() == got[0].keys()  # metadata (key order is not kept)
        for name, tensor in want[0].items():
            assert torch.equal(tensor, got[0][name]), name
    print(f"train seed {seed}: killed at {after:.1f} s of {seconds:.1f} s "
          f"({'killed' if killed else 'finished'}; checkpoints then: {leftovers})")


@pytest.mark.parametrize("seed", FAST_SEEDS)
def test_encode_killed_at_random_resumes_to_the_same_cache(seed, data_dir, encoded, tmp_path):
    _encode_case(seed, data_dir, encoded, tmp_path)


@pytest.mark.parametrize("seed", FAST_SEEDS)
def test_train_killed_at_random_resumes_to_the_same_run(seed, data_dir, trained, tmp_path):
    _train_case(seed, data_dir, trained, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("seed", SLOW_SEEDS)
def test_encode_killed_at_random_slow(seed, data_dir, encoded, tmp_path):
    _encode_case(seed, data_dir, encoded, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("seed", SLOW_SEEDS)
def test_train_killed_at_random_slow(seed, data_dir, trained, tmp_path):
    _train_case(seed, data_dir, trained, tmp_path)
