"""Per-domain LoRA adapters behind an LRU cache (DEMRL++ AdapterCache), and their training.

One PEFT model holds at most ``capacity`` LoRA adapters at a time, one per task or domain.
Every adapter also lives on disk, under ``store_dir/<domain>/`` in PEFT's own
``save_pretrained`` format (``adapter_config.json`` + ``adapter_model.safetensors``, plus a
sha256 ``manifest.json``), so ``peft.PeftModel.from_pretrained(base, store_dir/<domain>)``
loads it without this package. :meth:`AdapterCache.get` makes a domain's adapter the active
one: a hit when it is loaded, else a miss that loads it from disk (after evicting the least
recently used adapter when all slots are taken) or, for a domain never seen, creates a fresh
LoRA adapter, optionally warms it up for a few steps, and saves it.

:func:`train_adapter` trains the active adapter on (query, positive) text pairs with
in-batch-negative InfoNCE on pooled, L2-normalised embeddings (the project's loss).

References:
    Hu et al., "LoRA: Low-Rank Adaptation of Large Language Models", ICLR 2022.
    van den Oord et al., "Representation Learning with Contrastive Predictive Coding", 2018.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import re
import shutil
import time
import warnings
import zlib
from collections import OrderedDict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from ..backbone import Encoder
from ..errors import SmecError
from ..io import atomic_dir, file_table_problem, read_file_manifest, write_file_manifest
from ..method.losses import info_nce

log = logging.getLogger(__name__)

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")  # what PEFT's save_pretrained writes
MAX_WARMUP_STEPS = 10
#: PEFT adapter names are ``domain_<name>``: a bare name that is a substring of PEFT's
#: ``lora_`` key prefix ("a", "r", "lo") would be mangled when its weights are loaded.
ADAPTER_PREFIX = "domain_"
_DOMAIN_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")

#: warmup(model, domain, steps): train the model's active adapter for ``steps`` steps on
#: that domain's samples.
Warmup = Callable[[torch.nn.Module, str, int], object]


@dataclass
class CacheEvent:
    """One :meth:`AdapterCache.get`.

    Attributes:
        domain: the domain asked for.
        kind: ``hit`` or ``miss``.
        evicted: the domain evicted to make room, or None.
        ms: wall time of the call (for a miss: eviction, then load or create, warmup and save).
        source: ``cache`` (hit), ``disk`` (loaded) or ``new`` (created).
    """

    domain: str
    kind: str
    evicted: str | None
    ms: float
    source: str


def _latency(values: Sequence[float]) -> dict:
    if not values:
        return {"n": 0, "mean": None, "p50": None, "max": None}
    arr = np.asarray(values, dtype=np.float64)
    return {"n": len(values), "mean": float(arr.mean()), "p50": float(np.median(arr)), "max": float(arr.max())}


class AdapterCache:
    """At most ``capacity`` LoRA adapters loaded in a PEFT model, least recently used evicted.

    The adapters the model arrives with (``get_peft_model``'s ``default``) are templates: the
    first is the LoRA config of new adapters, and all are removed from the model at the first
    miss, so the slots hold domains only. Before that first miss the model is the template.

    Args:
        model: a ``peft.PeftModel`` with LoRA adapters.
        capacity: K, the most adapters loaded at once (>= 1).
        store_dir: where each domain's adapter folder lives (created if absent).
        warmup: trains a new adapter, as ``warmup(model, domain, warmup_steps)``, before it is
            first saved; None: a new adapter keeps its fresh LoRA init (B = 0: the base model).
        warmup_steps: steps handed to ``warmup`` (1 to 10).
        lora_config: the config of new adapters; default the model's first adapter's.
        create: allow new adapters; False: a domain without a saved adapter is an error.
        seed: new adapters are initialised from ``seed`` and the domain name (reproducible).
    """

    def __init__(self, model: torch.nn.Module, capacity: int, store_dir: str | os.PathLike,
                 warmup: Warmup | None = None, warmup_steps: int = MAX_WARMUP_STEPS, lora_config=None,
                 create: bool = True, seed: int = 0):
        if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 1:
            raise SmecError(f"adapter cache capacity must be an integer >= 1, got {capacity!r}")
        if not (hasattr(model, "peft_config") and hasattr(model, "load_adapter")):
            raise SmecError(f"adapter cache needs a PEFT model (load_trainable(..., 'lora')), "
                            f"got {type(model).__name__}")
        if warmup is not None and not 1 <= warmup_steps <= MAX_WARMUP_STEPS:
            raise SmecError(f"adapter cache warmup_steps must be 1-{MAX_WARMUP_STEPS}, got {warmup_steps}")
        self.model, self.capacity, self.store_dir = model, capacity, Path(store_dir).expanduser()
        self.warmup, self.warmup_steps, self.create, self.seed = warmup, warmup_steps, create, seed
        self._templates = [n for n in model.peft_config if not n.startswith(ADAPTER_PREFIX)]
        if lora_config is None and self._templates:
            lora_config = model.peft_config[self._templates[0]]
        self.lora_config = copy.deepcopy(lora_config)
        if self.lora_config is not None:
            self.lora_config.inference_mode = False
        try:
            self.store_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise SmecError(f"{self.store_dir}: cannot create the adapter store ({exc.strerror or exc})") from exc
        self._loaded: OrderedDict[str, None] = OrderedDict()  # least recently used first
        self._events: list[CacheEvent] = []
        self._sizes: dict[str, dict] = {}
        self.evictions = 0

    # -- names and folders ----------------------------------------------------------------
    @staticmethod
    def adapter_name(domain: str) -> str:
        """The PEFT adapter name of a domain."""
        return ADAPTER_PREFIX + domain

    def folder(self, domain: str) -> Path:
        """Where a domain's adapter is saved."""
        return self.store_dir / domain

    @staticmethod
    def _check_domain(domain: str) -> None:
        if not isinstance(domain, str) or not _DOMAIN_RE.match(domain):
            raise SmecError(f"adapter domain {domain!r}: use 1-64 letters, digits, '_' or '-' (it names a folder)")

    @property
    def loaded(self) -> list[str]:
        """The loaded domains, least recently used first."""
        return list(self._loaded)

    @property
    def active(self) -> str | None:
        """The domain whose adapter is active (the most recently used), or None."""
        return next(reversed(self._loaded), None)

    @property
    def events(self) -> list[tuple[str, str, str | None]]:
        """(domain, ``hit`` | ``miss``, evicted domain or None) per :meth:`get`, in order."""
        return [(e.domain, e.kind, e.evicted) for e in self._events]

    @property
    def records(self) -> list[CacheEvent]:
        return list(self._events)

    # -- the cache ------------------------------------------------------------------------
    def get(self, domain: str) -> str:
        """Make ``domain``'s adapter the active one (see the class docstring).

        Returns:
            ``hit`` or ``miss``.

        Raises:
            SmecError: a bad domain name, a domain without an adapter when none may be
                created, or a damaged adapter folder (naming the file).
        """
        self._check_domain(domain)
        start = time.perf_counter()
        name = self.adapter_name(domain)
        if domain in self._loaded:
            self._loaded.move_to_end(domain)
            if self.model.active_adapter != name:
                self.model.set_adapter(name, inference_mode=True)
            self._events.append(CacheEvent(domain, "hit", None, (time.perf_counter() - start) * 1e3, "cache"))
            return "hit"
        folder = self.folder(domain)
        on_disk = folder.exists()
        if on_disk:
            check_adapter_folder(folder)  # before evicting: a damaged folder must not cost a slot
        elif not self.create:
            raise SmecError(f"adapter domain '{domain}': no adapter at {folder} and creating new ones is off")
        elif self.lora_config is None:
            raise SmecError(f"adapter domain '{domain}': no adapter at {folder} and no LoRA config to create one "
                            f"(the model has no template adapter; pass lora_config)")
        self._drop_templates()
        evicted = self._evict() if len(self._loaded) >= self.capacity else None
        if on_disk:
            self._load(domain, folder)
        else:
            self._create(domain)
        self._loaded[domain] = None
        self._measure(domain)
        ms = (time.perf_counter() - start) * 1e3
        self._events.append(CacheEvent(domain, "miss", evicted, ms, "disk" if on_disk else "new"))
        log.debug("adapter %s: miss (%s, %.1f ms)%s", domain, "disk" if on_disk else "new", ms,
                  f", evicted {evicted}" if evicted else "")
        return "miss"

    activate = get

    def save(self, domain: str | None = None) -> Path:
        """Write a loaded adapter (default: the active one) to its folder, replacing the old
        copy; call it after training an adapter further, since eviction writes nothing."""
        domain = domain or self.active
        if domain is None or domain not in self._loaded:
            raise SmecError(f"adapter domain {domain!r} is not loaded (loaded: {', '.join(self._loaded) or 'none'})")
        out = save_adapter(self.model, self.adapter_name(domain), self.folder(domain))
        self._measure(domain)
        return out

    def _drop_templates(self) -> None:
        for name in self._templates:
            if name in self.model.peft_config:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # "the active adapter was deleted": intended
                    self.model.delete_adapter(name)
        self._templates = []

    def _evict(self) -> str:
        domain, _ = self._loaded.popitem(last=False)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.model.delete_adapter(self.adapter_name(domain))
        self.evictions += 1
        return domain

    def _load(self, domain: str, folder: Path) -> None:
        name = self.adapter_name(domain)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                result = self.model.load_adapter(str(folder), adapter_name=name, is_trainable=False)
            problem = None
            if result is not None and (result.unexpected_keys or result.missing_keys):
                keys = list(result.unexpected_keys) + list(result.missing_keys)
                problem = (f"{len(keys)} weight(s) do not fit this model (e.g. {keys[0]}): "
                           f"an adapter of another base model?")
        except Exception as exc:  # PEFT, safetensors and torch raise many kinds; all mean "cannot load"
            problem = f"PEFT could not load it ({type(exc).__name__}: {str(exc).strip().splitlines()[0][:200]})"
        if problem:
            if name in self.model.peft_config:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    self.model.delete_adapter(name)  # a half-loaded adapter must not linger
            raise SmecError(f"{folder}: {problem}")
        self.model.set_adapter(name, inference_mode=True)

    def _create(self, domain: str) -> None:
        name = self.adapter_name(domain)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed * 1_000_003 + zlib.crc32(domain.encode()))
            self.model.add_adapter(name, copy.deepcopy(self.lora_config))
        self.model.set_adapter(name, inference_mode=True)
        if self.warmup is not None:
            log.info("adapter %s: new; warmup %d steps", domain, self.warmup_steps)
            self.warmup(self.model, domain, self.warmup_steps)
        save_adapter(self.model, name, self.folder(domain))

    def _measure(self, domain: str) -> None:
        name = self.adapter_name(domain)
        params = [p for n, p in self.model.named_parameters() if name in n.split(".")]
        folder = self.folder(domain)
        self._sizes[domain] = {
            "params": int(sum(p.numel() for p in params)),
            "param_bytes": int(sum(p.numel() * p.element_size() for p in params)),
            "disk_bytes": int(sum((folder / f).stat().st_size for f in ADAPTER_FILES if (folder / f).is_file())),
        }

    # -- instrumentation ------------------------------------------------------------------
    def stats(self) -> dict:
        """Counts, hit rate, latencies (ms) and adapter sizes (bytes), JSON-ready.

        ``miss_ms`` covers every miss; ``load_ms`` the misses served from disk, ``create_ms``
        the new adapters (init, warmup, save).
        """
        hits = sum(e.kind == "hit" for e in self._events)
        misses = len(self._events) - hits
        sizes = list(self._sizes.values())
        return {
            "capacity": self.capacity,
            "loaded": self.loaded,
            "requests": len(self._events),
            "hits": hits,
            "misses": misses,
            "evictions": self.evictions,
            "hit_rate": hits / len(self._events) if self._events else None,
            "miss_ms": _latency([e.ms for e in self._events if e.kind == "miss"]),
            "load_ms": _latency([e.ms for e in self._events if e.source == "disk"]),
            "create_ms": _latency([e.ms for e in self._events if e.source == "new"]),
            "hit_ms": _latency([e.ms for e in self._events if e.kind == "hit"]),
            "adapter_bytes": dict(self._sizes),
            "kb_per_adapter": float(np.mean([s["param_bytes"] for s in sizes]) / 1024) if sizes else None,
            "disk_kb_per_adapter": float(np.mean([s["disk_bytes"] for s in sizes]) / 1024) if sizes else None,
        }

    def report_md(self) -> str:
        """The :meth:`stats` as a small markdown table."""
        return stats_markdown(self.stats())

    # -- checkpointing --------------------------------------------------------------------
    def state_dict(self) -> dict:
        """The LRU order, counters and event log (the weights are the folders on disk)."""
        return {"loaded": self.loaded, "evictions": self.evictions, "sizes": copy.deepcopy(self._sizes),
                "events": [asdict(e) for e in self._events]}

    def load_state_dict(self, state: dict) -> None:
        """Reload the saved LRU set from disk, in its order, and restore the counters."""
        self._drop_templates()
        for domain in list(self._loaded):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                self.model.delete_adapter(self.adapter_name(domain))
        self._loaded.clear()
        for domain in state["loaded"][-self.capacity:]:
            check_adapter_folder(self.folder(domain))
            self._load(domain, self.folder(domain))
            self._loaded[domain] = None
        self.evictions = int(state["evictions"])
        self._sizes = copy.deepcopy(state["sizes"])
        self._events = [CacheEvent(**e) for e in state["events"]]


def stats_markdown(s: dict) -> str:
    """:meth:`AdapterCache.stats` as a small markdown table."""

    def num(x, fmt="{:.1f}"):
        return "-" if x is None else fmt.format(x)

    rows = [
        ("capacity K", str(s["capacity"])),
        ("requests (hits / misses)", f"{s['requests']} ({s['hits']} / {s['misses']})"),
        ("evictions", str(s["evictions"])),
        ("hit rate", num(s["hit_rate"], "{:.1%}")),
        ("miss latency ms (mean / p50 / max)", " / ".join(num(s["miss_ms"][k]) for k in ("mean", "p50", "max"))),
        ("load from disk ms (mean, n)", f"{num(s['load_ms']['mean'])} ({s['load_ms']['n']})"),
        ("create new ms (mean, n)", f"{num(s['create_ms']['mean'])} ({s['create_ms']['n']})"),
        ("KB per adapter (memory / disk)", f"{num(s['kb_per_adapter'])} / {num(s['disk_kb_per_adapter'])}"),
    ]
    return "| adapter cache | value |\n|---|---:|\n" + "".join(f"| {k} | {v} |\n" for k, v in rows)


# ---------------------------------------------------------------------------- on disk


def check_adapter_folder(folder: Path) -> None:
    """Raise a one-line :class:`SmecError` naming the file unless ``folder`` holds an intact
    PEFT LoRA adapter (its manifest's sha256 when there is one, else a readable header)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise SmecError(f"{folder}: not a folder (an adapter folder holds {', '.join(ADAPTER_FILES)})")
    for name in ADAPTER_FILES:
        if not (folder / name).is_file():
            raise SmecError(f"{folder / name}: missing (PEFT's save_pretrained writes {', '.join(ADAPTER_FILES)})")
    cfg_path = folder / ADAPTER_FILES[0]
    try:
        cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SmecError(f"{cfg_path}: not a readable adapter config ({type(exc).__name__}: {exc})") from exc
    if not isinstance(cfg, dict) or cfg.get("peft_type") != "LORA":
        got = cfg.get("peft_type") if isinstance(cfg, dict) else type(cfg).__name__
        raise SmecError(f"{cfg_path}: peft_type {got!r}, expected 'LORA'")
    listed = read_file_manifest(folder)
    if listed is not None:
        problem = file_table_problem(folder, listed)
        if problem:
            raise SmecError(problem)
        return
    weights = folder / ADAPTER_FILES[1]
    try:
        from safetensors import safe_open

        with safe_open(str(weights), framework="pt") as fh:
            if not list(fh.keys()):
                raise ValueError("no tensors")
    except Exception as exc:  # safetensors raises its own Rust error type
        first = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        raise SmecError(f"{weights}: not a readable safetensors file ({first})") from exc


def save_adapter(model: torch.nn.Module, adapter_name: str, folder: Path) -> Path:
    """Save one adapter with PEFT's ``save_pretrained`` into ``folder`` (replaced whole, so a
    reader sees the old folder or the new one, with a sha256 manifest of its files)."""
    folder = Path(folder)
    try:
        with atomic_dir(folder) as tmp:
            model.save_pretrained(str(tmp / "peft"), selected_adapters=[adapter_name], safe_serialization=True)
            staged = tmp / "peft" / adapter_name if adapter_name != "default" else tmp / "peft"
            for path in staged.iterdir():  # PEFT puts a named adapter in a subfolder of its own
                os.replace(path, tmp / path.name)
            shutil.rmtree(tmp / "peft")
            write_file_manifest(tmp, ADAPTER_FILES)
    except OSError as exc:
        raise SmecError(f"{folder}: cannot save the adapter ({exc.strerror or exc})") from exc
    return folder


# ---------------------------------------------------------------------------- training


def _adapter_params(model: torch.nn.Module) -> list[tuple[str, torch.nn.Parameter]]:
    active = model.active_adapter
    params = [(n, p) for n, p in model.named_parameters() if "lora_" in n and active in n.split(".")]
    if not params:
        raise SmecError(f"train_adapter: the active adapter {active!r} has no LoRA parameters")
    return params


def train_adapter(model: torch.nn.Module, tokenizer, pairs: Sequence[tuple[str, str]], steps: int, lr: float,
                  batch_size: int, *, temperature: float = 0.05, max_length: int = 128, pooling: str = "mean",
                  append_eos: bool = False, seed: int = 0, progress: bool = True, desc: str = "train") -> dict:
    """Train the PEFT model's active adapter on (query, positive) pairs.

    Each step draws ``batch_size`` pairs (a seeded permutation, reshuffled each epoch),
    encodes queries and positives in one forward pass (pooled, L2-normalised) and takes
    InfoNCE of each query against every positive of the batch; a positive whose text equals
    the query's own positive, or whose query text equals the query, is masked out rather
    than counted as a negative. Only the active adapter's LoRA weights are trained (AdamW);
    ``requires_grad`` and train/eval mode are restored afterwards.

    Returns:
        ``{"steps", "seconds", "loss_first", "loss_last", "losses"}``.
    """
    if steps < 1 or batch_size < 2:
        raise SmecError(f"train_adapter: steps must be >= 1 and batch_size >= 2, got {steps} and {batch_size}")
    pairs = list(pairs)
    if len(pairs) < batch_size:
        raise SmecError(f"train_adapter: {len(pairs)} training pairs, fewer than batch_size {batch_size}")
    named = _adapter_params(model)
    params = [p for _, p in named]
    flags = {id(p): p.requires_grad for p in model.parameters()}
    for p in params:
        p.requires_grad_(True)
    device = next(iter(params)).device
    encoder = Encoder(model, tokenizer, pooling=pooling, normalize=True, max_length=max_length,
                      append_eos=append_eos, device=str(device))
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(seed)
    order, cursor = torch.randperm(len(pairs), generator=gen), 0
    was_training = model.training
    model.train()
    losses: list[float] = []
    start = time.perf_counter()
    bar = tqdm(range(steps), desc=desc, unit="step", disable=not progress, mininterval=2.0)
    try:
        for _ in bar:
            if cursor + batch_size > len(pairs):
                order, cursor = torch.randperm(len(pairs), generator=gen), 0
            batch = [pairs[i] for i in order[cursor:cursor + batch_size].tolist()]
            cursor += batch_size
            queries, docs = [q for q, _ in batch], [d for _, d in batch]
            emb = encoder.forward(encoder.tokenize(queries + docs))  # (2b, D) one forward for both sides
            q, d = emb[:batch_size], emb[batch_size:]  # (b, D), (b, D)
            keep = torch.tensor([[i == j or (docs[i] != docs[j] and queries[i] != queries[j])
                                  for j in range(batch_size)] for i in range(batch_size)], device=q.device)  # (b, b)
            loss = info_nce(q, d, torch.arange(batch_size, device=q.device), temperature, mask=keep)
            if not torch.isfinite(loss):
                raise SmecError(f"train_adapter: non-finite loss at step {len(losses) + 1} (lr {lr} too high?)")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
            bar.set_postfix(loss=f"{losses[-1]:.3f}", refresh=False)
    finally:
        bar.close()
        opt.zero_grad(set_to_none=True)
        for p in model.parameters():
            p.requires_grad_(flags.get(id(p), False))
        model.train(was_training)
    return {"steps": steps, "seconds": time.perf_counter() - start, "loss_first": losses[0],
            "loss_last": losses[-1], "losses": losses}
