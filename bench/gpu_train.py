"""Training-step benchmark: a Qwen2-shaped backbone under DeepSpeed ZeRO-2/3, LoRA or full.

One step = one forward of a rank's ``--batch`` (query, document) pairs of random token ids
(2 x batch sequences of ``--seq-len`` tokens, one pass), last-token pooling, InfoNCE over
the documents of all ranks (gathered with gradients, as the trainer does), ``engine.backward``
and ``engine.step`` (AdamW, gradient clipping 1.0). Weights are randomly initialised from a
transformers ``Qwen2Config`` (no download). ``--warmup`` steps run untimed, then ``--steps``
timed ones.

    # one GPU (bf16)
    python bench/gpu_train.py --size 0.5b --zero 2 --mode lora --grad-ckpt --seq-len 512 --batch 16
    python bench/gpu_train.py --size 7b --zero 3 --mode lora --grad-ckpt --seq-len 512 --batch 8
    # 8 GPUs, any launcher (each reads RANK / WORLD_SIZE / LOCAL_RANK from the environment)
    deepspeed --num_gpus 8 bench/gpu_train.py --size 7b --zero 3 --mode full --grad-ckpt --batch 4
    torchrun --nproc_per_node 8 bench/gpu_train.py --size 1.5b --zero 2 --mode full
    accelerate launch --multi_gpu --num_processes 8 bench/gpu_train.py --size 7b --zero 3 --mode lora
    # CPU (CI): one process, gloo, DeepSpeed's CPU accelerator, fp32
    python bench/gpu_train.py --size tiny --zero 2 --mode lora --grad-ckpt --threads 1 --steps 3

Reported (table on stdout, JSON at ``--json-out``, written by rank 0):
    * tokens/s and samples/s over all ranks, from the MEDIAN step time (robust on shared
      machines); a sample is one (query, document) pair, i.e. 2 x seq_len tokens.
    * MFU = 6 x N x tokens/s / (world x peak), N = the parameters that take part in matmuls
      (all but the input embedding table, a lookup; ``AutoModel`` has no LM head), peak =
      the MEASURED dense matmul rate of this device (bf16 on GPU, fp32 on CPU) from a square
      matmul probe in this script, not a datasheet figure (give ``--peak-tflops`` to get the
      datasheet ratio as well). Attention score FLOPs and gradient-checkpointing recompute
      are not counted (model FLOPs, not hardware FLOPs).
    * LoRA and the 6 x N convention: activation gradients still flow back through every
      frozen layer (the first layer's adapters need them), so forward (2N) and the
      activation half of backward (2N) are executed in full; only the frozen weights'
      gradients (the other 2N) are skipped. ``mfu`` keeps 6N so LoRA and full fine-tuning
      compare on one scale (how much of the device a full-model step's worth of work would
      use); ``mfu_executed`` counts what a LoRA step really computes, 4N + 6 x N_lora.
    * peak memory: ``torch.cuda.max_memory_allocated`` on GPU; on CPU the process's peak RSS
      (``resource.getrusage(RUSAGE_SELF).ru_maxrss``, which includes the Python and library
      footprint); the maximum over ranks.

Memory (bytes per parameter and activations) for a planned run: ``smec plan`` (smec_dist.plan).
Full fine-tuning of 7b does not fit one 141 GB GPU (16 B/param of model states alone is 122 GB
plus the fp32 gradient copy of the step); use LoRA, ZeRO-3 over several GPUs, or
``--ds-config ds_configs/zero3_offload.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import socket
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]

#: Qwen2 shapes (published configs; tiny is a CPU/CI stand-in of the same architecture)
SIZES: dict[str, dict] = {
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=1000, tie_word_embeddings=True),
    "0.5b": dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                 num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True),
    "1.5b": dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                 num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True),
    "7b": dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
               num_key_value_heads=4, vocab_size=152064, tie_word_embeddings=False),
}

TAU = 0.05  # InfoNCE temperature (the trainer's default scale; irrelevant to speed)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", choices=list(SIZES), default="tiny")
    p.add_argument("--zero", type=int, choices=(2, 3), default=2, help="ZeRO stage (ds_configs/zero<N>.json)")
    p.add_argument("--ds-config", default="", help="another DeepSpeed JSON (its stage wins over --zero)")
    p.add_argument("--mode", choices=("lora", "full"), default="lora")
    p.add_argument("--lora-r", type=int, default=16)
    p.add_argument("--grad-ckpt", action="store_true", help="gradient checkpointing (non-reentrant)")
    p.add_argument("--seq-len", type=int, default=None, help="tokens per sequence (default 32 tiny, 512 else)")
    p.add_argument("--batch", type=int, default=None, help="(query, doc) pairs per device (default 4 tiny, 8 else)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--precision", choices=("auto", "bf16", "fp32"), default="auto",
                   help="auto: bf16 on GPU, fp32 on CPU")
    p.add_argument("--attn", default="sdpa", help="attn_implementation: sdpa, eager, flash_attention_2")
    p.add_argument("--probe-n", type=int, default=None, help="matmul probe size (default 8192 GPU, 1024 CPU)")
    p.add_argument("--threads", type=int, default=0,
                   help="CPU intra-op threads (0: torch's default). On a shared, loaded CPU, 1 avoids "
                        "OpenMP threads spinning against each other (measured here: 52 ms vs 1.9 s a tiny step)")
    p.add_argument("--peak-tflops", type=float, default=0.0,
                   help="datasheet dense peak per device (e.g. 989 for H100/H200 bf16): adds mfu_datasheet")
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json-out", default=str(ROOT / "bench" / "results" / "gpu_train.json"))
    args = p.parse_args(argv)
    tiny = args.size == "tiny"
    args.seq_len = args.seq_len or (32 if tiny else 512)
    args.batch = args.batch or (4 if tiny else 8)
    if args.steps < 1:
        p.error("--steps: at least 1 timed step")
    return args


# ------------------------------------------------------------------------------ process


def init_process(on_gpu: bool) -> tuple[int, int, int]:
    """Join the launcher's process group (deepspeed, torchrun, accelerate launch), or make a
    world of one (gloo on CPU) when started as a plain ``python`` process."""
    if "WORLD_SIZE" not in os.environ:  # plain python: DeepSpeed would otherwise try MPI discovery
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1",
                          MASTER_PORT=str(port))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if on_gpu:
        torch.cuda.set_device(local_rank)
    import torch._dynamo  # noqa: F401  (deepspeed.zero.Init needs it imported first; see ENVIRONMENT.md)
    import deepspeed

    deepspeed.init_distributed(dist_backend="nccl" if on_gpu else "gloo", verbose=False)
    return torch.distributed.get_rank(), torch.distributed.get_world_size(), local_rank


def gather(x: torch.Tensor) -> torch.Tensor:
    """Every rank's ``x`` in rank order, with gradients (backward sums what ranks send back)."""
    if torch.distributed.get_world_size() == 1:
        return x
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(x.contiguous()), dim=0)  # (world * n, ...)


def reduce_max(value: float, device) -> float:
    t = torch.tensor([float(value)], dtype=torch.float64, device=device)
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
    return float(t.item())


def sync(on_gpu: bool) -> None:
    if on_gpu:
        torch.cuda.synchronize()


# ------------------------------------------------------------------------------ peak probe


def matmul_peak(device, dtype: torch.dtype, n: int, reps: int = 5) -> float:
    """Best observed FLOP/s of an (n x n) @ (n x n) matmul: the device's practical dense peak.

    The best of ``reps`` timings (each of ``inner`` back-to-back matmuls, so kernel launch is
    amortised on GPUs) estimates what the device can do, not what a loaded one did once.
    """
    on_gpu = torch.device(device).type == "cuda"
    inner = 10 if on_gpu else 1
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(2):
        c = a @ b
    sync(on_gpu)
    best = math.inf
    for _ in range(reps):
        t0 = time.perf_counter()
        for _ in range(inner):
            c = a @ b
        sync(on_gpu)
        best = min(best, time.perf_counter() - t0)
    del a, b, c
    return 2 * n**3 * inner / best


# ------------------------------------------------------------------------------ model


def ds_config(args, world: int, bf16: bool, hidden: int) -> dict:
    """The project's ZeRO JSON with its ``auto`` values filled (as Accelerate fills them)."""
    path = Path(args.ds_config or ROOT / "ds_configs" / f"zero{args.zero}.json")
    cfg = json.loads(path.read_text(encoding="utf-8"))
    zero = cfg.setdefault("zero_optimization", {})
    fill = {"reduce_bucket_size": hidden * hidden, "stage3_prefetch_bucket_size": int(0.9 * hidden * hidden),
            "stage3_param_persistence_threshold": 10 * hidden}
    for key, value in fill.items():
        if zero.get(key) == "auto":
            zero[key] = value
    cfg.update(train_micro_batch_size_per_gpu=args.batch, gradient_accumulation_steps=1,
               train_batch_size=args.batch * world, gradient_clipping=1.0, bf16={"enabled": bf16},
               zero_allow_untested_optimizer=True, steps_per_print=10**9, wall_clock_breakdown=False)
    cfg.pop("fp16", None)
    return cfg


def build_model(args, ds: dict, device, dtype: torch.dtype):
    """A randomly initialised Qwen2 ``AutoModel`` (no LM head), LoRA-wrapped for ``--mode lora``.

    Under ZeRO-3 the model is built inside ``zero.Init`` (through transformers'
    ``HfDeepSpeedConfig``), so no rank ever holds the full weights; otherwise it is built on
    its device in its training dtype, which is fast even for 7b.
    """
    from transformers import AutoModel, Qwen2Config
    from transformers.integrations import HfDeepSpeedConfig

    cfg = Qwen2Config(**SIZES[args.size], use_cache=False, attn_implementation=args.attn)
    torch.manual_seed(args.seed)
    zero3 = ds["zero_optimization"].get("stage") == 3
    keep = HfDeepSpeedConfig(ds) if zero3 else None  # noqa: F841  (weakly referenced by transformers)
    if zero3:
        model = AutoModel.from_config(cfg, dtype=dtype)
    else:
        with torch.device(device):
            model = AutoModel.from_config(cfg, dtype=dtype)
    if args.grad_ckpt:
        enable = getattr(model, "activation_checkpointing_enable", None)  # transformers >= 5.2x name
        if enable is not None:
            enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    numel = lambda p: getattr(p, "ds_numel", p.numel())  # noqa: E731  (ZeRO-3: full size of a partition)
    n_total = sum(numel(p) for p in model.parameters())
    n_embed = numel(model.get_input_embeddings().weight)
    if args.mode == "lora":
        from peft import LoraConfig, get_peft_model

        for p in model.parameters():
            p.requires_grad_(False)
        model = get_peft_model(model, LoraConfig(r=args.lora_r, lora_alpha=2 * args.lora_r, lora_dropout=0.0,
                                                 target_modules="all-linear", bias="none"))
    n_trainable = sum(numel(p) for p in model.parameters() if p.requires_grad)
    counts = {"params_total": n_total, "params_embedding": n_embed, "params_matmul": n_total - n_embed,
              "params_trainable": n_trainable}
    return model, cfg, counts, keep


# ------------------------------------------------------------------------------ run


def main(argv=None) -> dict:
    args = parse_args(argv)
    on_gpu = torch.cuda.is_available()
    if not on_gpu:
        os.environ.setdefault("DS_ACCELERATOR", "cpu")  # before deepspeed is imported
    precision = args.precision if args.precision != "auto" else ("bf16" if on_gpu else "fp32")
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    rank, world, local_rank = init_process(on_gpu)
    device = torch.device(f"cuda:{local_rank}" if on_gpu else "cpu")
    is_main = rank == 0

    # -- setup: peak probe first (nothing else holds memory yet), then model and engine
    if args.threads:
        torch.set_num_threads(args.threads)
    probe_n = args.probe_n or (8192 if on_gpu else 1024)
    peak = matmul_peak(device, dtype, probe_n)
    import deepspeed

    ds = ds_config(args, world, precision == "bf16", SIZES[args.size]["hidden_size"])
    t_build = time.perf_counter()
    model, cfg, counts, keep = build_model(args, ds, device, dtype)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.0, **({"fused": True} if on_gpu else {}))
    engine, *_ = deepspeed.initialize(model=model, optimizer=opt, config=ds)
    engine.train()  # explicit: transformers checkpoints layers (and drops out) only in train mode
    build_s = time.perf_counter() - t_build
    if on_gpu:
        torch.cuda.reset_peak_memory_stats(device)

    gen = torch.Generator(device="cpu").manual_seed(args.seed * 1000 + rank)
    b, L = args.batch, args.seq_len
    batches = [torch.randint(cfg.vocab_size, (2 * b, L), generator=gen).to(device) for _ in range(4)]  # (2b, L)
    labels = torch.arange(b, device=device) + rank * b  # (b,) each query's document in the gathered batch

    def step(ids: torch.Tensor) -> float:
        out = engine(input_ids=ids)  # no mask: every token is real, causal attention
        emb = F.normalize(out.last_hidden_state[:, -1].float(), dim=-1)  # (2b, H) last-token pooling
        q, d = emb[:b], emb[b:]  # (b, H), (b, H)
        d_all = gather(d)  # (world * b, H)
        loss = F.cross_entropy(q @ d_all.T / TAU, labels)  # (b, world * b) logits
        engine.backward(loss)
        engine.step()
        return float(loss.detach())

    # -- run
    losses, times = [], []
    for i in range(args.warmup + args.steps):
        sync(on_gpu)
        t0 = time.perf_counter()
        losses.append(step(batches[i % len(batches)]))  # .item() in step: the step is complete here
        sync(on_gpu)
        if i >= args.warmup:
            times.append(time.perf_counter() - t0)
    # ranks wait for each other in every step's collectives; the slowest rank sets the pace
    median_s = reduce_max(statistics.median(times), device)
    mean_s = reduce_max(statistics.fmean(times), device)
    if on_gpu:
        mem, mem_kind = torch.cuda.max_memory_allocated(device), "torch.cuda.max_memory_allocated"
    else:
        mem, mem_kind = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "ru_maxrss (process peak RSS)"
    mem = int(reduce_max(mem, device))

    # -- save
    tokens_step, samples_step = world * 2 * b * L, world * b
    tokens_s = tokens_step / median_s
    n, n_lora = counts["params_matmul"], counts["params_trainable"]
    flops_6n = 6 * n
    flops_exec = flops_6n if args.mode == "full" else 4 * n + 6 * n_lora
    result = {
        "bench": "gpu_train", "size": args.size, "mode": args.mode, "zero": ds["zero_optimization"].get("stage"),
        "ds_config": args.ds_config or f"ds_configs/zero{args.zero}.json", "grad_ckpt": args.grad_ckpt,
        "precision": precision, "attn": args.attn, "world_size": world, "batch_per_device": b, "seq_len": L,
        "warmup": args.warmup, "steps": args.steps,
        "device": torch.cuda.get_device_name(device) if on_gpu else f"cpu ({platform.processor() or platform.machine()}"
                  f", {torch.get_num_threads()} threads)",
        **counts,
        "tokens_per_step": tokens_step, "samples_per_step": samples_step,
        "step_ms_median": 1000 * median_s, "step_ms_mean": 1000 * mean_s,
        "step_ms_all": [round(1000 * t, 3) for t in times],
        "tokens_per_s": tokens_s, "samples_per_s": samples_step / median_s,
        "throughput_from": "median step time, slowest rank",
        "peak_flops": peak, "peak_source": f"measured: best of 5 {probe_n}^3 matmuls, {precision}",
        "flops_per_token_6n": flops_6n, "flops_per_token_executed": flops_exec,
        "mfu": flops_6n * tokens_s / (world * peak),
        "mfu_executed": flops_exec * tokens_s / (world * peak),
        "mfu_convention": "6 x params_matmul x tokens/s / (world x measured peak); mfu_executed: LoRA counts "
                          "4N + 6 N_lora (no frozen-weight gradients), full fine-tuning 6N",
        "peak_mem_bytes": mem, "peak_mem_kind": mem_kind, "build_s": build_s,
        "losses": [round(x, 4) for x in losses],  # batches cycle every 4 steps: compare steps 4 apart
        "loadavg": list(os.getloadavg()), "versions": {"torch": torch.__version__, "deepspeed": deepspeed.__version__,
                                                       "python": sys.version.split()[0]},
    }
    if args.peak_tflops:
        result["mfu_datasheet"] = flops_6n * tokens_s / (world * args.peak_tflops * 1e12)
    if is_main:
        print(format_table(result))
        out = Path(args.json_out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=1), encoding="utf-8")
        print(f"wrote {out}")

    # -- cleanup
    del engine, model, keep
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()
    return result


def format_table(r: dict) -> str:
    rows = [
        ("model", f"Qwen2 {r['size']}: {r['params_total'] / 1e6:.1f}M params ({r['params_matmul'] / 1e6:.1f}M in "
                  f"matmuls), {r['params_trainable'] / 1e6:.2f}M trainable ({r['mode']})"),
        ("setup", f"ZeRO-{r['zero']}, {r['precision']}, grad ckpt {'on' if r['grad_ckpt'] else 'off'}, "
                  f"{r['world_size']} x {r['device']}"),
        ("batch", f"{r['batch_per_device']} pairs x 2 x {r['seq_len']} tokens per device"),
        ("step ms (median / mean)", f"{r['step_ms_median']:.1f} / {r['step_ms_mean']:.1f}"),
        ("samples/s", f"{r['samples_per_s']:.1f}"),
        ("tokens/s", f"{r['tokens_per_s']:.0f}"),
        ("peak matmul (measured)", f"{r['peak_flops'] / 1e12:.3f} TFLOP/s {r['precision']} per device"),
        ("MFU (6N)", f"{100 * r['mfu']:.2f} %"),
        ("MFU (executed FLOPs)", f"{100 * r['mfu_executed']:.2f} %"),
        ("peak memory", f"{r['peak_mem_bytes'] / 2**30:.2f} GiB ({r['peak_mem_kind']})"),
        ("loadavg", " ".join(f"{x:.2f}" for x in r["loadavg"])),
    ]
    if "mfu_datasheet" in r:
        rows.insert(9, ("MFU (6N, datasheet peak)", f"{100 * r['mfu_datasheet']:.2f} %"))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


if __name__ == "__main__":
    main()
