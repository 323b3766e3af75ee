"""Encoding benchmark: our :class:`~smec_dist.backbone.Encoder` against ``SentenceTransformer.encode``.

Both sides load the same model folder (``smec_dist.backbone.resolve_model``) in fp32 on the
same device and encode the same texts, in the same order, with the same batch size, max length
and torch thread count (one process, so one ``torch.set_num_threads``). The sentence-transformers
side is built from modules so that it pools as our encoder does:

* ``minilm``: ``Transformer`` + ``Pooling("mean")`` + ``Normalize`` (what the model's own
  ``modules.json`` builds);
* ``smollm2-135m``: ``Transformer`` + ``Pooling("lasttoken")`` + ``Normalize``. Our encoder
  truncates to ``max_length - 1`` tokens and appends EOS; sentence-transformers appends nothing,
  so its tokenizer gets a post-processor that appends EOS (the way Qwen3-Embedding's tokenizer
  does). A post-processor's tokens count against ``max_length`` when truncating, so both sides
  feed the model identical ids; ``same_input_ids`` in the results checks it on every text.

The sentence-transformers ``Transformer`` is pinned to the plain ``text`` modality: by default
sentence-transformers 6 renders every text of a model whose tokenizer has a chat template
(SmolLM2-Instruct's has) through that template, default system prompt included, which is not
what our encoder (or a fair throughput comparison) does.

Timing is interleaved: one warm-up call each on the first ``--warmup-docs`` texts, then
``ours, theirs, theirs, ours, ours, theirs, ...`` ``--repeats`` times each over all texts
(the order flips every round, so neither side always goes first); the table gives the
median docs/s of each and ``ratio = ours / theirs`` (above 1: ours is faster), ``paired_ratio``
(the median over rounds of the ratio of a round's two back-to-back calls, which cancels slow
drifts of a shared machine's speed), and the same
ratio of the median process CPU seconds (less sensitive to other jobs on a shared machine,
though not to their use of caches and memory bandwidth). ``max_abs_diff`` is the
largest absolute difference between the two embedding matrices of the last repeat. Both sides
sort by length and pad each batch to its longest text, sentence-transformers by characters and
ours by token count (inside chunks of a character order), so a text can land in batches of
different widths on the two sides: results then agree up to float rounding, not bit for bit.

Command (SciFact, MiniLM on its first 512 docs and SmolLM2 on its first 64: about 8 minutes
on 2 idle cores, 25 or more while other jobs share them)::

    SMEC_DATA_DIR=/work/shared/data HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false \\
        .venv/bin/python -m bench.encode --limit 512 --smol-limit 64 --repeats 4

Without ``--limit`` MiniLM encodes the whole corpus (5183 docs: about 4 minutes per call on 2
idle cores, 10 while shared); SmolLM2 runs at about 2 docs/s on 2 idle cores. Writes
``bench/results/encode.json`` (``--json-out``).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.common import print_results
from smec_dist.errors import SmecError

MODELS: tuple[str, ...] = ("minilm", "smollm2-135m")
ST_POOLING = {"mean": "mean", "last": "lasttoken", "cls": "cls"}


# --------------------------------------------------------------------------- the two encoders


def load_texts(data_dir: str | os.PathLike, dataset: str, limit: int | None) -> list[str]:
    """The first ``limit`` corpus documents (all when None) as :func:`doc_text` gives them."""
    from smec_dist.data.beir import doc_text, load_corpus

    path = Path(data_dir) / dataset / "corpus.jsonl"
    if not path.exists():
        raise SmecError(f"{path}: no such file (set --data-dir or SMEC_DATA_DIR)")
    texts = [doc_text(doc) for doc in load_corpus(path).values()]
    return texts[:limit] if limit else texts


def _append_eos(tokenizer) -> None:
    """Make a fast tokenizer append EOS after truncation, as ``Encoder.token_ids`` does."""
    from tokenizers import processors

    backend = tokenizer._tokenizer  # the Rust tokenizer behind a TokenizersBackend
    if backend.post_processor is not None and backend.post_processor.num_special_tokens_to_add(False):
        # ours keeps the tokenizer's own special tokens and adds EOS after them; replacing a
        # post-processor that adds tokens would drop them, so the comparison would be unfair
        raise SmecError("the tokenizer's post-processor already adds special tokens; "
                        "appending EOS the way our encoder does is not implemented for it")
    eos = tokenizer.eos_token
    backend.post_processor = processors.TemplateProcessing(
        single=f"$A:0 {eos}:0", pair=f"$A:0 $B:1 {eos}:1", special_tokens=[(eos, tokenizer.eos_token_id)])


def sentence_transformer(path: str | os.PathLike, pooling: str, append_eos: bool, normalize: bool,
                         max_length: int, device: str):
    """A ``SentenceTransformer`` that tokenizes, pools and normalises as our encoder does."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer

    module = Transformer(
        str(path), max_seq_length=max_length, model_kwargs={"dtype": torch.float32},
        # plain text only: a tokenizer with a chat template (SmolLM2) would otherwise have every
        # text wrapped in that template, system prompt included, before tokenizing
        modality_config={"text": {"method": "forward", "method_output_name": "last_hidden_state"}},
        module_output_name="token_embeddings")
    if module.auto_model.dtype != torch.float32:
        raise SmecError(f"{path}: sentence-transformers loaded {module.auto_model.dtype}, not float32")
    tok = module.tokenizer
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token  # what load_encoder does
    if append_eos:
        _append_eos(tok)
    stack = [module, Pooling(module.get_embedding_dimension(), pooling_mode=ST_POOLING[pooling])]
    if normalize:
        stack.append(Normalize())
    return SentenceTransformer(modules=stack, device=device)


def same_input_ids(ours, theirs, texts: Sequence[str]) -> bool:
    """Whether both sides give the model the same token ids for every text."""
    a = ours.tokenize(texts)
    b = theirs[0].preprocess(list(texts))
    return (a["input_ids"].shape == b["input_ids"].shape and bool((a["input_ids"] == b["input_ids"]).all())
            and bool((a["attention_mask"] == b["attention_mask"]).all()))


# --------------------------------------------------------------------------- timing


def count_tokens(model) -> tuple[Any, list[int]]:
    """Count the token positions (padding included) a HF model embeds.

    The hook sits on the input embedding, not the model: sentence-transformers calls the model's
    ``forward`` method directly, which skips the model's own hooks.
    Returns the hook's handle (``remove()`` it when done) and a one-item running total."""
    seen = [0]

    def hook(module, args, kwargs):
        ids = kwargs.get("input", args[0] if args else None)
        seen[0] += ids.numel() if ids is not None else 0

    return model.get_input_embeddings().register_forward_pre_hook(hook, with_kwargs=True), seen


def interleaved(calls: Mapping[str, Callable[[], np.ndarray]],
                repeats: int) -> tuple[dict[str, list[float]], dict[str, list[float]], dict[str, np.ndarray]]:
    """Wall and process CPU seconds per call of each entry, run in turns (a, b, b, a, a, b, ...).

    Turns spread a change in machine load over both sides instead of charging it to one, and
    the order flips every round so that a steady drift (later calls of a process run faster
    for a while) does not favour whichever side goes second; CPU seconds (all threads of this
    process) leave out the time other processes held the cores.
    Returns wall times, CPU times and each entry's output of its last call."""
    wall: dict[str, list[float]] = {name: [] for name in calls}
    cpu: dict[str, list[float]] = {name: [] for name in calls}
    outputs: dict[str, np.ndarray] = {}
    for round_ in range(repeats):
        for name, call in list(calls.items())[::1 if round_ % 2 == 0 else -1]:
            start, start_cpu = time.perf_counter(), time.process_time()
            outputs[name] = call()
            wall[name].append(time.perf_counter() - start)
            cpu[name].append(time.process_time() - start_cpu)
    return wall, cpu, outputs


def bench_model(name: str, texts: Sequence[str], batch_size: int, max_length: int, repeats: int,
                device: str, warmup_docs: int = 16, log: Callable[[str], None] = print) -> dict[str, Any]:
    """One row of the table: docs/s of ours and of sentence-transformers on ``texts``."""
    from smec_dist.backbone import load_encoder, resolve_model

    ours = load_encoder(name, max_length=max_length, device=device, dtype="float32")
    theirs = sentence_transformer(resolve_model(name), ours.pooling, ours.append_eos, ours.normalize,
                                  max_length, ours.device)
    texts = list(texts)
    warm = texts[:warmup_docs]
    log(f"{name}: {len(texts)} docs, batch {batch_size}, max_length {max_length}, {repeats} repeats")
    ours.encode(warm, batch_size=batch_size, progress=False)
    theirs.encode(warm, batch_size=batch_size, show_progress_bar=False)
    tokens = {"ours": count_tokens(ours.model), "theirs": count_tokens(theirs[0].auto_model)}
    load_before = os.getloadavg()
    times, cpu, out = interleaved(
        {"ours": lambda: ours.encode(texts, batch_size=batch_size, progress=False),
         "theirs": lambda: theirs.encode(texts, batch_size=batch_size, show_progress_bar=False,
                                         convert_to_numpy=True)},
        repeats)
    for handle, _ in tokens.values():
        handle.remove()
    ours_s, theirs_s = statistics.median(times["ours"]), statistics.median(times["theirs"])
    return {
        "model": name,
        "path": str(resolve_model(name)),
        "pooling": ours.pooling,
        "append_eos": ours.append_eos,
        "n_docs": len(texts),
        "real_tokens": sum(map(len, ours.token_ids(texts))),
        "padded_tokens": {side: seen[0] // repeats for side, (_, seen) in tokens.items()},
        "same_input_ids": same_input_ids(ours, theirs, texts),
        "attn_implementation": {"ours": ours.model.config._attn_implementation,
                                "theirs": theirs[0].auto_model.config._attn_implementation},
        "ours_s": [round(t, 3) for t in times["ours"]],
        "theirs_s": [round(t, 3) for t in times["theirs"]],
        "ours_cpu_s": [round(t, 3) for t in cpu["ours"]],
        "theirs_cpu_s": [round(t, 3) for t in cpu["theirs"]],
        "ours_docs_per_s": round(len(texts) / ours_s, 2),
        "theirs_docs_per_s": round(len(texts) / theirs_s, 2),
        "ratio": round(theirs_s / ours_s, 3),
        "cpu_ratio": round(statistics.median(cpu["theirs"]) / statistics.median(cpu["ours"]), 3),
        # the two calls of a round ran back to back: per-round ratios cancel slow drifts of the machine
        "paired_ratio": round(statistics.median(t / o for o, t in zip(times["ours"], times["theirs"])), 3),
        "max_abs_diff": float(np.abs(out["ours"] - out["theirs"]).max()),
        "loadavg_before": [round(x, 2) for x in load_before],
        "loadavg_after": [round(x, 2) for x in os.getloadavg()],
    }


# --------------------------------------------------------------------------- report


def format_table(results: Mapping[str, Any]) -> str:
    head = ["model", "docs", "ours docs/s", "theirs docs/s", "ours/theirs", "per round", "cpu-time ratio",
            "max abs diff",
            "padded tokens ours/theirs", "same ids", "loadavg 1m"]
    rows = [[r["model"], str(r["n_docs"]), f"{r['ours_docs_per_s']:.2f}", f"{r['theirs_docs_per_s']:.2f}",
             f"{r['ratio']:.3f}", f"{r['paired_ratio']:.3f}", f"{r['cpu_ratio']:.3f}", f"{r['max_abs_diff']:.2e}",
             f"{r['padded_tokens']['ours']}/{r['padded_tokens']['theirs']}", "yes" if r["same_input_ids"] else "NO",
             f"{r['loadavg_before'][0]:.2f} -> {r['loadavg_after'][0]:.2f}"] for r in results["rows"]]
    widths = [max(len(c) for c in col) for col in zip(head, *rows)]

    def line(cells: list[str]) -> str:
        return "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    return "\n".join([line(head), line(["-" * w for w in widths]), *map(line, rows)])


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bench.encode", description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    p.add_argument("--data-dir", default=os.environ.get("SMEC_DATA_DIR", "data"),
                   help="folder holding <dataset>/corpus.jsonl (default $SMEC_DATA_DIR)")
    p.add_argument("--dataset", default="scifact")
    p.add_argument("--limit", type=int, default=None, help="MiniLM: first N docs (default: all)")
    p.add_argument("--smol-limit", type=int, default=256, help="SmolLM2: first N docs")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--max-length", type=int, default=256)
    p.add_argument("--repeats", type=int, default=3, help="timed calls per side, after one warm-up each")
    p.add_argument("--warmup-docs", type=int, default=16, help="texts in each side's warm-up call")
    p.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch threads (both sides)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--json-out", default="bench/results/encode.json")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.repeats < 1 or args.batch_size < 1 or args.threads < 1:
            raise SmecError("--repeats, --batch-size and --threads must be at least 1")
        import sentence_transformers
        import transformers

        torch.set_num_threads(args.threads)
        load_before = os.getloadavg()
        print(f"loadavg before: {', '.join(f'{x:.2f}' for x in load_before)}  "
              f"(cpus {os.cpu_count()}, torch threads {torch.get_num_threads()})", flush=True)
        start = time.perf_counter()
        rows = []
        for name in args.models:
            limit = args.smol_limit if name.startswith("smollm2") else args.limit
            texts = load_texts(args.data_dir, args.dataset, limit)
            rows.append(bench_model(name, texts, args.batch_size, args.max_length, args.repeats, args.device,
                                    args.warmup_docs, log=lambda s: print(s, flush=True)))
        results = {
            "meta": {
                "command": " ".join(["python -m bench.encode", *(sys.argv[1:] if argv is None else argv)]),
                "dataset": args.dataset, "batch_size": args.batch_size, "max_length": args.max_length,
                "repeats": args.repeats, "dtype": "float32", "device": args.device,
                "torch_threads": torch.get_num_threads(), "cpus": os.cpu_count(),
                "torch": torch.__version__, "transformers": transformers.__version__,
                "sentence_transformers": sentence_transformers.__version__,
                "python": platform.python_version(), "processor": platform.processor() or platform.machine(),
                "loadavg_before": [round(x, 2) for x in load_before],
                "loadavg_after": [round(x, 2) for x in os.getloadavg()],
                "seconds": round(time.perf_counter() - start, 1),
            },
            "rows": rows,
        }
        print_results(format_table(results), results, args.json_out)
    except SmecError as exc:
        print(f"bench.encode: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
