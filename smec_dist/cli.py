"""The ``smec`` command.

    smec run      [--config F] [section.key=value ...]   encode + train + evaluate + report
    smec encode   [--config F] [section.key=value ...]   only the embedding cache (sharded under accelerate launch)
    smec compress --head H --input X.npy --dim d --output Y.npy
    smec download NAME --data-dir DIR                     fetch a public BEIR dataset
    smec config   [--config F] [section.key=value ...]   print the resolved config
    smec train    --config F [--resume auto] [k=v ...]     end-to-end training (accelerate launch / torchrun)
    smec eval     [--stage DIR | --head H ...] [--mteb TASK ...] [--config F] [k=v ...]
                                                          metrics per method and dim (sharded under accelerate launch)
    smec plan     --model M --gpus N --zero Z --mode MODE [...]  per-GPU memory of a training setup

Errors caused by input print one line (``smec: error: ...``) and exit with status 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from .errors import SmecError


def _config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", "-c", help="YAML config (see configs/)")
    p.add_argument("overrides", nargs="*", help="section.key=value overrides, e.g. train.epochs=5")


def _plan_args(p: argparse.ArgumentParser) -> None:
    # flags left unset take their value from --config (a smec train config), else the default
    p.add_argument("--config", "-c", help="a smec train config (model, e2e, dims, queue, DeepSpeed JSON)")
    p.add_argument("--model", help="qwen2-7b, llama3-8b, smollm2-135m, a known hub id, or a folder with config.json")
    p.add_argument("--gpus", type=int, help="GPUs per node (default 1)")
    p.add_argument("--nodes", type=int, help="nodes (default 1)")
    p.add_argument("--zero", type=int, choices=(0, 1, 2, 3), help="ZeRO stage (default 0)")
    p.add_argument("--mode", choices=("frozen", "full", "lora", "qlora"), help="backbone training (default lora)")
    p.add_argument("--lora-r", type=int, help="LoRA rank (default 16)")
    p.add_argument("--lora-targets", help="all-linear (default) or a comma list, e.g. q_proj,v_proj")
    p.add_argument("--batch", type=int, help="sequences per GPU per micro step (default 8)")
    p.add_argument("--seq-len", type=int, help="tokens per sequence (default 512)")
    p.add_argument("--queue-size", type=int, help="S-XBM entries (default 65536)")
    p.add_argument("--offload", action="store_true", default=None,
                   help="ZeRO-Offload optimizer states (and ZeRO-3 params) to CPU")
    p.add_argument("--grad-ckpt", action=argparse.BooleanOptionalAction, default=None,
                   help="gradient checkpointing of every decoder layer (default on)")
    p.add_argument("--dims", help="SMEC widths, e.g. 1792,896,448,224 (default D/2 ... D/16)")
    p.add_argument("--precision", choices=("bf16", "fp16", "fp32"), help="default bf16")
    p.add_argument("--json", action="store_true", help="print the figures as JSON")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="smec", description="Sequential Matryoshka Embedding Compression")
    ap.add_argument("--log-level", default=os.environ.get("SMEC_LOG_LEVEL", "INFO"))
    sub = ap.add_subparsers(dest="command", required=True)
    _config_args(sub.add_parser("run", help="encode, train SMEC and baselines, evaluate, write the report"))
    _config_args(sub.add_parser("encode", help="build the embedding cache (resumable, sharded over ranks)"))
    _config_args(sub.add_parser("config", help="print the resolved config"))
    t = sub.add_parser("train", help="end-to-end: train the backbone (full/LoRA/QLoRA) with the SMEC head")
    _config_args(t)
    t.add_argument("--resume", help="auto (newest complete checkpoint) or a checkpoint folder; sets e2e.resume")
    ev = sub.add_parser("eval", aliases=["evaluate"],
                        help="retrieval metrics per method and dim (sharded under accelerate launch), MTEB")
    _config_args(ev)
    ev.add_argument("--stage", help="a smec train stage export, e.g. runs/x/stages/stage4 (default: model.name)")
    ev.add_argument("--head", action="append", default=[],
                    help="a head written by smec run (repeatable), applied to model.name's embeddings")
    ev.add_argument("--methods", help="comma list of methods to evaluate (default: every head, and truncate)")
    ev.add_argument("--output", help="folder for eval.json, eval.md, embeddings/ and mteb/ "
                                     "(default: STAGE/eval, else run.output_dir/eval)")
    ev.add_argument("--mteb", nargs="+", metavar="TASK",
                    help="also run MTEB on these tasks: a BEIR folder under data.data_dir (offline) or an MTEB task")
    ev.add_argument("--mteb-dim", type=int, help="the dim MTEB evaluates at (default: full width)")
    ev.add_argument("--mteb-method", help="the method MTEB evaluates with (default: the first head)")
    c = sub.add_parser("compress", help="compress saved embeddings with a trained head")
    c.add_argument("--head", required=True, help="a head .safetensors written by smec run")
    c.add_argument("--input", required=True, help=".npy of full-width embeddings (n, D)")
    c.add_argument("--dim", required=True, type=int)
    c.add_argument("--output", required=True, help=".npy to write (n, dim)")
    d = sub.add_parser("download", help="download a public BEIR dataset (needs a network)")
    d.add_argument("name")
    d.add_argument("--data-dir", required=True)
    _plan_args(sub.add_parser("plan", help="per-GPU memory of training on an LLM backbone (no GPU needed)"))
    return ap


def _compress(args) -> None:
    import numpy as np

    from .head import CompressedModel

    src = Path(args.input)
    if not src.exists():
        raise SmecError(f"{src}: no such file")
    try:
        x = np.load(src, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:  # EOFError: an empty file; OSError: a folder
        raise SmecError(f"{src}: not a numeric .npy array ({exc})") from exc
    if x.dtype.kind not in "iuf":
        raise SmecError(f"{src}: not a numeric .npy array (dtype {x.dtype})")
    if x.ndim == 2 and not np.isfinite(x).all():
        row = int(np.flatnonzero(~np.isfinite(x).all(axis=1))[0])
        raise SmecError(f"{src}: row {row} holds NaN or infinite values")
    out = Path(args.output)
    if not out.parent.is_dir():
        raise SmecError(f"{out}: output folder {out.parent} not found")
    model = CompressedModel.load(args.head)
    try:
        y = model.compress(x, args.dim)
    except SmecError as exc:
        raise SmecError(f"{src}: {exc}") from exc
    tmp = out.with_name(out.name + ".tmp.npy")
    try:
        np.save(tmp, y)
        tmp.replace(out)
    except OSError as exc:  # a full disk, no permission: no partial file left
        tmp.unlink(missing_ok=True)
        raise SmecError(f"{out}: cannot write ({exc.strerror or exc})") from exc
    print(f"{out}: {y.shape[0]} x {y.shape[1]}")


def _eval(args, cfg) -> None:
    from . import dist
    from .evaluate import SmecModel, evaluate_model, table

    if args.stage and args.head:
        raise SmecError("--stage and --head exclude each other: a stage export carries its own head")
    if args.stage:
        model = SmecModel.from_stage(args.stage, device=cfg.model.device, dtype=cfg.model.dtype)
        out = Path(args.output or Path(args.stage) / "eval")
    else:
        e2e = cfg.e2e
        model = SmecModel.from_model(cfg.model.name, args.head, pooling=cfg.model.pooling,
                                     max_length=cfg.model.max_length, device=cfg.model.device, dtype=cfg.model.dtype,
                                     query_instruction=e2e.query_instruction, doc_instruction=e2e.doc_instruction)
        out = Path(args.output or Path(cfg.run.output_dir) / "eval")
    methods = [m.strip() for m in args.methods.split(",") if m.strip()] if args.methods else None
    model.default_method = args.mteb_method or model.default_method
    model.check(model.default_method, args.mteb_dim)
    model.batch_size, model.progress = cfg.model.batch_size, cfg.run.progress and dist.is_main()
    result = evaluate_model(model, cfg, out, methods=methods, mteb_tasks=args.mteb, mteb_dim=args.mteb_dim)
    if dist.is_main():
        print(table(result), end="")
        for task, scores in (result.get("mteb") or {}).items():
            print(f"MTEB {task}: nDCG@10 {scores['ndcg_at_10']:.4f}")
        print(f"results: {out / 'eval.json'}")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    for noisy in ("bm25s", "httpx", "urllib3", "filelock", "accelerate", "DeepSpeed", "deepspeed", "torch.distributed"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        if args.command == "evaluate":
            args.command = "eval"
        if args.command in ("run", "encode", "config", "train", "eval"):
            from .config import load_config

            overrides = list(args.overrides)
            if getattr(args, "mteb", None):  # `--mteb TASK... k=v`: the overrides after the task names
                overrides += [t for t in args.mteb if "=" in t]
                args.mteb = [t for t in args.mteb if "=" not in t]
            if getattr(args, "resume", None):
                overrides.append(f"e2e.resume={args.resume}")
            cfg = load_config(args.config, overrides)
            if args.command == "config":
                import yaml

                print(yaml.safe_dump(cfg.to_dict(), sort_keys=False), end="")
            elif args.command == "eval":
                _eval(args, cfg)
            elif args.command == "train":
                from .e2e import train_e2e

                from . import dist

                summary = train_e2e(cfg)
                if dist.is_main():
                    print(json.dumps({k: summary[k] for k in ("model", "backbone", "world_size", "deepspeed",
                                                              "trainable_parameters", "seconds", "stopped")
                                      if k in summary}))
            elif args.command == "encode":
                from .pipeline import encode

                print(encode(cfg))
            else:
                from .pipeline import run_job

                run_job(cfg)
        elif args.command == "compress":
            _compress(args)
        elif args.command == "download":
            from .data import download_beir

            print(download_beir(args.name, args.data_dir))
        elif args.command == "plan":
            from .plan import plan_command

            print(plan_command(args))
    except SmecError as exc:
        print(f"smec: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("smec: interrupted", file=sys.stderr)
        return 130
    except RuntimeError as exc:  # a collective timed out: say what it means, in one line per rank
        text = str(exc)
        if int(os.environ.get("WORLD_SIZE", "1")) > 1 and ("timed out" in text.lower() or "timeout" in text.lower()):
            first = next((line.strip() for line in text.splitlines() if line.strip()), type(exc).__name__)
            print(f"smec: error: rank {os.environ.get('RANK', '?')}: a collective timed out ({first[-160:]}): "
                  f"another rank died or is stuck; the newest complete checkpoint is kept (--resume auto "
                  f"continues from it); e2e.collective_timeout_s sets the wait", file=sys.stderr)
            return 1
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
