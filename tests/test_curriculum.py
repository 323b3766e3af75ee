"""Curriculum MRL (DEMRL++), the single-resolution ablation and the STS-B job."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from smec_dist.cli import main
from smec_dist.config import TrainConfig, train_loss
from smec_dist.errors import SmecError
from smec_dist.evaluation.sts import cosine_spearman
from smec_dist.method.baselines import (CurriculumHead, SingleHead, consistency_weights, curriculum_phases,
                                        curriculum_probs)
from smec_dist.method.export import load_head, save_head
from smec_dist.method.losses import Penalty, objective
from smec_dist.method.memory import Samples
from smec_dist.train.samplers import CachedTask, TrainSet, train_head

D, DIMS = 32, [16, 8, 4]


def _data(n_docs: int = 200, n_anchors: int = 64, seed: int = 0) -> TrainSet:
    g = torch.Generator().manual_seed(seed)
    corpus = F.normalize(torch.randn(n_docs, D, generator=g) * torch.linspace(2, 0.1, D), dim=-1)
    anchors = F.normalize(torch.randn(n_anchors, D, generator=g) * torch.linspace(2, 0.1, D), dim=-1)
    return TrainSet(anchors, corpus, torch.full((n_anchors,), -1))


def _cfg(**kw) -> TrainConfig:
    return replace(TrainConfig(), epochs=3, batch_size=16, topk=20, **kw)


def test_curriculum_probs_small_early_uniform_mid_large_late():
    early, mid, late = (curriculum_probs([192, 96, 48, 24], t, 1.0) for t in (0.0, 0.5, 1.0))
    for p in (early, mid, late):
        assert p.sum().item() == pytest.approx(1.0, abs=1e-6)
    assert torch.all(early[:-1] < early[1:])  # dims are listed largest first: small dims favoured
    assert torch.allclose(mid, torch.full((4,), 0.25))
    assert torch.all(late[:-1] > late[1:])
    assert early[3].item() == pytest.approx(192 / 24 / (1 + 2 + 4 + 8) * 1, rel=1e-5)  # ∝ 1/d: 8/15
    assert torch.allclose(curriculum_probs([192, 96], 0.0, 0.0), torch.tensor([0.5, 0.5]))


def test_consistency_weights_decay_with_dim():
    w = consistency_weights([192, 96, 48, 24], 0.4)
    assert list(w) == [192, 96, 48, 24]
    assert list(w.values()) == pytest.approx([0.05, 0.1, 0.2, 0.4])


def test_curriculum_head_starts_from_the_prefixes_and_round_trips(tmp_path):
    head = CurriculumHead(D, DIMS)
    x = torch.randn(5, D)
    for d in DIMS:
        want = F.normalize(F.layer_norm(x[:, :d], (d,)), dim=-1)  # identity map, identity projection
        torch.testing.assert_close(head.compress(x, d), want)
    torch.testing.assert_close(head.compress(x, D), F.normalize(x, dim=-1))
    with pytest.raises(SmecError, match="not one of this head's dims"):
        head.compress(x, 5)
    with torch.no_grad():
        for p in head.parameters():
            p.add_(0.01 * torch.randn_like(p))
    loaded = load_head(save_head(head, tmp_path / "cmrl.safetensors"))
    assert isinstance(loaded, CurriculumHead)
    for d in DIMS:
        torch.testing.assert_close(loaded.compress(x, d), head.compress(x, d))


def test_curriculum_student_draws_dims_by_the_schedule_and_adds_consistency():
    head = CurriculumHead(D, DIMS)
    phase = curriculum_phases(head, lambda: torch.randn(50, D), _cfg(curriculum_gamma=2.0))[0]
    x = torch.randn(6, D)

    def draws(frac: float, n: int = 300) -> dict[int, int]:
        phase.progress(frac)
        seen = {d: 0 for d in DIMS}
        for _ in range(n):
            out = phase.student(x)
            assert len(out) == 2 and isinstance(out[1][1], Penalty)
            seen[out[0][1].shape[1]] += 1
        return seen

    early, late = draws(0.0), draws(1.0)
    assert early[4] > early[8] > early[16] and late[16] > late[8] > late[4]


def test_consistency_gradient_reaches_every_dims_projection_but_not_the_target():
    head = CurriculumHead(D, DIMS)
    with torch.no_grad():
        for d in DIMS:
            head.proj[str(d)].weight.add_(0.3 * torch.randn(d, d))
    phase = curriculum_phases(head, lambda: torch.randn(50, D), _cfg(consistency_weight=1.0))[0]
    out = phase.student(torch.randn(8, D))
    out[1][1].value.backward()
    for d in DIMS:
        assert head.proj[str(d)].weight.grad.abs().sum() > 0, d
        assert head.norm[str(d)].weight.grad.abs().sum() > 0, d


def test_objective_adds_a_penalty_with_its_weight():
    anchors = F.normalize(torch.randn(4, D), dim=-1)
    none = Samples(torch.zeros(0, D), torch.zeros(0, dtype=torch.long), torch.zeros(4, 0, dtype=torch.long),
                   torch.zeros(4, 0))
    loss = objective(lambda x: [(0.5, Penalty(torch.tensor(3.0)))], anchors, none, None, train_loss(_cfg()))
    assert loss.item() == pytest.approx(1.5)


@pytest.mark.parametrize("kind", ["cmrl", "single"])
def test_training_is_reproducible_and_learns(kind):
    data = _data()
    cfg = _cfg(seed=3)
    loss = train_loss(cfg)
    if kind == "single":  # trained at full width, its teacher-matching loss starts at 0: learn judgments
        data.positives = [[i] for i in range(len(data.anchors))]  # anchor i -> document i
        cfg = replace(cfg, epochs=15)
        loss = train_loss(cfg, infonce_weight=1.0)
    make = (lambda: CurriculumHead(D, DIMS)) if kind == "cmrl" else (lambda: SingleHead(D, DIMS))
    heads = []
    for _ in range(2):
        head = make()
        train_head(head, data, cfg, "exact", progress=False, loss=loss)
        heads.append(head)
    for a, b in zip(heads[0].state_dict().values(), heads[1].state_dict().values()):
        assert torch.equal(a, b)
    fresh = make()
    if kind == "single":
        def fit(head) -> float:  # mean cosine of each anchor with its judged document, at full width
            with torch.no_grad():
                return (head.compress(data.anchors, D) * head.compress(data.corpus[:len(data.anchors)], D)).sum(-1).mean().item()

        assert fit(heads[0]) > fit(fresh) + 0.05
        return
    curriculum_phases(fresh, lambda: torch.cat([data.corpus, data.anchors]), cfg)[0].start()  # training's start
    samples = CachedTask(data, cfg, loss, "exact", torch.Generator().manual_seed(0)).exact.sample_rows(
        torch.arange(len(data.anchors)))

    def loss_of(head) -> float:
        with torch.no_grad():
            return sum(objective(lambda x, d=d: [(1.0, head.compress(x, d))], data.anchors, samples, None, loss).item()
                       for d in DIMS)

    assert loss_of(heads[0]) < loss_of(fresh)


def test_single_head_starts_at_the_backbone_coordinates():
    head = SingleHead(D, DIMS)
    x = torch.randn(3, D)
    for d in [D] + DIMS:
        torch.testing.assert_close(head.compress(x, d), F.normalize(x[:, :d], dim=-1))


def test_cosine_spearman_hand_case():
    a = np.array([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0]])
    b = np.array([[1.0, 0.0], [1.0, 1.0], [0.0, 1.0]])  # cosines 1, 0.707, 0
    assert cosine_spearman(a, b, [5.0, 3.0, 1.0]) == pytest.approx(1.0)
    assert cosine_spearman(a, b, [1.0, 3.0, 5.0]) == pytest.approx(-1.0)
    with pytest.raises(SmecError, match="different gold scores"):
        cosine_spearman(a, b, [2.0, 2.0, 2.0])


# --------------------------------------------------------------------------- the STS job


def _tiny_sts(src: Path, dst: Path, n_train: int = 60, n_test: int = 40) -> Path:
    dst.mkdir(parents=True)
    for split, n in (("train", n_train), ("test", n_test)):
        lines = (src / f"{split}.tsv").read_text(encoding="utf-8").splitlines()
        (dst / f"{split}.tsv").write_text("\n".join(lines[: n + 1]) + "\n", encoding="utf-8")
    return dst


def test_sts_job_reports_spearman_per_method_and_dim(data_dir, tmp_path, capsys):
    root = _tiny_sts(data_dir / "stsb", tmp_path / "data" / "sts-tiny")
    out = tmp_path / "out"
    rc = main(["run", "--config", "configs/stsb-minilm.yaml", f"data.data_dir={tmp_path / 'data'}",
               "data.dataset=sts-tiny", f"run.output_dir={out}", f"cache.dir={tmp_path / 'cache'}",
               "run.dims=[32,16]", "train.epochs=1", "train.topk=10", "run.progress=false",
               "run.methods=[full,truncation,pca,mrl,cmrl,smec]"])
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    results = json.loads((out / "results.json").read_text())
    assert results["meta"]["metric"] == "Spearman" and results["meta"]["n_pairs"] == 40
    for setting in ("corpus-only", "supervised"):
        methods = results["settings"][setting]
        assert set(methods) == {"full", "truncation", "pca", "mrl", "cmrl", "smec"}
        assert set(methods["full"]) == {"384"} and set(methods["cmrl"]) == {"32", "16"}
        for by_dim in methods.values():
            for m in by_dim.values():
                assert -1.0 <= m["Spearman"] <= 1.0
    assert results["settings"]["corpus-only"]["full"]["384"]["Spearman"] > 0.6  # MiniLM on STS-B pairs
    report = (out / "report.md").read_text()
    assert "Cells are Spearman" in report and "## Spearman by setting" in report
    assert "[corpus-only] Spearman" in cap.out
    del root


def test_sts_job_refuses_the_query_setting(data_dir, tmp_path, capsys):
    _tiny_sts(data_dir / "stsb", tmp_path / "data" / "sts-tiny")
    rc = main(["run", "--config", "configs/stsb-minilm.yaml", f"data.data_dir={tmp_path / 'data'}",
               "data.dataset=sts-tiny", f"run.output_dir={tmp_path / 'o'}", "run.settings=[unsupervised-queries]"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "STS dataset" in err[0]


def test_subsample_keeps_anchor_rows_and_positives_aligned():
    from smec_dist.recipes.adapter import subsample

    data = TrainSet(torch.arange(10.0)[:, None].repeat(1, 3), torch.zeros(4, 3), torch.arange(10),
                    [[i] for i in range(10)])
    assert subsample(data, 0, torch.Generator()) is data and subsample(data, 10, torch.Generator()) is data
    a = subsample(data, 4, torch.Generator().manual_seed(0))
    b = subsample(data, 4, torch.Generator().manual_seed(0))
    rows = a.anchor_doc.tolist()
    assert len(rows) == 4 and rows == sorted(rows) and rows == b.anchor_doc.tolist()
    assert a.anchors[:, 0].tolist() == [float(r) for r in rows] and a.positives == [[r] for r in rows]
