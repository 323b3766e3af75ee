"""The ``smec`` command.

    smec run      [--config F] [section.key=value ...]   encode + train + evaluate + report
    smec encode   [--config F] [section.key=value ...]   only the embedding cache (sharded under accelerate launch)
    smec compare  [--config F] [--methods M,...] [--output DIR] [k=v ...]
                                                          every method (SMEC, curriculum MRL, MRL, single
                                                          resolution, PCA, truncation, BM25) in one report
    smec suite    --config F [--overwrite] [k=v ...]     the adapter job over several datasets, one report
    smec compress --head H --input X.npy --dim d --output Y.npy
    smec download NAME --data-dir DIR                     fetch a public BEIR dataset
    smec config   [--config F] [section.key=value ...]   print the resolved config
    smec train    --config F [--resume auto] [k=v ...]     end-to-end training (accelerate launch / torchrun)
    smec eval     [--stage DIR | --head H ...] [--mteb TASK ...] [--config F] [k=v ...]
                                                          metrics per method and dim (sharded under accelerate launch)
    smec plan     --model M --gpus N --zero Z --mode MODE [...]  per-GPU memory of a training setup
    smec adapters --output DIR [--domains D,...] [--sequence A,B,C,A] [--capacity K] [--steps N] [--lr F]
                                                          domain shift: per-domain LoRA in an LRU AdapterCache
                                                          vs one shared adapter
    smec prepare  msmarco --output DIR (--source DIR | --download) [--max-train-samples N ...]
                                                          MS MARCO -> BEIR folder + triplets
    smec prepare  wikipedia --output DIR (--source FILE | --download [--lang L --dump-date D | --url U])
                                                          Wikipedia -> passage corpus + pairs
    smec toy      --output DIR [--docs N] [--queries N] [--topics N] [--seed S]   a toy BEIR set for smoke runs
    smec store build --corpus corpus.jsonl --output corpus.sqlite     an on-disk (SQLite) passage store
    smec rerank   --candidates FILE --dataset D [--head H --dim d] [--store S] [--output run.tsv]
                                                          re-rank a first stage's top-k with dense embeddings

Errors caused by input print one line (``smec: error: ...``) and exit with status 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from . import __version__
from .errors import SmecError


def _config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", "-c", help="YAML config (see configs/)")
    p.add_argument("overrides", nargs="*", help="section.key=value overrides, e.g. train.epochs=5")


def _overwrite_arg(p: argparse.ArgumentParser) -> None:
    _config_args(p)
    p.add_argument("--overwrite", action="store_true",
                   help="replace the results of a run already in run.output_dir (sets run.overwrite)")


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


def _prepare_parser(sub, name: str, help: str, source: str, download: str) -> argparse.ArgumentParser:
    """``smec prepare <name>``: the options every preparation has (output, source or download, seed)."""
    p = sub.add_parser(name, help=help)
    p.add_argument("--output", required=True, help="the folder to create (absent or empty)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--source", help=source)
    src.add_argument("--download", action="store_true", help=download)
    p.add_argument("--seed", type=int, default=0)
    return p


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="smec", description="Sequential Matryoshka Embedding Compression")
    ap.add_argument("--version", action="version", version=f"smec-dist {__version__}")
    ap.add_argument("--log-level", default=os.environ.get("SMEC_LOG_LEVEL", "INFO"),
                    help=f"one of {', '.join(LOG_LEVELS)} (default INFO, or $SMEC_LOG_LEVEL)")
    ap.add_argument("-q", "--quiet", action="store_true",
                    help="warnings and errors only, no progress bars (results are still printed)")
    sub = ap.add_subparsers(dest="command", required=True)
    _overwrite_arg(sub.add_parser("run", help="encode, train SMEC and baselines, evaluate, write the report"))
    _config_args(sub.add_parser("encode", help="build the embedding cache (resumable, sharded over ranks)"))
    cmp = sub.add_parser("compare", help="run a chosen set of methods on one dataset: one results.json, "
                                         "report.md, plot")
    _overwrite_arg(cmp)
    cmp.add_argument("--methods", help="comma list (default: every method of the registry)")
    cmp.add_argument("--output", help="folder for the report (default: <run.output_dir>-compare)")
    _overwrite_arg(sub.add_parser("suite", help="the adapter job over several datasets (suite.datasets): one "
                                                "report across them, resumable per dataset"))
    cf = sub.add_parser("config", help="print the resolved config, or every key with its type, default and meaning")
    _config_args(cf)
    cf.add_argument("--keys", action="store_true", help="list every config key: type, default, what it does")
    t = sub.add_parser("train", help="end-to-end: train the backbone (full/LoRA/QLoRA) with the SMEC head")
    _overwrite_arg(t)
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
    ad = sub.add_parser("adapters", help="domain shift A->B->C->A: per-domain LoRA adapters in an LRU AdapterCache "
                                         "vs one shared adapter")
    ad.add_argument("--output", required=True, help="folder for results.json, report.md and adapters/<domain>/")
    ad.add_argument("--domains", default="scifact,cranfield,stsb", help="the domains A, B, C ... (comma list)")
    ad.add_argument("--sequence", default="A,B,C,A", help="visits, as letters or domain names")
    ad.add_argument("--capacity", type=int, default=2, help="K: adapters loaded at once")
    ad.add_argument("--steps", type=int, default=20, help="training steps per new adapter")
    ad.add_argument("--lr", type=float, default=1e-3)
    ad.add_argument("--batch-size", type=int, default=16, help="pairs per step (in-batch negatives)")
    ad.add_argument("--lora-r", type=int, default=8)
    ad.add_argument("--model", default="minilm")
    ad.add_argument("--scifact-docs", type=int, default=500, help="random SciFact docs added to the judged ones")
    ad.add_argument("--data-dir", help="holds scifact/, cranfield/, stsb/ (default $SMEC_DATA_DIR)")
    ad.add_argument("--no-progress", action="store_true")
    prep = sub.add_parser("prepare", help="training data from MS MARCO (BEIR folder + triplets) or Wikipedia")
    prep_sub = prep.add_subparsers(dest="dataset", required=True)
    pm = _prepare_parser(prep_sub, "msmarco", "MS MARCO passage ranking -> BEIR folder + query/positive/negatives",
                         source="folder with collection.tsv, queries.train.tsv, qrels.train.tsv "
                                "[, qidpidtriples.train.full.2.tsv or top1000.train.tsv] (or .gz)",
                         download="fetch collection, queries, qrels (needs a network)")
    pm.add_argument("--base-url", help="download from here instead (default: the official MS MARCO site)")
    pm.add_argument("--max-train-samples", type=int, help="at most this many training queries (triplets)")
    pm.add_argument("--split-ratio", type=float, default=1.0, help="fraction of the queries to use (default 1)")
    pm.add_argument("--negatives", type=int, default=4, help="negatives per triplet (default 4)")
    pm.add_argument("--dev-fraction", type=float, default=0.05, help="queries held out as dev (default 0.05)")
    pw = _prepare_parser(prep_sub, "wikipedia", "Wikipedia -> passage corpus + pairs for unsupervised training",
                         source="a wikimedia/wikipedia .parquet shard (or folder of them), .jsonl, "
                                "or a pages-articles .xml / .xml.bz2 dump",
                         download="fetch wikimedia/wikipedia shards (needs a network)")
    pw.add_argument("--lang", default="en", help="language code for --download (default en)")
    pw.add_argument("--dump-date", default="20231101", help="dump date for --download (default 20231101)")
    pw.add_argument("--url", help="with --download: fetch this file instead (.parquet, .jsonl, .xml[.bz2])")
    pw.add_argument("--num-passages", type=int, default=100_000, help="stop after N passages (default 100000; 0: all)")
    pw.add_argument("--min-words", type=int, default=32, help="fewest words per passage (default 32)")
    pw.add_argument("--max-words", type=int, default=128, help="most words per passage (default 128)")
    pw.add_argument("--no-pairs", action="store_true", help="do not write pairs.jsonl")
    ty = sub.add_parser("toy", help="write a deterministic toy BEIR dataset (smoke runs)")
    ty.add_argument("--output", required=True, help="the dataset folder to create")
    ty.add_argument("--docs", type=int, default=200, help="documents (default 200)")
    ty.add_argument("--queries", type=int, default=40, help="queries, split over train and test (default 40)")
    ty.add_argument("--topics", type=int, default=8, help="topics, at most 16 (default 8)")
    ty.add_argument("--seed", type=int, default=0, help="same seed, same bytes (default 0)")
    st = sub.add_parser("store", help="on-disk passage stores for corpora too large for memory")
    st_sub = st.add_subparsers(dest="store_command", required=True)
    sb = st_sub.add_parser("build", help="stream a BEIR corpus.jsonl into a SQLite passage store")
    sb.add_argument("--corpus", required=True, help="a BEIR corpus.jsonl")
    sb.add_argument("--output", required=True, help="the .sqlite file to write (replaced when complete)")
    rr = sub.add_parser("rerank", help="re-rank a first stage's candidates (TREC run, MS MARCO top1000, qid/pid)")
    rr.add_argument("--candidates", required=True, help="TREC run, MS MARCO top1000 .tsv, or qid<TAB>pid file")
    rr.add_argument("--dataset", required=True, help="a BEIR folder, or a dataset name under --data-dir")
    rr.add_argument("--data-dir", help="where named datasets live (default: data.data_dir, $SMEC_DATA_DIR)")
    rr.add_argument("--split", default="test", help="qrels split to evaluate when present (default test)")
    rr.add_argument("--model", default="minilm", help="encoder: alias, folder or hub id (default minilm)")
    rr.add_argument("--head", help="a trained head .safetensors to compress with (needs --dim)")
    rr.add_argument("--dim", type=int, help="the head's output dim")
    rr.add_argument("--store", help="passage texts from this SQLite store (smec store build) instead of the corpus")
    rr.add_argument("--output", help="TREC run to write (default <candidates stem>.rerank.tsv here)")
    rr.add_argument("--batch-size", type=int, default=64, help="texts per encoder batch (default 64)")
    rr.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                    help="progress bars (default: on a terminal only)")
    return ap


COMPARE_K = (1, 3, 5, 10, 100)


def compare_overrides(args, overrides: list[str]) -> list[str]:
    """``smec compare``: the main job with every method, the metric suite at k = 1, 3, 5, 10,
    100 and its own output folder (``--output``, else ``<run.output_dir>-compare``); explicit
    ``k=v`` overrides win over these defaults."""
    from .config import load_config
    from .method.registry import COMPARE_METHODS, METHODS

    methods = [m.strip() for m in (args.methods or ",".join(COMPARE_METHODS)).split(",") if m.strip()]
    for m in methods:
        if m not in METHODS:
            raise SmecError(f"--methods: '{m}' is not one of {', '.join(METHODS)}")
    if not methods:
        raise SmecError("--methods: at least one method is needed")
    base = load_config(args.config, overrides + ["run.k_values=[1]"])  # the plain run's folder and search depth
    k_values = [k for k in COMPARE_K if k <= base.run.search_k]
    first = [f"run.methods=[{','.join(methods)}]", f"run.k_values=[{','.join(map(str, k_values))}]",
             f"run.output_dir={base.run.output_dir.rstrip('/')}-compare"]
    return first + overrides + ([f"run.output_dir={args.output}"] if args.output else [])  # --output wins


def _compress(args) -> None:
    import numpy as np

    from .io import atomic_path
    from .method.export import CompressedModel

    src = Path(args.input)
    if not src.exists():
        raise SmecError(f"{src}: no such file")
    try:
        x = np.load(src, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:  # EOFError: an empty file; OSError: a folder
        raise SmecError(f"{src}: not a numeric .npy array ({exc})") from exc
    if not isinstance(x, np.ndarray):  # an .npz archive: several arrays, which one is meant?
        names = ", ".join(x.files)
        x.close()
        raise SmecError(f"{src}: an .npz archive ({names}), not one .npy array: save the embeddings with np.save")
    if x.dtype.kind not in "iuf":
        raise SmecError(f"{src}: not a numeric .npy array (dtype {x.dtype})")
    if x.ndim == 2 and not np.isfinite(x).all():
        row = int(np.flatnonzero(~np.isfinite(x).all(axis=1))[0])
        raise SmecError(f"{src}: row {row} holds NaN or infinite values")
    out = Path(args.output)
    if not out.parent.is_dir():
        raise SmecError(f"{out}: output folder {out.parent} not found")
    model = CompressedModel.load(args.head)
    if x.ndim != 2 or x.shape[1] != model.head.full_dim:
        base = model.about.get("base_model", {})
        made_by = f" of {base.get('name')} ({model.about.get('pooling')} pooling, max_length " \
                  f"{model.about.get('max_length')})" if base else ""
        raise SmecError(f"{src}: shape {x.shape}, expected (n, {model.head.full_dim}): {args.head} compresses "
                        f"{model.head.full_dim}-dim embeddings{made_by}")
    try:
        y = model.compress(x, args.dim)
    except SmecError as exc:
        raise SmecError(f"{src}: {exc}") from exc
    try:
        with atomic_path(out) as tmp, open(tmp, "wb") as fh:
            np.save(fh, y)
    except OSError as exc:  # a full disk, no permission: no partial file left
        raise SmecError(f"{out}: cannot write ({exc.strerror or exc})") from exc
    print(f"{out}: {y.shape[0]} x {y.shape[1]}")


def _eval(args, cfg) -> None:
    from . import dist
    from .recipes.evaluate import SmecModel, evaluate_model, table

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
    model.batch_size, model.progress = cfg.model.batch_size, cfg.run.show_progress() and dist.is_main()
    result = evaluate_model(model, cfg, out, methods=methods, mteb_tasks=args.mteb, mteb_dim=args.mteb_dim)
    if dist.is_main():
        print(table(result), end="")
        for task, scores in (result.get("mteb") or {}).items():
            print(f"MTEB {task}: nDCG@10 {scores['ndcg_at_10']:.4f}")
        print(f"results: {out / 'eval.json'}")


def _bars(args, setting: bool | None = None) -> bool:
    """Progress bars for a command without a config: off with -q, else ``setting``, else on a terminal."""
    from .console import bars_wanted

    return False if args.quiet else bars_wanted(setting)


def _prepare(args) -> str:
    """``smec prepare msmarco|wikipedia``: run the preparation, return its summary line."""
    if args.dataset == "msmarco":
        from .data.msmarco import msmarco_summary_line, prepare_msmarco

        return msmarco_summary_line(prepare_msmarco(
            args.output, args.source, download=args.download, base_url=args.base_url,
            max_train_samples=args.max_train_samples, split_ratio=args.split_ratio,
            negatives_per_query=args.negatives, dev_fraction=args.dev_fraction, seed=args.seed, progress=_bars(args)))
    from .data.wikipedia import prepare_wikipedia, wikipedia_summary_line

    return wikipedia_summary_line(prepare_wikipedia(
        args.output, args.source, download=args.download, url=args.url, lang=args.lang, dump_date=args.dump_date,
        num_passages=None if args.num_passages == 0 else args.num_passages,  # --num-passages 0: all
        min_words=args.min_words, max_words=args.max_words, pairs=not args.no_pairs, seed=args.seed,
        progress=_bars(args)))


def _adapters(args, argv: list[str] | None = None) -> str:
    """``smec adapters``: run the domain-shift comparison and return the report's summary."""
    import shlex

    from .recipes.domain_shift import run_domain_shift

    words = list(sys.argv[1:] if argv is None else argv)
    results = run_domain_shift(
        domains=args.domains.split(","), sequence=args.sequence, capacity=args.capacity, steps=args.steps,
        lr=args.lr, batch_size=args.batch_size, out_dir=args.output, data_dir=args.data_dir, model=args.model,
        lora_r=args.lora_r, scifact_docs=args.scifact_docs, progress=_bars(args, False if args.no_progress else None),
        command="smec " + " ".join(shlex.quote(w) for w in words))
    summ = results["summary"]
    parts = [f"retention {d}: cache {v:.4f}, shared {summ['retention_shared'].get(d, float('nan')):.4f}"
             for d, v in summ["retention_cache"].items()]
    return "; ".join(parts + [f"report: {Path(args.output) / 'report.md'}"])


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
# libraries whose INFO lines are noise in our logs (faiss.loader: which SIMD build it tried)
NOISY_LOGGERS = ("bm25s", "httpx", "urllib3", "filelock", "accelerate", "DeepSpeed", "deepspeed",
                 "torch.distributed", "faiss.loader")


def _setup_logging(args) -> None:
    level = args.log_level.upper()
    if level not in LOG_LEVELS:
        raise SmecError(f"--log-level: '{args.log_level}' is not one of {', '.join(LOG_LEVELS)}")
    logging.basicConfig(level="WARNING" if args.quiet else level, datefmt="%H:%M:%S",
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in NOISY_LOGGERS:
        logging.getLogger(noisy).setLevel(logging.WARNING)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        _setup_logging(args)
        if args.command == "evaluate":
            args.command = "eval"
        if args.command in ("run", "encode", "config", "train", "eval", "compare", "suite"):
            from .config import load_config

            overrides = list(args.overrides)
            if args.command == "compare":
                overrides = compare_overrides(args, overrides)
            if getattr(args, "mteb", None):  # `--mteb TASK... k=v`: the overrides after the task names
                overrides += [t for t in args.mteb if "=" in t]
                args.mteb = [t for t in args.mteb if "=" not in t]
            if getattr(args, "resume", None):
                overrides.append(f"e2e.resume={args.resume}")
            if args.quiet:
                overrides.append("run.progress=false")
            if getattr(args, "overwrite", False):
                overrides.append("run.overwrite=true")
            cfg = load_config(args.config, overrides)
            if args.command == "config" and args.keys:
                from .config import key_reference

                for key, typ, default, doc in key_reference():
                    print(f"{key} ({typ}, default {default})" + (f"\n    {doc}" if doc else ""))
            elif args.command == "config":
                import yaml

                print(yaml.safe_dump(cfg.to_dict(), sort_keys=False), end="")
            elif args.command == "eval":
                _eval(args, cfg)
            elif args.command == "train":
                from .recipes.e2e import train_e2e

                from . import dist

                summary = train_e2e(cfg)
                if dist.is_main():
                    print(json.dumps({k: summary[k] for k in ("model", "backbone", "world_size", "deepspeed",
                                                              "trainable_parameters", "seconds", "stopped")
                                      if k in summary}))
            elif args.command == "encode":
                from .recipes.encode import encode

                print(encode(cfg))
            elif args.command == "suite":
                from .recipes.suite import run_suite

                run_suite(cfg, args.config, overrides)
            else:  # run, compare
                from .recipes.adapter import run_job

                run_job(cfg)
        elif args.command == "compress":
            _compress(args)
        elif args.command == "download":
            from .data import download_beir

            print(download_beir(args.name, args.data_dir))
        elif args.command == "toy":
            from .data.toy import write_toy

            print(write_toy(args.output, docs=args.docs, queries=args.queries, topics=args.topics, seed=args.seed))
        elif args.command == "store":
            from .data.store import build_store

            print(build_store(args.corpus, args.output))
        elif args.command == "rerank":
            from .evaluation.rerank import rerank_candidates

            print(rerank_candidates(args.candidates, args.dataset, data_dir=args.data_dir, split=args.split,
                                    model=args.model, head=args.head, dim=args.dim, store=args.store,
                                    output=args.output, batch_size=args.batch_size,
                                    progress=_bars(args, args.progress)))
        elif args.command == "prepare":
            print(_prepare(args))
        elif args.command == "adapters":
            print(_adapters(args, argv))
        elif args.command == "plan":
            from .plan_report import plan_report

            print(plan_report(config=args.config, model=args.model, gpus=args.gpus, nodes=args.nodes, zero=args.zero,
                              mode=args.mode, lora_r=args.lora_r, lora_targets=args.lora_targets, batch=args.batch,
                              seq_len=args.seq_len, queue_size=args.queue_size, offload=args.offload,
                              grad_ckpt=args.grad_ckpt, dims=args.dims, precision=args.precision, as_json=args.json))
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
