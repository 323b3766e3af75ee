"""Adapter-mode training speed: our trainer against a plain PyTorch loop with the same math.

On the SciFact MiniLM embedding cache (built by ``smec run``/``smec encode`` when missing), the
``unsupervised-queries`` training set (809 train query texts as anchors, the 5,183 documents):

* ``mrl`` through :func:`smec_dist.train.samplers.train_head` (Trainer, Phase, CachedTask, objective),
* the same MRL-style head trained by a hand-written loop: same PCA initialisation, the same
  exact top-k samples, the same batches (same generator), listwise KL per dim, Adam with the
  same cosine schedule. Both must end with the same weights: the loop is the reference, the
  difference is the framework's overhead;
* the whole SMEC head (every SMRL stage, ADS, S-XBM queue), for the "minutes, not hours" figure.

After one untimed warm-up of each, runs are interleaved (ours, plain, plain, ours, ...) and
medians reported, because absolute times on a shared 2-core machine mean little; the ratio
measured together holds.

    python bench/adapter_train.py                    # 20 epochs per phase (the default config)
    python bench/adapter_train.py --epochs 2 --repeats 1 --json-out /tmp/a.json   # quick
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from smec_dist.config import TrainConfig, load_config  # noqa: E402
from smec_dist.method.baselines import PrefixHead  # noqa: E402
from smec_dist.method.smrl import SMECHead  # noqa: E402
from smec_dist.method.transform import pca_basis  # noqa: E402
from smec_dist.method.losses import listwise_kl  # noqa: E402
from smec_dist.train.samplers import ExactSampler, TrainSet, train_head  # noqa: E402


def training_set(config: str, overrides: list[str]) -> TrainSet:
    """The unsupervised-queries training set of the job ``config`` describes (cache reused)."""
    from smec_dist.recipes.adapter import Job

    from smec_dist.recipes.encode import cache_dir_for

    cache = cache_dir_for(load_config(config, overrides))  # the cache `smec run` builds and reuses
    with tempfile.TemporaryDirectory() as out:  # the job's report folder: nothing is written there
        cfg = load_config(config, [f"run.output_dir={out}", f"cache.dir={cache}", "track.backend=none",
                                   "run.progress=false", *overrides])
        job = Job(cfg)
        job.setup()
        data = job.train_set("unsupervised-queries")
    return data


def plain_mrl(data: TrainSet, dims: list[int], cfg: TrainConfig) -> tuple[PrefixHead, float]:
    """The MRL-style head trained by a plain loop with the trainer's math; (head, seconds)."""
    t0 = time.perf_counter()
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    head = PrefixHead(data.dim, dims, hidden=cfg.hidden)
    exact = ExactSampler(data, cfg.topk)
    n = len(data.anchors)
    steps = max(1, min(cfg.epochs * math.ceil(n / cfg.batch_size), cfg.max_steps_per_phase or 1 << 62))
    with torch.no_grad():
        basis = torch.cat([data.corpus, data.anchors]) if cfg.pca_on_anchors else data.corpus
        head.transform.linear.weight.copy_(pca_basis(basis))
    opt = torch.optim.Adam(head.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 0.5 * (1 + math.cos(math.pi * min(i, steps) / steps)))
    perm, pos = torch.randperm(n, generator=gen), 0
    for _ in range(steps):
        if pos >= n:
            perm, pos = torch.randperm(n, generator=gen), 0
        idx = perm[pos:pos + cfg.batch_size]
        pos += cfg.batch_size
        samples = exact.sample_rows(idx)
        x = torch.cat([data.anchors[idx], samples.emb])  # (b + u, D)
        y = head(x)
        loss = x.new_zeros(())
        for d in dims:
            z = F.normalize(y[:, :d], dim=-1)
            s = (z[:len(idx)] @ z[len(idx):].T).gather(1, samples.inverse)  # (b, k)
            loss = loss + cfg.kl_weight * listwise_kl(s, samples.sims, cfg.temperature)
        loss.backward()
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
    return head, time.perf_counter() - t0


def ours(head, data: TrainSet, cfg: TrainConfig, sampler: str) -> float:
    t0 = time.perf_counter()
    train_head(head, data, cfg, sampler, progress=False)
    return time.perf_counter() - t0


def run(config: str, overrides: list[str], epochs: int, repeats: int, smec_repeats: int) -> dict:
    base = load_config(config, overrides)
    dims = base.run.dims
    cfg = replace(base.train, epochs=epochs, seed=0)
    data = training_set(config, overrides)
    steps = max(1, min(epochs * math.ceil(len(data.anchors) / cfg.batch_size), cfg.max_steps_per_phase or 1 << 62))
    warm = replace(cfg, epochs=1)  # first calls pay one-off costs (allocator, BLAS set-up): not timed
    plain_mrl(data, dims, warm)
    ours(PrefixHead(data.dim, dims, hidden=cfg.hidden), data, warm, "exact")
    times_ours, times_plain, max_diff = [], [], 0.0
    for rep in range(repeats):
        head = PrefixHead(data.dim, dims, hidden=cfg.hidden)
        if rep % 2:  # ours, plain, plain, ours, ...: neither side always runs first
            ref, seconds = plain_mrl(data, dims, cfg)
            times_ours.append(ours(head, data, cfg, "exact"))
        else:
            times_ours.append(ours(head, data, cfg, "exact"))
            ref, seconds = plain_mrl(data, dims, cfg)
        times_plain.append(seconds)
        max_diff = max(max_diff, (head.transform.linear.weight - ref.transform.linear.weight).abs().max().item())
    smec_times = []
    for _ in range(smec_repeats):
        head = SMECHead(data.dim, dims, hidden=cfg.hidden, tau=cfg.ads_tau, noise=cfg.ads_noise)
        smec_times.append(ours(head, data, cfg, "xbm"))
    mo, mp = statistics.median(times_ours), statistics.median(times_plain)
    return {
        "benchmark": "adapter_train", "config": config, "overrides": overrides,
        "anchors": len(data.anchors), "docs": len(data.corpus), "dims": dims, "epochs": epochs,
        "steps_per_phase": steps, "batch_size": cfg.batch_size, "topk": cfg.topk,
        "torch_threads": torch.get_num_threads(), "loadavg": [round(x, 2) for x in os.getloadavg()],
        "mrl_ours_s": [round(t, 2) for t in times_ours], "mrl_plain_s": [round(t, 2) for t in times_plain],
        "mrl_ours_median_s": round(mo, 2), "mrl_plain_median_s": round(mp, 2),
        "mrl_ours_s_per_epoch": round(mo / epochs, 3), "mrl_plain_s_per_epoch": round(mp / epochs, 3),
        "ratio_plain_over_ours": round(mp / mo, 3),
        # each pair ran back to back: the median of per-pair ratios is less exposed to load that comes and goes
        "ratio_plain_over_ours_paired": round(statistics.median(p / o for o, p in zip(times_ours, times_plain)), 3),
        "max_abs_weight_diff": max_diff,
        "smec_all_stages_s": [round(t, 2) for t in smec_times],
        "smec_stages": len(dims),
        "smec_s_per_epoch_per_stage": round(statistics.median(smec_times) / (epochs * len(dims)), 3) if smec_times else None,
    }


def table(r: dict) -> str:
    rows = [
        ("MRL head, ours (train_head)", f"{r['mrl_ours_median_s']:.1f}", f"{r['mrl_ours_s_per_epoch']:.2f}"),
        ("MRL head, plain PyTorch loop", f"{r['mrl_plain_median_s']:.1f}", f"{r['mrl_plain_s_per_epoch']:.2f}"),
    ]
    if r["smec_all_stages_s"]:
        total = statistics.median(r["smec_all_stages_s"])
        rows.append((f"SMEC head, ours, {r['smec_stages']} stages", f"{total:.1f}", f"{r['smec_s_per_epoch_per_stage']:.2f} per stage"))
    w = max(len(a) for a, _, _ in rows)
    lines = [f"adapter-mode training on {r['docs']} docs / {r['anchors']} anchors, {r['epochs']} epochs "
             f"({r['steps_per_phase']} steps per phase), batch {r['batch_size']}, top-{r['topk']}; "
             f"{r['torch_threads']} torch threads, load {r['loadavg']}",
             f"{'':<{w}}  {'seconds':>8}  {'s/epoch':>8}"]
    lines += [f"{a:<{w}}  {b:>8}  {c:>8}" for a, b, c in rows]
    lines.append(f"plain / ours time ratio: {r['ratio_plain_over_ours']:.3f} of medians, "
                 f"{r['ratio_plain_over_ours_paired']:.3f} median of pairs (>= 1: ours no slower); "
                 f"max |weight difference| after training: {r['max_abs_weight_diff']:.2e}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=str(ROOT / "configs" / "scifact-minilm.yaml"))
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=4,
                    help="ours/plain pairs, the order flipped every other pair (medians reported)")
    ap.add_argument("--smec-repeats", type=int, default=1, help="full SMEC runs (0: skip)")
    ap.add_argument("--json-out", default=str(ROOT / "bench" / "results" / "adapter_train.json"))
    ap.add_argument("overrides", nargs="*", help="section.key=value overrides of the config")
    args = ap.parse_args(argv)
    result = run(args.config, args.overrides, args.epochs, args.repeats, args.smec_repeats)
    print(table(result))
    out = Path(args.json_out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    tmp.replace(out)
    print(f"wrote {out}")
    return result


if __name__ == "__main__":
    main()
