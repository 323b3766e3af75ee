"""End-to-end training throughput: our trainer (``smec train``) against sentence-transformers'.

Three runs, each in a fresh subprocess, on the same model, data, batch, sequence length and
number of steps (CPU, fp32):

    ours-1       ``E2EJob`` (the code behind ``smec train``), 1 process
    ours-2       ours-1 under ``torchrun --standalone --nproc_per_node 2`` (gloo DDP), same
                 per-device batch
    theirs-1     ``SentenceTransformerTrainer`` with ``MatryoshkaLoss(MultipleNegativesRankingLoss)``

    python bench/e2e_throughput.py                                   # MiniLM, SciFact train, batch 16, 64 tokens
    python bench/e2e_throughput.py --steps-per-stage 15 --repeats 2  # docs/benchmarks.md (about 9 min on 2 idle cores)
    python bench/e2e_throughput.py --backbone lora --steps-per-stage 20
    python bench/e2e_throughput.py --batch 4 --max-length 32 --steps-per-stage 4 --warmup 1   # smoke

What each trainer does per step (the comparison is of trainers, not of identical losses):
    * ours: one backbone forward for the b queries and one for their b positives (each batch
      padded to its own longest), the SMEC head of the current stage (ADS selection + stage
      transform), top-k hard samples from the S-XBM queue, and InfoNCE + listwise KL at every
      width of the stage plus InfoNCE at full width; the backbone's fused AdamW (clipping 1.0)
      and the head's Adam.
    * theirs: one forward for the anchors and one for the positives (tokenized per column,
      each padded to its own longest), in-batch MultipleNegativesRankingLoss at each
      Matryoshka dim (full width + our stage dims) over one cached embedding; fused AdamW.
    theirs-1 replays the batches ours-1 drew, in the same order (one pass, in sequence), so
    step i of both feeds the same texts and the per-step CPU-time ratio is paired.
    Both train the full backbone in training mode, dropout on (``--backbone full``; ``lora``
    trains LoRA in ours only, so that ratio is not like for like). The JSON records each
    run's dropout state during its first timed step.

How it is timed: model loading, the data set, stage set-up (each stage's PCA basis encoding
and probe loss) and stage-end exports/checkpoints are outside the timed region. Every
optimizer step's end is time-stamped (ours: the trainer's per-step log hook; theirs: a
``TrainerCallback.on_step_end``); the step times are the intervals between consecutive
ends within a stage, without the first ``--warmup`` steps and without each stage's first
step (whose interval holds the stage set-up). samples/s = global (query, positive) pairs per
step / median step time. tokens/s = samples/s x mean non-padding tokens per pair (query +
positive) counted from the batches each trainer tokenized; padded tokens/s (what the
backbone really computes) are reported beside it. Each process runs ``--threads`` (default 1)
intra-op threads, and each step's process CPU time is recorded too: samples per CPU-second
(all ranks counted) moves far less than wall time when other jobs share the cores, so it is
the steadier basis for the ours/theirs and DDP-efficiency ratios on a loaded machine (here,
on 2 cores at load 4-7, the wall-time ratio ours/theirs ranged 0.83-1.30 over four passes,
while ours' CPU time per step stayed within 2% over three runs whose wall times ranged
2.1-3.2 s). Never assert on these numbers: CPUs are shared.

Writes ``--json-out`` (default bench/results/e2e_throughput.json) and prints a table.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


#: run name -> (worker, processes)
RUNS = {"ours-1": ("ours", 1), "ours-2": ("ours", 2), "theirs-1": ("theirs", 1)}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="minilm", help="alias or folder (a sentence-transformers-loadable model)")
    p.add_argument("--data-dir", default=os.environ.get("SMEC_DATA_DIR", str(ROOT.parent / "shared" / "data")))
    p.add_argument("--dataset", default="scifact")
    p.add_argument("--backbone", choices=("full", "lora"), default="full")
    p.add_argument("--dims", default="192,96", help="our SMEC stages; theirs: Matryoshka over full width + these")
    p.add_argument("--batch", type=int, default=16, help="(query, positive) pairs per process per step")
    p.add_argument("--max-length", type=int, default=64)
    p.add_argument("--steps-per-stage", type=int, default=10, help="ours: per stage; theirs: x stages in all")
    p.add_argument("--warmup", type=int, default=2, help="first steps left out of the timing")
    p.add_argument("--lr", type=float, default=2e-5, help="backbone learning rate (both)")
    p.add_argument("--threads", type=int, default=1,
                   help="intra-op threads per process (every run, each DDP rank too). 1 by default: on a shared "
                        "CPU, more threads than free cores make OpenMP threads spin against each other "
                        "(measured on 2 loaded cores: 4.8 s vs 1.1 s a MiniLM step)")
    p.add_argument("--runs", default=",".join(RUNS), help=f"which of {', '.join(RUNS)}")
    p.add_argument("--repeats", type=int, default=1,
                   help="run the list this many times, in reverse order every other time (ours, theirs, "
                        "theirs, ours, ...); figures are medians over the steps of all repeats")
    p.add_argument("--json-out", default=str(ROOT / "bench" / "results" / "e2e_throughput.json"))
    p.add_argument("--worker", choices=("ours", "theirs"), help=argparse.SUPPRESS)
    p.add_argument("--worker-out", help=argparse.SUPPRESS)
    p.add_argument("--batches", help=argparse.SUPPRESS)  # theirs: a JSON list of steps of [query, doc] pairs
    args = p.parse_args(argv)
    args.dim_list = [int(d) for d in args.dims.split(",") if d]
    return args


# ------------------------------------------------------------------------------ timing


def dropout_active(module) -> bool:
    """Whether the module's dropout layers are in training mode (and drop anything)."""
    import torch

    return any(m.training and m.p > 0 for m in module.modules() if isinstance(m, torch.nn.Dropout))


class StepClock:
    """Time stamps of optimizer-step ends, grouped by stage, and the tokens each step fed."""

    def __init__(self):
        self.ends: list[tuple[int, float, float]] = []  # (stage, wall clock, process CPU time) at a step's end
        self.real = self.padded = self.seqs = 0
        self.dropout: bool | None = None  # the backbone's dropout during the first timed step

    def tick(self, stage: int) -> None:
        self.ends.append((stage, time.perf_counter(), time.process_time()))

    def count(self, mask) -> None:
        """Tokens of one tokenized batch (its attention mask)."""
        self.real += int(mask.sum())
        self.padded += int(mask.numel())
        self.seqs += int(mask.shape[0])

    def step_times(self, warmup: int, clock: int = 1) -> list[float]:
        """Intervals between step ends within a stage (``clock`` 1: wall, 2: CPU time)."""
        times, prev = [], None
        for i, end in enumerate(self.ends):
            if prev is not None and prev[0] == end[0] and i >= warmup:
                times.append(end[clock] - prev[clock])
            prev = end
        return times

    def summary(self, warmup: int, pairs_per_step: int, processes: int = 1) -> dict:
        times = self.step_times(warmup)
        cpu = statistics.median(self.step_times(warmup, clock=2))
        med = statistics.median(times)
        real_per_pair = 2 * self.real / max(self.seqs, 1)  # a pair is two sequences
        padded_per_pair = 2 * self.padded / max(self.seqs, 1)
        sps = pairs_per_step / med
        return {"steps_total": len(self.ends), "steps_timed": len(times), "step_ms_median": 1000 * med,
                "step_ms_mean": 1000 * statistics.fmean(times), "step_ms_all": [round(1000 * t, 1) for t in times],
                "pairs_per_step": pairs_per_step, "samples_per_s": sps,
                "real_tokens_per_pair": real_per_pair, "padded_tokens_per_pair": padded_per_pair,
                "tokens_per_s": sps * real_per_pair, "padded_tokens_per_s": sps * padded_per_pair,
                # CPU seconds this process spent per step: with one thread per process, much less
                # sensitive than wall time to other jobs on a shared machine (all ranks counted alike)
                "cpu_ms_per_step_median": 1000 * cpu, "samples_per_cpu_s": pairs_per_step / (processes * cpu),
                "cpu_ms_all": [round(1000 * t, 1) for t in self.step_times(warmup, clock=2)]}


def pool_repeats(reps: list[dict]) -> dict:
    """One run's repeats as one: medians over every timed step of every repeat (each step's
    batch differs in length, so more steps, not more decimals, make the median hold)."""
    if len(reps) == 1:
        return reps[0]
    first = reps[0]
    wall = [t for r in reps for t in r["step_ms_all"]]
    cpu = [t for r in reps for t in r["cpu_ms_all"]]
    med, cpu_med = statistics.median(wall) / 1000, statistics.median(cpu) / 1000
    real = statistics.fmean(r["real_tokens_per_pair"] for r in reps)
    padded = statistics.fmean(r["padded_tokens_per_pair"] for r in reps)
    sps = first["pairs_per_step"] / med
    pooled = dict(first)
    pooled.update(steps_total=sum(r["steps_total"] for r in reps), steps_timed=len(wall),
                  step_ms_median=1000 * med, step_ms_mean=statistics.fmean(wall), step_ms_all=wall,
                  cpu_ms_all=cpu, cpu_ms_per_step_median=1000 * cpu_med, samples_per_s=sps,
                  samples_per_cpu_s=first["pairs_per_step"] / (first["world_size"] * cpu_med),
                  real_tokens_per_pair=real, padded_tokens_per_pair=padded, tokens_per_s=sps * real,
                  padded_tokens_per_s=sps * padded, wall_s=sum(r["wall_s"] for r in reps),
                  repeats=len(reps), samples_per_s_each=[r["samples_per_s"] for r in reps],
                  samples_per_cpu_s_each=[r["samples_per_cpu_s"] for r in reps],
                  dropout_active=all(r["dropout_active"] for r in reps))
    return pooled


# ------------------------------------------------------------------------------ workers


def run_ours(args) -> dict:
    """``smec train``'s job, with a clock on the trainer's per-step log hook."""
    import torch

    import smec_dist.recipes.e2e as e2e_module
    from smec_dist import dist
    from smec_dist.config import load_config

    out = Path(args.worker_out).with_suffix(".run")
    cfg = load_config(None, [
        f"data.data_dir={args.data_dir}", f"data.dataset={args.dataset}", f"model.name={args.model}",
        f"model.max_length={args.max_length}", f"run.dims=[{','.join(map(str, args.dim_list))}]",
        f"run.output_dir={out}", "run.progress=false", "train.topk=32", "train.queue_size=1024", "train.seed=0",
        f"e2e.backbone={args.backbone}", "e2e.precision=fp32", f"e2e.backbone_lr={args.lr}",
        f"e2e.per_device_batch={args.batch}", f"e2e.steps_per_stage={args.steps_per_stage}",
        "e2e.checkpoint_every=0", "e2e.keep_checkpoints=1", "e2e.basis_docs=32", "track.backend=none"])
    clock = StepClock()
    job = e2e_module.E2EJob(cfg)
    t0 = time.perf_counter()
    job.setup()
    setup_s = time.perf_counter() - t0
    # instrument the harness, not the model: count the tokens of training batches only
    task, encoder, log_fn = job.task, job.encoder, job.trainer.log_fn
    tokenize, loss = encoder.tokenize, task.loss
    state = {"in_loss": False}
    batches: list[list[list[int]]] = []

    def counting_tokenize(texts):
        batch = tokenize(texts)
        if state["in_loss"]:
            clock.count(batch["attention_mask"])
        return batch

    def counted_loss(phase, step):
        if clock.dropout is None:
            clock.dropout = dropout_active(encoder.model)
        state["in_loss"] = True
        try:
            value = loss(phase, step)
        finally:
            state["in_loss"] = False
        _, picks = task._pending  # this step's (query, positive) pairs, every rank's
        batches.append([[int(q), int(d)] for q, d in zip(task._last_batch.tolist(), picks.tolist())])
        return value

    def timed_log(row):
        clock.tick(row["phase_index"])
        log_fn(row)

    encoder.tokenize, task.loss, job.trainer.log_fn = counting_tokenize, counted_loss, timed_log
    t0 = time.perf_counter()
    try:
        result = job.save(job.run())
    finally:
        job.cleanup()
    res = clock.summary(args.warmup, task.global_batch, dist.world_size())
    res.update(trainer="ours", batches=batches, dropout_active=clock.dropout, world_size=dist.world_size(),
               threads=torch.get_num_threads(), setup_s=setup_s,
               run_s=time.perf_counter() - t0, loss_first=result["losses"][0], loss_last=result["losses"][-1],
               parameters=job.n_params, trainable_parameters=job.n_trainable)
    return res if dist.is_main() else {}


def run_theirs(args) -> dict:
    """SentenceTransformerTrainer + MatryoshkaLoss(MultipleNegativesRankingLoss), same pairs."""
    import torch
    from datasets import Dataset
    from sentence_transformers import (SentenceTransformer, SentenceTransformerTrainer,
                                       SentenceTransformerTrainingArguments)
    from sentence_transformers.sentence_transformer.losses import MatryoshkaLoss, MultipleNegativesRankingLoss
    from transformers import TrainerCallback

    from smec_dist.backbone import resolve_model
    from smec_dist.data import load_beir
    from smec_dist.data.download import ensure_dataset
    from smec_dist.train.pairs import load_pairs

    pairs = load_pairs(load_beir(ensure_dataset(args.dataset, args.data_dir)), "train")
    if args.batches:
        # ours' own batches, in ours' order: the same texts (and padding) in every step
        steps = json.loads(Path(args.batches).read_text(encoding="utf-8"))
        rows = [pair for step in steps for pair in step]
        ds = Dataset.from_dict({"anchor": [pairs.query_texts[q] for q, _ in rows],
                                "positive": [pairs.doc_texts[d] for _, d in rows]})
    else:
        ds = Dataset.from_dict({"anchor": pairs.query_texts,
                                "positive": [pairs.doc_texts[p[0]] for p in pairs.positives]})
    t0 = time.perf_counter()
    model = SentenceTransformer(str(resolve_model(args.model)), device="cpu")
    model.max_seq_length = args.max_length
    full = model.get_sentence_embedding_dimension()
    loss = MatryoshkaLoss(model, MultipleNegativesRankingLoss(model), matryoshka_dims=[full, *args.dim_list])
    steps = args.steps_per_stage * len(args.dim_list)
    clock = StepClock()
    per_stage = args.steps_per_stage

    class Clock(TrainerCallback):
        def on_step_end(self, targs, state, control, **kw):
            # grouped like our stages, so both drop the same intervals
            clock.tick((state.global_step - 1) // per_stage)
            if clock.dropout is None:
                clock.dropout = dropout_active(model)

    targs = SentenceTransformerTrainingArguments(
        output_dir=str(Path(args.worker_out).with_suffix(".run")), per_device_train_batch_size=args.batch,
        max_steps=steps, learning_rate=args.lr, warmup_steps=0, lr_scheduler_type="constant", max_grad_norm=1.0,
        save_strategy="no", eval_strategy="no", report_to="none", logging_steps=10**6, disable_tqdm=True,
        use_cpu=True, dataloader_drop_last=True, seed=0)
    class InOrder(SentenceTransformerTrainer):
        def get_batch_sampler(self, dataset, batch_size, drop_last, *a, **kw):
            return torch.utils.data.BatchSampler(torch.utils.data.SequentialSampler(range(len(dataset))),
                                                 batch_size, drop_last)

    trainer = (InOrder if args.batches else SentenceTransformerTrainer)(
        model=model, args=targs, train_dataset=ds, loss=loss, callbacks=[Clock()])
    class CountingCollator:
        """The trainer's collator (its attributes are read by the trainer), counting tokens."""

        def __init__(self, inner):
            self.inner = inner

        def __getattr__(self, name):
            return getattr(self.inner, name)

        def __call__(self, features):
            batch = self.inner(features)
            for key, value in batch.items():
                if key.endswith("attention_mask"):  # one per column: anchor, positive
                    clock.count(value)
            return batch

    trainer.data_collator = CountingCollator(trainer.data_collator)
    setup_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    out = trainer.train()
    res = clock.summary(args.warmup, args.batch)
    res.update(trainer="sentence-transformers", dropout_active=clock.dropout, world_size=1,
               threads=torch.get_num_threads(), setup_s=setup_s,
               run_s=time.perf_counter() - t0, loss_last=float(out.training_loss),
               parameters=sum(p.numel() for p in model.parameters()),
               trainable_parameters=sum(p.numel() for p in model.parameters() if p.requires_grad),
               matryoshka_dims=[full, *args.dim_list])
    return res


def worker(args) -> None:
    logging.basicConfig(level=logging.WARNING)
    for noisy in ("DeepSpeed", "deepspeed", "accelerate", "transformers", "sentence_transformers"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    res = run_ours(args) if args.worker == "ours" else run_theirs(args)
    if res:
        Path(args.worker_out).write_text(json.dumps(res, indent=1), encoding="utf-8")


# ------------------------------------------------------------------------------ orchestration


def launch(args, name: str, tmp: Path) -> dict:
    """One run in a fresh subprocess (its own imports, threads and memory)."""
    out = tmp / f"{name}.json"
    kind, nproc = RUNS[name]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), TOKENIZERS_PARALLELISM="false",
               HF_HUB_OFFLINE=os.environ.get("HF_HUB_OFFLINE", "1"), WANDB_MODE="disabled")
    env.pop("ACCELERATE_USE_CPU", None)  # the trainer decides (see smec_dist.recipes.e2e.E2EJob.setup)
    script = [str(Path(__file__).resolve()), "--worker", kind, "--worker-out", str(out)]
    batches = tmp / "ours-1-batches.json"
    if kind == "theirs" and batches.exists():
        script += ["--batches", str(batches)]
    passed = [f"--model={args.model}", f"--data-dir={args.data_dir}", f"--dataset={args.dataset}",
              f"--backbone={args.backbone}", f"--dims={args.dims}", f"--batch={args.batch}",
              f"--max-length={args.max_length}", f"--steps-per-stage={args.steps_per_stage}",
              f"--warmup={args.warmup}", f"--lr={args.lr}"]
    if nproc == 1:
        cmd = [sys.executable, *script, *passed]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
               *script, *passed]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{name} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    res = json.loads(out.read_text(encoding="utf-8"))
    if name == "ours-1" and not batches.exists():
        batches.write_text(json.dumps(res["batches"]), encoding="utf-8")
    res["same_batches_as_ours_1"] = name == "ours-1" or (kind == "theirs" and "--batches" in script)
    res.pop("batches", None)
    res.update(run=name, wall_s=time.perf_counter() - t0, command=" ".join(cmd[1:]))
    return res


def format_table(runs: dict, ratios: dict) -> str:
    head = f"{'run':<16} {'procs x thr':>11} {'step ms':>9} {'samples/s':>10} {'tokens/s':>9} {'padded tok/s':>12} " \
           f"{'tok/pair':>9} {'CPU ms':>7} {'samples/CPU-s':>13} {'steps':>6} {'wall s':>7}"
    lines = [head, "-" * len(head)]
    for name, r in runs.items():
        lines.append(f"{name:<16} {r['world_size']:>5} x {r['threads']:<3}  {r['step_ms_median']:>9.0f} "
                     f"{r['samples_per_s']:>10.2f} {r['tokens_per_s']:>9.0f} {r['padded_tokens_per_s']:>12.0f} "
                     f"{r['real_tokens_per_pair']:>4.0f}/{r['padded_tokens_per_pair']:<4.0f} "
                     f"{r['cpu_ms_per_step_median']:>7.0f} {r['samples_per_cpu_s']:>13.2f} {r['steps_timed']:>6} "
                     f"{r['wall_s']:>7.1f}")
    for key, value in ratios.items():
        lines.append(f"{key}: {value:.3f}")
    return "\n".join(lines)


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.worker:
        worker(args)
        return {}
    runs = {}
    load_before = list(os.getloadavg())
    with tempfile.TemporaryDirectory(prefix="e2e_throughput_") as tmp:
        names = [r.strip() for r in args.runs.split(",") if r.strip()]
        for name in names:
            if name not in RUNS:
                raise SystemExit(f"--runs: '{name}' is not one of {', '.join(RUNS)}")
        if "ours-1" in names and "theirs-1" in names:  # theirs replays ours-1's batches: ours-1 goes first
            names.remove("ours-1")
            names.insert(0, "ours-1")
        reps: dict[str, list[dict]] = {name: [] for name in names}
        for rep in range(max(1, args.repeats)):
            for name in (names if rep % 2 == 0 else names[::-1]):
                print(f"running {name} (repeat {rep + 1}) ...", flush=True)
                reps[name].append(launch(args, name, Path(tmp)))
        runs = {name: pool_repeats(reps[name]) for name in names}
    ratios = {}
    if "ours-1" in runs and "theirs-1" in runs:
        ours, theirs = runs["ours-1"], runs["theirs-1"]
        ratios["ours/theirs samples/s (1 process)"] = ours["samples_per_s"] / theirs["samples_per_s"]
        ratios["ours/theirs tokens/s (1 process)"] = ours["tokens_per_s"] / theirs["tokens_per_s"]
        ratios["ours/theirs samples per CPU-second (1 process)"] = \
            ours["samples_per_cpu_s"] / theirs["samples_per_cpu_s"]
        if theirs["same_batches_as_ours_1"] and len(ours["cpu_ms_all"]) == len(theirs["cpu_ms_all"]):
            # step i of both fed the same texts: the median of per-step ratios is free of batch-length noise
            ratios["ours/theirs speed, same batch step by step (median of theirs CPU ms / ours CPU ms)"] = \
                statistics.median(t / o for o, t in zip(ours["cpu_ms_all"], theirs["cpu_ms_all"]))
    if "ours-1" in runs and "ours-2" in runs:
        one, two = runs["ours-1"], runs["ours-2"]
        ratios["DDP 2 proc / 1 proc samples/s"] = two["samples_per_s"] / one["samples_per_s"]
        ratios["DDP 2 proc / 1 proc samples per CPU-second"] = two["samples_per_cpu_s"] / one["samples_per_cpu_s"]
    result = {"bench": "e2e_throughput", "model": args.model, "dataset": f"{args.dataset} train pairs",
              "backbone": args.backbone, "dims": args.dim_list, "batch_per_process": args.batch,
              "max_length": args.max_length, "steps_per_stage": args.steps_per_stage, "stages": len(args.dim_list),
              "warmup": args.warmup, "repeats": max(1, args.repeats), "precision": "fp32", "device": "cpu", "cpu_count": os.cpu_count(),
              "loadavg_before": load_before, "loadavg_after": list(os.getloadavg()),
              "timing": "median interval between optimizer-step ends within a stage; model loading, stage set-up "
                        "and exports excluded",
              "runs": runs, "ratios": ratios}
    print(format_table(runs, ratios))
    print(f"loadavg before {load_before}, after {result['loadavg_after']}")
    out = Path(args.json_out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1), encoding="utf-8")
    print(f"wrote {out}")
    return result


if __name__ == "__main__":
    main()
