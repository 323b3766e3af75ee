"""Running SMEC models through MTEB (``mteb`` 2.x), offline on local BEIR folders.

Three pieces:

* :class:`MTEBEncoder` wraps any model with ``encode(texts, kind, dim=None)`` (``kind`` is
  ``"query"`` or ``"doc"``; the model applies its own instructions and compression) as an
  ``mteb.models.abs_encoder.AbsEncoder``, with a ``ModelMeta`` that needs no hub access.
* :func:`local_retrieval_task` turns a BEIR folder (``corpus.jsonl``, ``queries.jsonl``,
  ``qrels/<split>.tsv``) into an ``AbsTaskRetrieval`` that loads nothing from the hub.
* :func:`run_mteb` evaluates a model on local folders or MTEB registry tasks and writes
  MTEB's standard result files (``<output_dir>/results/<model>/<revision>/<task>.json``,
  via ``mteb.ResultCache``), so that ``mteb`` tooling can read them back.

The local task is built to score exactly what :func:`smec_dist.evaluation.evaluate_run`
scores: the same document texts (:func:`smec_dist.data.beir.doc_text`), the split's judged
queries in sorted id order, negative grades clipped to 0, and no dropping of a document
whose id equals the query id (``ignore_identical_ids`` stays ``False``, as in our
evaluator; several MTEB registry tasks such as ArguAna set it to ``True``). MTEB scores
with its own pytrec_eval call on a top-1000 run, so nDCG@10 agrees with ours up to the
order of exactly tied scores (trec_eval breaks ties by doc id descending, we by doc id
ascending).

``mteb`` is imported lazily: importing this module (or :mod:`smec_dist.evaluation`) does
not import it; touching :class:`MTEBEncoder` or calling a function does.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import re
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from smec_dist.console import bars_off
from smec_dist.errors import SmecError

logger = logging.getLogger(__name__)

__all__ = ["MTEBEncoder", "check_tasks", "local_retrieval_task", "local_task_name", "model_meta", "run_mteb"]

#: The ``AbsEncoder`` subclass; declared here, built on first access by ``__getattr__`` below
#: (an annotation alone binds nothing, so the lazy lookup still runs).
MTEBEncoder: type

#: Prefix of the task name of a local BEIR folder; keeps it clear of MTEB's registry names.
LOCAL_TASK_PREFIX = "LocalBEIR-"


def _safe_name(text: str) -> str:
    """A name usable as one path component: letters, digits, ``.``, ``_`` and ``-``."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "-", str(text)).strip("-.")
    return cleaned or "model"


def _model_width(model: object) -> int | None:
    for attr in ("full_dim", "dim"):
        value = getattr(model, attr, None)
        if isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value > 0:
            return int(value)
    return None


def model_meta(model: object, dim: int | None = None, name: str | None = None,
               revision: str | None = None):
    """An offline ``mteb.models.ModelMeta`` for a SMEC model evaluated at ``dim``.

    Args:
        model: The wrapped model; ``name``, ``revision`` and ``full_dim``/``dim`` attributes
            are used when present.
        dim: The evaluated width (``None``: full width).
        name: The model name (default: ``model.name``, else its class name).
        revision: The model revision, a results folder name (default: ``model.revision``,
            else ``"local"``).

    Returns:
        ``ModelMeta`` named ``smec/<name>-<dim>`` (``<dim>`` is ``full`` when the width is
        unknown), dot-product scoring, no loader (the model is passed as an instance).
    """
    from mteb.models import ModelMeta

    base = name or getattr(model, "name", None) or type(model).__name__
    width = dim if dim is not None else _model_width(model)
    rev = revision or getattr(model, "revision", None) or "local"
    return ModelMeta(
        loader=None,
        name=f"smec/{_safe_name(base)}-{width if width is not None else 'full'}",
        revision=_safe_name(rev),
        embed_dim=width,
        framework=["PyTorch"],
        # Our evaluator searches by inner product (faiss IndexFlatIP); dot keeps MTEB's
        # ranking identical even for a model whose outputs are not unit length.
        similarity_fn_name="dot",
        use_instructions=False,
        **dict.fromkeys(("release_date", "languages", "n_parameters", "memory_usage_mb", "max_tokens", "license",
                         "open_weights", "public_training_code", "public_training_data", "training_datasets")),
    )


def _batch_texts(batch: dict, document: bool) -> list[str]:
    """The texts of one MTEB batch, documents joined exactly as our evaluator joins them."""
    from smec_dist.data.beir import doc_text

    if document and "body" in batch:
        # MTEB keeps the raw text as ``body`` and the title as ``title`` (absent when the
        # whole corpus has none); rebuild the join with our own doc_text so the embedding
        # inputs are those of our evaluator by construction.
        bodies = list(batch["body"])
        titles = list(batch.get("title") or [""] * len(bodies))
        return [doc_text({"title": t or "", "text": b or ""}) for t, b in zip(titles, bodies)]
    return [str(t) for t in batch["text"]]


@functools.cache
def _encoder_class():
    from mteb.models.abs_encoder import AbsEncoder
    from mteb.types import PromptType

    class MTEBEncoder(AbsEncoder):
        """An MTEB encoder over a model with ``encode(texts, kind, dim=None)``.

        ``PromptType.query`` maps to ``kind="query"``, ``PromptType.document`` and ``None``
        to ``kind="doc"``; ``dim`` is forwarded on every call. The texts of a whole
        DataLoader are collected and encoded in one call, so the model batches them as it
        would for our own evaluator (identical inputs give identical embeddings). MTEB
        encodes a corpus in chunks of 50,000 documents, so beyond that size the model's
        batches differ from ours and embeddings may differ in the last bits.

        Args:
            model: The model (see above).
            dim: The width to evaluate at; ``None`` means full width.
            name: Model name for the results (default ``model.name`` or its class name).
            revision: Model revision for the results folder (default ``model.revision`` or
                ``"local"``).
        """

        def __init__(self, model: Any, dim: int | None = None, name: str | None = None,
                     revision: str | None = None) -> None:
            if not callable(getattr(model, "encode", None)):
                raise SmecError(f"model {type(model).__name__}: has no encode(texts, kind, dim) method")
            if dim is not None and (isinstance(dim, bool) or not isinstance(dim, (int, np.integer)) or dim < 1):
                raise SmecError(f"dim: expected a positive integer or None, got {dim!r}")
            self.model = model
            self.dim = None if dim is None else int(dim)
            self.mteb_model_meta = model_meta(model, self.dim, name=name, revision=revision)

        def encode(self, inputs, *, task_metadata, hf_split: str, hf_subset: str,
                   prompt_type=None, **kwargs: Any) -> np.ndarray:
            kind = "query" if prompt_type == PromptType.query else "doc"
            texts: list[str] = []
            for batch in inputs:
                texts.extend(_batch_texts(batch, document=kind == "doc"))
            emb = np.asarray(self.model.encode(texts, kind, dim=self.dim), dtype=np.float32)
            if emb.ndim != 2 or emb.shape[0] != len(texts):
                raise SmecError(
                    f"model {type(self.model).__name__}: encode returned shape {emb.shape} "
                    f"for {len(texts)} {kind} texts of task {task_metadata.name}"
                )
            if self.dim is not None and emb.shape[1] != self.dim:
                raise SmecError(
                    f"model {type(self.model).__name__}: encode(dim={self.dim}) returned width "
                    f"{emb.shape[1]} on task {task_metadata.name}"
                )
            return emb

    MTEBEncoder.__module__ = __name__
    MTEBEncoder.__qualname__ = "MTEBEncoder"
    return MTEBEncoder


def __getattr__(name: str):
    # PEP 562: build the AbsEncoder subclass (importing mteb) only when it is asked for.
    if name == "MTEBEncoder":
        return _encoder_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# --------------------------------------------------------------------------- local tasks


def _file_digest(paths: Sequence[Path]) -> str:
    h = hashlib.sha256()
    for path in paths:
        h.update(path.name.encode())
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()[:12]


def _check_local_folder(folder: Path, split: str) -> None:
    if not folder.is_dir():
        raise SmecError(f"{folder}: dataset folder not found")
    for needed in (folder / "corpus.jsonl", folder / "queries.jsonl", folder / "qrels" / f"{split}.tsv"):
        if not needed.is_file():
            raise SmecError(f"{needed}: file not found (needed to run split '{split}' of {folder.name} with MTEB)")


def local_task_name(folder: str | Path) -> str:
    """The MTEB task name of a local BEIR folder: ``LocalBEIR-<folder name>``."""
    return LOCAL_TASK_PREFIX + _safe_name(Path(folder).expanduser().resolve().name)


@functools.cache
def _local_task_base():
    from mteb.abstasks.retrieval import AbsTaskRetrieval

    class LocalBEIRRetrieval(AbsTaskRetrieval):
        """A retrieval task read from a local BEIR folder; never touches the hub."""

        ignore_identical_ids = False  # as our evaluator: a doc with the query's id stays
        folder: Path
        split: str

        def load_data(self, num_proc: int | None = None, **kwargs: Any) -> None:
            if self.data_loaded:
                return
            from datasets import Dataset

            from smec_dist.data.beir import load_beir

            ds = load_beir(self.folder, splits=[self.split])
            qrels = {
                q: {d: max(int(s), 0) for d, s in docs.items()}
                for q, docs in ds.qrels[self.split].items() if q in ds.queries
            }
            qids = sorted(qrels)  # the order smec eval encodes them in
            corpus = Dataset.from_dict({
                "id": ds.doc_ids(),
                "title": [doc.get("title", "") for doc in ds.corpus.values()],
                "text": [doc.get("text", "") for doc in ds.corpus.values()],
            })
            queries = Dataset.from_dict({"id": qids, "text": [ds.queries[q] for q in qids]})
            self.dataset = {"default": {self.split: {
                "corpus": corpus, "queries": queries, "relevant_docs": qrels, "top_ranked": None,
            }}}
            self.data_loaded = True

    LocalBEIRRetrieval.__module__ = __name__
    return LocalBEIRRetrieval


def local_retrieval_task(folder: str | Path, split: str = "test", ignore_identical_ids: bool | str = "auto"):
    """An MTEB retrieval task over a local BEIR folder, fully offline.

    Args:
        folder: The folder with ``corpus.jsonl``, ``queries.jsonl`` and ``qrels/<split>.tsv``.
        split: The qrels split to evaluate (the task's only eval split).
        ignore_identical_ids: MTEB's task setting of that name; ``auto`` decides it from the
            data as our evaluator does (:func:`smec_dist.data.identical_ids`), so MTEB and
            our figures follow the same convention (ArguAna-like sets: on; numeric ids: off).

    Returns:
        An ``AbsTaskRetrieval`` instance named ``LocalBEIR-<folder name>``: main score
        ``ndcg_at_10``, language ``eng-Latn``, dataset revision a hash of the three files.
        Its queries are those judged in ``split``; data is read on ``load_data``.

    Raises:
        SmecError: The folder or one of the three files is missing.
    """
    from mteb.abstasks.task_metadata import TaskMetadata

    root = Path(folder).expanduser()
    _check_local_folder(root, split)
    name = local_task_name(root)
    files = [root / "corpus.jsonl", root / "queries.jsonl", root / "qrels" / f"{split}.tsv"]
    metadata = TaskMetadata(
        name=name,
        description=f"Local BEIR folder {root.resolve()} (split {split}), evaluated offline by smec_dist.",
        reference=None,
        dataset={"path": str(root.resolve()), "revision": _file_digest(files)},
        type="Retrieval",
        category="t2t",
        modalities=["text"],
        eval_splits=[split],
        eval_langs=["eng-Latn"],
        main_score="ndcg_at_10",
        bibtex_citation="",
        **dict.fromkeys(("date", "domains", "task_subtypes", "license", "annotations_creators", "dialect",
                         "sample_creation")),  # unknown for a local folder
    )
    # A class per task keeps ``metadata`` a class attribute, as MTEB expects
    # (``unload_data`` drops an instance-level one).
    if ignore_identical_ids == "auto":
        from smec_dist.data import identical_ids, load_beir

        ignore_identical_ids = identical_ids(load_beir(root, splits=[split])).ignore
    cls = type(f"LocalBEIR_{_safe_name(root.resolve().name).replace('-', '_').replace('.', '_')}",
               (_local_task_base(),), {"metadata": metadata, "folder": root, "split": split,
                                       "ignore_identical_ids": bool(ignore_identical_ids)})
    cls.__module__ = __name__
    return cls()


# --------------------------------------------------------------------------- running


def _resolve_task(name: str, data_dir: Path, split: str, ignore_identical_ids: bool | str = "auto"):
    """A local BEIR folder (``data_dir/name`` or a folder path) first, else the MTEB registry."""
    tried = []
    candidates = [data_dir / name]
    given = Path(name).expanduser()
    if given != candidates[0] and (given.is_absolute() or name.startswith((".", "~")) or "/" in name):
        candidates.append(given)
    for folder in candidates:
        tried.append(f"local BEIR folder {folder}")
        if folder.is_dir():
            return local_retrieval_task(folder, split, ignore_identical_ids), True
    import mteb

    tried.append("MTEB task registry")
    try:
        task = mteb.get_task(name)
    except KeyError:
        raise SmecError(f"task '{name}': not found (tried {'; '.join(tried)})") from None
    return task, False


def _load_registry_task(name: str, task, split: str):
    if split not in task.metadata.eval_splits:
        raise SmecError(
            f"task '{name}': split '{split}' is not an eval split of the MTEB task "
            f"(it has {', '.join(task.metadata.eval_splits)})"
        )
    task = task.filter_eval_splits([split])
    try:
        task.load_data()
    except Exception as exc:  # noqa: BLE001 - datasets raises many types offline
        first = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise SmecError(
            f"task '{name}': the MTEB dataset {task.metadata.dataset.get('path')} could not be loaded "
            f"({type(exc).__name__}: {first}); it needs the Hugging Face hub (or its cache), "
            f"or put a local BEIR folder named '{name}' in the data dir"
        ) from None
    return task


def _summarise(result, split: str) -> dict:
    """Every numeric score of one split, averaged over the task's subsets."""
    entries = result.scores.get(split) or []
    if not entries:
        raise SmecError(f"task {result.task_name}: MTEB returned no scores for split '{split}'")
    keys = [k for k, v in entries[0].items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)]
    metrics = {}
    for key in keys:
        values = [float(e[key]) for e in entries if isinstance(e.get(key), (int, float))]
        if values:
            metrics[key] = float(np.mean(values))
    return metrics


def check_tasks(tasks: Sequence[str], data_dir: str | Path, split: str = "test") -> None:
    """Fail (SmecError) on a task name that is neither a local BEIR folder nor an MTEB task,
    before anything is encoded."""
    for task_name in tasks:
        _resolve_task(str(task_name), Path(data_dir).expanduser(), split)


def run_mteb(
    model: Any,
    tasks: Sequence[str],
    data_dir: str | Path,
    output_dir: str | Path,
    dim: int | None = None,
    split: str = "test",
    *,
    name: str | None = None,
    revision: str | None = None,
    batch_size: int = 64,
    ignore_identical_ids: bool | str = "auto",
) -> dict[str, dict]:
    """Evaluates a SMEC model with MTEB and writes MTEB's result files.

    Args:
        model: An object with ``encode(texts, kind, dim=None)`` (see :class:`MTEBEncoder`).
        tasks: Task names. Each is a local BEIR folder ``data_dir/<name>`` (or a folder
            path), run offline, or else an MTEB registry task name (``mteb.get_task``),
            whose data needs the Hugging Face hub or its cache.
        data_dir: Where local BEIR folders live.
        output_dir: MTEB result cache root; results land in
            ``output_dir/results/<model name>/<revision>/<task name>.json`` with a
            ``model_meta.json`` beside them.
        dim: Width to evaluate at (``None``: full width), forwarded to ``model.encode``.
        split: The split to evaluate (a qrels split for local folders).
        name: Model name (see :func:`model_meta`).
        revision: Model revision (see :func:`model_meta`).
        batch_size: MTEB DataLoader batch size (the model still batches its own encoding).
        ignore_identical_ids: for local folders, MTEB's setting of that name (``auto``: from
            the data, as our evaluator decides it); registry tasks keep MTEB's own.

    Returns:
        Per requested name: ``task`` (MTEB task name), ``split``, ``main_score``,
        ``ndcg_at_10``, ``metrics`` (every numeric MTEB score, mean over subsets) and
        ``result_file``.

    Raises:
        SmecError: An unknown task name, a local folder missing a file, or a registry task
            whose data cannot be loaded (no hub).
    """
    if isinstance(tasks, str):
        tasks = [tasks]
    if not tasks:
        raise SmecError("tasks: no task names given")
    data_dir = Path(data_dir).expanduser()
    output_dir = Path(output_dir).expanduser()

    encoder = _encoder_class()(model, dim=dim, name=name, revision=revision)  # checks dim
    resolved = []
    for task_name in tasks:  # resolve every name first, so a typo fails before any encoding
        task, local = _resolve_task(str(task_name), data_dir, split, ignore_identical_ids)
        resolved.append((str(task_name), task, local))

    import mteb

    cache = mteb.ResultCache(cache_path=output_dir)
    out: dict[str, dict] = {}
    for task_name, task, local in resolved:
        with bars_off("datasets"):  # the bars of MTEB's Dataset.map calls
            model_result = _evaluate_one(mteb, encoder, task_name, task, local, split, cache, batch_size)
        if not model_result.task_results:
            raise SmecError(f"task '{task_name}': MTEB produced no result")
        result = model_result.task_results[0]
        metrics = _summarise(result, split)
        out[task_name] = {
            "task": result.task_name,
            "split": split,
            "main_score": metrics.get("main_score", float("nan")),
            "ndcg_at_10": metrics.get("ndcg_at_10", float("nan")),
            "metrics": metrics,
            "result_file": str(cache.get_task_result_path(result.task_name, encoder.mteb_model_meta)),
        }
        logger.info("MTEB %s (%s, dim %s): main score %.4f", result.task_name, split,
                    dim or "full", out[task_name]["main_score"])
    return out


def _evaluate_one(mteb, encoder, task_name: str, task, local: bool, split: str, cache, batch_size: int):
    """Loads one task's data (a SmecError if it cannot be had), runs MTEB on it, frees the data."""
    if local:
        task.load_data()
    else:
        task = _load_registry_task(task_name, task, split)
    try:
        return mteb.evaluate(
            encoder,
            task,
            cache=cache,
            overwrite_strategy="always",  # a retrained model keeps its name: never reuse results
            encode_kwargs={"batch_size": int(batch_size), "show_progress_bar": False},
            show_progress_bar=False,
            co2_tracker=False,
            raise_error=True,
        )
    finally:
        if task.data_loaded:
            task.unload_data()
