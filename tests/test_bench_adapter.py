"""bench/adapter_train.py on a tiny cache: our trainer and the plain loop end with the same weights."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import adapter_train  # noqa: E402
from smec_dist.config import TrainConfig  # noqa: E402
from smec_dist.method.baselines import PrefixHead  # noqa: E402
from smec_dist.train.samplers import TrainSet  # noqa: E402


def test_plain_loop_reproduces_train_head_exactly():
    g = torch.Generator().manual_seed(0)
    data = TrainSet(F.normalize(torch.randn(40, 24, generator=g), dim=-1),
                    F.normalize(torch.randn(120, 24, generator=g), dim=-1), torch.full((40,), -1))
    cfg = TrainConfig(epochs=2, batch_size=16, topk=10)
    head = PrefixHead(24, [12, 6])
    adapter_train.ours(head, data, cfg, "exact")
    ref, seconds = adapter_train.plain_mrl(data, [12, 6], cfg)
    assert seconds > 0
    assert torch.equal(head.transform.linear.weight, ref.transform.linear.weight)


def test_benchmark_writes_its_table_and_json(monkeypatch, tmp_path, capsys):
    g = torch.Generator().manual_seed(1)
    data = TrainSet(F.normalize(torch.randn(30, 16, generator=g), dim=-1),
                    F.normalize(torch.randn(80, 16, generator=g), dim=-1), torch.full((30,), -1))
    monkeypatch.setattr(adapter_train, "training_set", lambda config, overrides: data)
    out = tmp_path / "a.json"
    adapter_train.main(["--epochs", "1", "--repeats", "1", "--smec-repeats", "1", "--json-out", str(out),
                        "run.dims=[8,4]", "train.topk=5"])
    r = json.loads(out.read_text())
    assert r["max_abs_weight_diff"] == 0.0 and r["dims"] == [8, 4] and len(r["smec_all_stages_s"]) == 1
    assert "plain / ours time ratio" in capsys.readouterr().out
