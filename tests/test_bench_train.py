"""The training benchmarks run end to end on CPU and report sane fields (never speed ratios:
the CPUs are shared, so timings are facts about one moment, not properties of the code)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _env() -> dict:
    env = dict(os.environ)
    env.setdefault("SMEC_CACHE", str(ROOT / ".cache"))
    # DeepSpeed's CPU shm-comm op is JIT-built once (about 60-90 s) and cached here
    env.setdefault("TORCH_EXTENSIONS_DIR", str(Path(env["SMEC_CACHE"]) / "torch_extensions"))
    env.setdefault("HF_HUB_OFFLINE", "1")
    env["DS_ACCELERATOR"] = "cpu"
    env["OMP_NUM_THREADS"] = "1"  # 2 shared cores: more threads only spin
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "ACCELERATE_USE_CPU"):
        env.pop(key, None)  # a plain one-process run, whatever launched pytest
    return env


def _run(cmd: list[str], timeout: int) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


@pytest.mark.slow
@pytest.mark.distributed  # a DeepSpeed ZeRO-2 engine in its own process
def test_gpu_train_tiny_on_cpu_zero2_lora_grad_ckpt(tmp_path):
    out = tmp_path / "gpu_train.json"
    proc = _run([sys.executable, "bench/gpu_train.py", "--size", "tiny", "--zero", "2", "--mode", "lora",
                 "--grad-ckpt", "--warmup", "1", "--steps", "2", "--threads", "1", "--json-out", str(out)],
                timeout=600)
    r = json.loads(out.read_text())
    assert (r["size"], r["zero"], r["mode"], r["grad_ckpt"]) == ("tiny", 2, "lora", True)
    assert r["world_size"] == 1 and r["precision"] == "fp32" and len(r["step_ms_all"]) == 2
    assert r["tokens_per_s"] > 0 and r["samples_per_s"] > 0 and r["step_ms_median"] > 0
    assert r["tokens_per_step"] == 2 * r["batch_per_device"] * r["seq_len"]
    assert 0 < r["mfu"] < 1 and 0 < r["mfu_executed"] < 1
    assert r["peak_flops"] > 0 and "measured" in r["peak_source"]
    assert r["peak_mem_bytes"] > 0 and "ru_maxrss" in r["peak_mem_kind"]
    assert 0 < r["params_trainable"] < r["params_total"]  # LoRA: only the adapters train
    assert "MFU (6N)" in proc.stdout  # the table


@pytest.mark.slow  # three fresh processes (one of them torchrun x 2) loading MiniLM: about 2 min on 2 busy cores
def test_e2e_throughput_smoke(tmp_path):
    out = tmp_path / "e2e.json"
    data_dir = Path(os.environ.get("SMEC_DATA_DIR", ROOT.parent / "shared" / "data"))
    _run([sys.executable, "bench/e2e_throughput.py", "--data-dir", str(data_dir), "--batch", "4",
          "--max-length", "32", "--steps-per-stage", "3", "--warmup", "1", "--json-out", str(out)], timeout=900)
    r = json.loads(out.read_text())
    assert set(r["runs"]) == {"ours-1", "ours-2", "theirs-1"}
    for name, run in r["runs"].items():
        assert run["samples_per_s"] > 0 and run["tokens_per_s"] > 0 and run["samples_per_cpu_s"] > 0, name
        assert run["steps_timed"] >= 1 and run["real_tokens_per_pair"] <= run["padded_tokens_per_pair"]
    assert r["runs"]["ours-2"]["world_size"] == 2 and r["runs"]["ours-2"]["pairs_per_step"] == 8
    assert all(run["dropout_active"] for run in r["runs"].values())  # every trainer in training mode
    assert {"ours/theirs samples/s (1 process)", "DDP 2 proc / 1 proc samples/s"} <= set(r["ratios"])
