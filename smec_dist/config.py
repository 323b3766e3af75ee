"""Typed configuration: dataclasses, YAML files, command-line overrides.

A config file is YAML with one mapping per section (``data``, ``model``, ``cache``,
``run``, ``train``); ``key=value`` overrides with dotted keys (``train.epochs=5``,
``run.dims=[96,48]``) merge on top. Unknown sections or keys are errors naming the file
and the key, and every value is checked in ``__post_init__``.
"""

from __future__ import annotations

import dataclasses
import math
import os
import types
import typing
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from .console import bars_wanted
from .errors import SmecError
from .io import atomic_write_text

from .method.registry import DEFAULT_METHODS, METHODS

SETTINGS = ("unsupervised-queries", "corpus-only", "supervised")
# keys that are gone, and the one key that decides their value now
REMOVED_KEYS = {
    "train.infonce_weight": "run.supervised_infonce_weight (only the supervised setting has judgments)",
    "e2e.infonce_weight": "run.supervised_infonce_weight (smec train trains the supervised setting)",
}


def _one_of(key: str, value, allowed) -> None:
    if value not in allowed:
        raise SmecError(f"{key}: '{value}' is not one of {', '.join(map(str, allowed))}")


def _positive(key: str, value, zero_ok: bool = False) -> None:
    if value < 0 or (value == 0 and not zero_ok):
        raise SmecError(f"{key}: must be {'>= 0' if zero_ok else '> 0'}, got {value}")


@dataclass
class DataConfig:
    """Where the BEIR dataset comes from and which split is scored."""

    data_dir: str = "../shared/data"
    dataset: str = "scifact"
    eval_split: str = "test"

    def __post_init__(self):
        if env := os.environ.get("SMEC_DATA_DIR"):
            self.data_dir = env if self.data_dir == DataConfig.data_dir else self.data_dir


@dataclass
class ModelConfig:
    """The frozen backbone: an alias (minilm, smollm2-135m), a local folder or a hub id."""

    name: str = "minilm"
    pooling: str | None = None
    max_length: int = 256
    batch_size: int = 64
    dtype: str = "float32"
    device: str = "auto"  # auto: this rank's GPU when CUDA is there, else cpu; or cpu, cuda:0, ...

    def __post_init__(self):
        if self.pooling is not None:
            _one_of("model.pooling", self.pooling, ("mean", "cls", "last"))
        _one_of("model.dtype", self.dtype, ("float32", "bfloat16", "float16"))
        _positive("model.max_length", self.max_length)
        _positive("model.batch_size", self.batch_size)


@dataclass
class CacheConfig:
    """The embedding cache; ``dir`` empty means ``<output_dir>/../cache/<dataset>-<model>``."""

    dir: str = ""
    dtype: str = "float32"
    shard_size: int = 2048

    def __post_init__(self):
        _one_of("cache.dtype", self.dtype, ("float16", "float32"))
        _positive("cache.shard_size", self.shard_size)


@dataclass
class TrainConfig:
    """How a head is trained on cached embeddings (the same objective for SMEC and the
    trained baselines, so the comparison isolates SMEC's parts). Each key's docstring follows
    it; defaults say what they were chosen on."""

    epochs: int = 20
    """Passes over the anchors per phase (an SMRL stage, or a baseline's map)."""
    max_steps_per_phase: int = 0
    """Cap on optimizer steps per phase (0: none)."""
    batch_size: int = 64
    """Anchors per step."""
    lr: float = 2e-3
    """Learning rate of a phase's map (Adam)."""
    lr_schedule: str = "cosine"
    """``cosine`` (to 0 at the end of each phase) or ``constant``."""
    ads_lr: float = 1e-2
    """Learning rate of the ADS importance scores."""
    weight_decay: float = 0.0
    hidden: int = 0
    """Width of a residual MLP beside each linear map (0: linear maps only)."""
    temperature: float = 0.03
    """Softmax temperature of the listwise KL loss in the unsupervised-queries setting (0.03:
    the best of 0.02 / 0.03 / 0.05 for SMEC with unlabelled query anchors on SciFact test
    scores, before validation existed; the MRL-style head and the linear adapter move by less
    than 0.005 between 0.02 and 0.03). The other settings have their own key
    (:func:`setting_loss`)."""
    topk: int = 200
    """Hard samples per anchor (from the S-XBM queue, or an exact search for baselines)."""
    queue_size: int = 65536
    """S-XBM capacity."""
    prefill: bool = True
    """Fill the queue from the corpus before training (the teacher is frozen, so queued vectors
    never go stale)."""
    kl_weight: float = 1.0
    """Weight of the listwise KL between teacher and student similarities."""
    high_weight: float = 0.0
    """Weight of a similarity loss at d_{s-1} on a stage's transformed input (a regulariser that
    keeps the stage's map near similarity-preserving; off by default). The paper's L(d_{s-1})
    itself is constant here: the d_{s-1} output belongs to the frozen earlier stage (the
    backbone, for stage 1)."""
    lookahead: int = -1
    """Later stages whose dims each SMRL stage also scores on its leading dims (-1 all, 0 off)."""
    lookahead_weight: float = 0.5
    pairwise_weight: float = 0.0
    """Weight of Matryoshka-Adaptor's pairwise similarity MSE (off by default)."""
    infonce_temperature: float = 0.05
    """Temperature of InfoNCE on judged pairs (the supervised setting and ``smec train``)."""
    ads_tau: float = 0.1
    """Temperature of ADS's relaxed top-k."""
    ads_noise: float = 1.0
    """Scale of ADS's Gumbel noise at a stage's start (annealed to 0 by ``ads_anneal``)."""
    ads_anneal: float = 0.3
    """Fraction of a stage after which the selection is fixed (the rest of the stage trains the
    map for that selection)."""
    pca_on_anchors: bool = True
    """A phase's PCA start is fitted on the corpus and the anchors (else the corpus alone)."""
    anchor_copies: int = 0
    """Adapter mode's anchor augmentation: noisy copies of every anchor (Gaussian noise of norm
    about ``anchor_noise`` on its teacher vector, then L2-normalised; drawn once per run from
    ``seed``), trained as extra anchors with their own teacher neighbourhoods. Off by default;
    it multiplies the steps per phase by ``1 + anchor_copies``. For corpora with few
    unlabelled queries (see docs/method.md)."""
    anchor_noise: float = 0.5
    seed: int = 0
    """Seeds the anchor order, the queue stream, ADS's noise and the heads."""
    curriculum_gamma: float = 1.0
    """Curriculum MRL's schedule strength: the target dim of a batch is drawn with
    p(d) ∝ (d / d_max) ** (gamma (2 t - 1)) at progress t (0 = uniform)."""
    consistency_weight: float = 0.1
    """Curriculum MRL's cross-dimension consistency weight λ; dim d gets λ d_min / d."""
    nonfinite: str = "stop"
    """On a NaN/inf loss: ``stop`` (a one-line error naming stage, step and batch; nothing of the
    step applied, checkpoints kept) or ``skip`` the step (not under DeepSpeed)."""
    max_skipped: int = 10
    """Skip mode: more skipped steps than this stop the run."""

    def __post_init__(self):
        for key in ("epochs", "batch_size", "topk", "queue_size"):
            _positive(f"train.{key}", getattr(self, key))
        for key in ("lr", "temperature", "infonce_temperature", "ads_tau", "ads_anneal"):
            _positive(f"train.{key}", getattr(self, key))
        for key in ("max_steps_per_phase", "ads_lr", "weight_decay", "hidden", "kl_weight", "high_weight",
                    "pairwise_weight", "ads_noise", "curriculum_gamma", "consistency_weight",
                    "anchor_copies", "anchor_noise"):
            _positive(f"train.{key}", getattr(self, key), zero_ok=True)
        _one_of("train.lr_schedule", self.lr_schedule, ("constant", "cosine"))
        _one_of("train.nonfinite", self.nonfinite, ("stop", "skip"))
        _positive("train.max_skipped", self.max_skipped, zero_ok=True)
        if self.lookahead < -1:
            raise SmecError(f"train.lookahead: {self.lookahead} must be -1 (all later stages), 0 (off) or a count")


@dataclass
class RunConfig:
    """What the main job computes.

    Attributes:
        dims: compressed widths, strictly decreasing, each below the backbone's width.
        settings: training settings reported side by side: ``unsupervised-queries`` (corpus
            plus unlabelled query texts chosen by ``anchors``), ``corpus-only`` (documents are
            the anchors), ``supervised`` (queries of ``supervised_split`` with their judgments).
        anchors: which query texts serve as unlabelled anchors: ``split:<name>``,
            ``file:<path>`` or ``holdout:<fraction>`` (a part of the eval split's queries,
            which are then left out of the scores).
        supervised_infonce_weight: weight of InfoNCE on the judged pairs in the supervised
            setting, in adapter mode and in ``smec train``.
        supervised_temperature: the listwise-KL temperature of the supervised setting, in
            adapter mode and in ``smec train``. With judgments the KL term holds a head near the teacher
            while InfoNCE pulls it to the judgments, so a softer target lets it adapt more.
            0.05 was chosen on held-out judgments (``run.validation=holdout:0.2`` on SciFact,
            162 train queries, 3 seeds): against 0.03 it lifted every trained method at every
            dim there, SMEC by 0.009 / 0.028 / 0.016 / 0.018 at 192 / 96 / 48 / 24.
        corpus_only_temperature: the listwise-KL temperature of the corpus-only setting.
            Document anchors give document-to-document neighbourhoods, which only stand in for
            the query-to-document ones retrieval reads; a softer target (the whole top of the
            list, not its first few) keeps what transfers (0.05, chosen on SciFact test scores
            before validation existed; an STS dataset, where sentence-to-sentence
            neighbourhoods are what is scored, sets its own: configs/stsb-minilm.yaml).
        validation: ``holdout:<fraction>`` holds that part of ``supervised_split``'s judged
            queries out of every setting's training (anchors and judged pairs) and scores every
            method and dim on them too (``validation`` in results.json, a table in report.md):
            choose settings such as ``supervised_temperature`` there, not on the test scores.
            ``""`` (the default) holds nothing out.
        max_anchors: a random subset of at most this many anchors per setting (0 = all).
        seeds: training seeds of the trained methods; metrics are averaged over them (with
            their standard deviation), and the first seed's heads are exported.
        k_values: the cut-offs of the metric suite (nDCG, MRR, Recall, MAP, P at each k).
    """

    output_dir: str = "runs/scifact-minilm"
    """The run's folder (a name: never the current folder). It must not hold another run's
    results unless ``overwrite``; a run writes beside it and swaps its folder in at the end."""
    overwrite: bool = False
    """Replace the results of a run already in ``output_dir`` (``--overwrite``)."""
    dims: list[int] = field(default_factory=lambda: [192, 96, 48, 24])
    settings: list[str] = field(default_factory=lambda: list(SETTINGS))
    methods: list[str] = field(default_factory=lambda: list(DEFAULT_METHODS))
    anchors: str = "split:train"
    supervised_split: str = "train"
    supervised_infonce_weight: float = 1.0
    corpus_only_temperature: float = 0.05
    supervised_temperature: float = 0.05
    validation: str = ""
    max_anchors: int = 1000
    seeds: list[int] = field(default_factory=lambda: [0])
    search_k: int = 100
    bm25_stemmer: str = "none"
    """BM25's stemmer: ``none`` or ``english`` (PyStemmer's Snowball); recorded in results.json.
    ``none`` is what every BM25 figure of docs/results.md was measured with."""
    k_values: list[int] = field(default_factory=lambda: [10, 100])
    progress: bool | None = None
    """Progress bars: ``true``, ``false``, or ``null`` (the default): only when stderr is a
    terminal, so logs and CI output get none (``smec -q`` turns them off)."""

    def show_progress(self) -> bool:
        """Whether this run draws progress bars (see ``progress``)."""
        return bars_wanted(self.progress)

    def __post_init__(self):
        if not self.output_dir.strip() or Path(self.output_dir).expanduser().resolve() == Path.cwd().resolve():
            raise SmecError(f"run.output_dir: {self.output_dir!r} is not a run folder: name one (a run never "
                            f"writes its results into the current folder)")
        if not self.dims:
            raise SmecError("run.dims: at least one dim is needed")
        for d in self.dims:
            if not isinstance(d, int) or d <= 0:
                raise SmecError(f"run.dims: {d!r} is not a positive integer")
        if any(a <= b for a, b in zip(self.dims, self.dims[1:])):
            raise SmecError(f"run.dims: {self.dims} must be strictly decreasing")
        for s in self.settings:
            _one_of("run.settings", s, SETTINGS)
        for m in self.methods:
            _one_of("run.methods", m, tuple(METHODS))
        _positive("run.max_anchors", self.max_anchors, zero_ok=True)
        _positive("run.supervised_infonce_weight", self.supervised_infonce_weight, zero_ok=True)
        _positive("run.corpus_only_temperature", self.corpus_only_temperature)
        _positive("run.supervised_temperature", self.supervised_temperature)
        self.validation_fraction()  # a malformed spec is an error now, not when the job starts
        if not self.seeds:
            raise SmecError("run.seeds: at least one seed is needed")
        _positive("run.search_k", self.search_k)
        _one_of("run.bm25_stemmer", self.bm25_stemmer, ("none", "english"))
        if not self.k_values or any(not isinstance(k, int) or k <= 0 for k in self.k_values):
            raise SmecError(f"run.k_values: {self.k_values} must be positive integers")
        if max(self.k_values) > self.search_k:
            raise SmecError(f"run.k_values: {max(self.k_values)} is above run.search_k={self.search_k} "
                            f"(the search keeps only that many documents per query)")

    def validation_fraction(self) -> float:
        """The held-out fraction of ``run.validation`` (0.0 when off)."""
        if not self.validation:
            return 0.0
        kind, _, value = self.validation.partition(":")
        try:
            fraction = float(value) if kind.strip() == "holdout" else float("nan")
        except ValueError:
            fraction = float("nan")
        if not 0.0 < fraction < 1.0:
            raise SmecError(f"run.validation: {self.validation!r} is not valid: use 'holdout:<fraction in (0, 1)>' "
                            f"or '' (none)")
        return fraction


BACKBONE_MODES = ("frozen", "full", "lora", "qlora")


@dataclass
class E2EConfig:
    """End-to-end mode (``smec train``): the backbone trains jointly with the SMEC head.

    The head's own settings (lr, ADS, top-k, queue size, loss weights) come from ``train``;
    the compressed widths from ``run.dims``; the backbone and its sequence length from
    ``model``.

    Attributes:
        backbone: ``frozen``, ``full`` fine-tuning, ``lora`` (PEFT) or ``qlora`` (4-bit NF4
            base weights + LoRA; needs a CUDA GPU and bitsandbytes).
        lora_targets: module names LoRA wraps, or ``all-linear``.
        precision: ``auto`` (bf16 on GPU, fp32 on CPU), ``bf16`` or ``fp32``.
        backbone_lr / warmup_steps: the backbone's learning rate (linear warmup, then cosine
            over all stages); the head keeps ``train.lr`` per stage.
        per_device_batch: (query, positive) pairs per rank per micro-step; the global batch
            is ``per_device_batch * grad_accum * world_size``.
        steps_per_stage: optimizer steps per SMRL stage.
        split: the qrels split whose judged pairs are trained on.
        query_instruction / doc_instruction: prefixes put before query / document texts
            (instruction-tuned decoder LLMs).
        deepspeed: a DeepSpeed JSON (``ds_configs/zero3.json``), or empty: the launcher's
            (``accelerate launch --use_deepspeed``), else plain DDP.
        checkpoint_every: optimizer steps between checkpoints (0: stage ends only).
        keep_checkpoints: complete checkpoints kept (older ones are deleted).
        collective_timeout_s: seconds a collective waits for a dead or hung rank before the
            others fail with a timeout (0: the backend's default).
        resume: ``""`` (start fresh), ``auto`` (the newest complete checkpoint under
            ``<run.output_dir>/checkpoints``, if any) or a checkpoint folder.
        full_weight: weight of the full-width loss on the backbone's own embeddings.

    The loss at every width is the supervised setting's (:func:`setting_loss`): InfoNCE over
    in-batch + memory negatives weighted by ``run.supervised_infonce_weight``, listwise KL at
    ``run.supervised_temperature``.
    """

    backbone: str = "lora"
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.0
    lora_targets: list[str] = field(default_factory=lambda: ["all-linear"])
    gradient_checkpointing: bool = False
    precision: str = "auto"
    backbone_lr: float = 1e-4
    warmup_steps: int = 0
    max_grad_norm: float = 1.0
    per_device_batch: int = 8
    grad_accum: int = 1
    steps_per_stage: int = 100
    split: str = "train"
    query_instruction: str = ""
    doc_instruction: str = ""
    deepspeed: str = ""
    checkpoint_every: int = 50
    keep_checkpoints: int = 2
    collective_timeout_s: int = 1800  # a rank dead or hung this long makes the others fail, not wait for ever
    resume: str = ""
    full_weight: float = 1.0
    basis_docs: int = 2048

    def __post_init__(self):
        _one_of("e2e.backbone", self.backbone, BACKBONE_MODES)
        _one_of("e2e.precision", self.precision, ("auto", "bf16", "fp32"))
        for key in ("lora_r", "lora_alpha", "per_device_batch", "grad_accum", "steps_per_stage",
                    "keep_checkpoints", "basis_docs"):
            _positive(f"e2e.{key}", getattr(self, key))
        for key in ("lora_dropout", "backbone_lr", "warmup_steps", "max_grad_norm", "checkpoint_every",
                    "collective_timeout_s",
                    "full_weight"):
            _positive(f"e2e.{key}", getattr(self, key), zero_ok=True)
        if not self.lora_targets:
            raise SmecError("e2e.lora_targets: at least one module name (or all-linear) is needed")


@dataclass
class TrackConfig:
    """Experiment tracking (main process only).

    Attributes:
        backend: ``wandb``, ``tensorboard`` or ``none`` (the switch that turns it fully off).
        mode: W&B mode: ``auto`` (online with WANDB_API_KEY, else WANDB_MODE, else offline under
            ``<run.output_dir>/wandb``), ``offline``, ``online`` or ``disabled``.
    """

    backend: str = "wandb"
    project: str = "smec-dist"
    name: str = ""
    mode: str = "auto"

    def __post_init__(self):
        _one_of("track.backend", self.backend, ("wandb", "tensorboard", "none"))
        _one_of("track.mode", self.mode, ("auto", "offline", "online", "disabled"))


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)
    run: RunConfig = field(default_factory=RunConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    e2e: E2EConfig = field(default_factory=E2EConfig)
    track: TrackConfig = field(default_factory=TrackConfig)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class LossConfig:
    """The loss one training setting trains with, as decided by :func:`setting_loss`.

    Attributes:
        temperature: softmax temperature of the listwise KL between teacher and student.
        infonce_weight: weight of InfoNCE on judged pairs (0 without judgments).
        kl_weight / pairwise_weight / infonce_temperature: ``train.*``, the same in every
            setting.
    """

    temperature: float
    infonce_weight: float
    kl_weight: float
    pairwise_weight: float
    infonce_temperature: float


def setting_loss(cfg: Config, setting: str) -> LossConfig:
    """The one place a setting's KL temperature and InfoNCE weight are decided.

    Each value comes from exactly one key:

    ================================  ==============================  ================================
    setting                           temperature                     InfoNCE weight
    ================================  ==============================  ================================
    ``unsupervised-queries``          ``train.temperature``           0 (no judgments)
    ``corpus-only``                   ``run.corpus_only_temperature`` 0 (no judgments)
    ``supervised`` (and ``smec        ``run.supervised_temperature``  ``run.supervised_infonce_weight``
    train``, which trains on judged
    pairs)
    ================================  ==============================  ================================

    Jobs record the result per setting (``meta.loss`` in results.json, ``resolved.loss`` in
    the run's config.yaml).
    """
    _one_of("setting", setting, SETTINGS)
    temperature, infonce = {
        "unsupervised-queries": (cfg.train.temperature, 0.0),
        "corpus-only": (cfg.run.corpus_only_temperature, 0.0),
        "supervised": (cfg.run.supervised_temperature, cfg.run.supervised_infonce_weight),
    }[setting]
    return train_loss(cfg.train, temperature, infonce)


def train_loss(train: TrainConfig, temperature: float | None = None, infonce_weight: float = 0.0) -> LossConfig:
    """A loss from ``train.*`` (``train.temperature`` unless ``temperature`` is given): what a
    head trained outside a job (a test, a benchmark, the Python API) trains with by default."""
    return LossConfig(temperature=train.temperature if temperature is None else temperature,
                      infonce_weight=infonce_weight, kl_weight=train.kl_weight,
                      pairwise_weight=train.pairwise_weight, infonce_temperature=train.infonce_temperature)


def _coerce(key: str, value: Any, typ) -> Any:
    """Check a YAML value against a dataclass field type (int accepted where float is)."""
    origin = typing.get_origin(typ)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(typ)
        if value is None and type(None) in args:
            return None
        return _coerce(key, value, next(a for a in args if a is not type(None)))
    if origin is list:
        if not isinstance(value, list):
            raise SmecError(f"{key}: expected a list, got {value!r}")
        (inner,) = typing.get_args(typ)
        return [_coerce(f"{key}[{i}]", v, inner) for i, v in enumerate(value)]
    if typ is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if typ is float and isinstance(value, str):
        try:  # YAML 1.1 reads 1e-4 (no dot) as a string
            value = float(value)
        except ValueError:
            pass
    if typ is float and isinstance(value, float) and not math.isfinite(value):
        raise SmecError(f"{key}: must be a finite number, got {value}")
    if typ is bool and not isinstance(value, bool):
        raise SmecError(f"{key}: expected true or false, got {value!r}")
    if typ in (int, float, str) and (not isinstance(value, typ) or isinstance(value, bool)):
        raise SmecError(f"{key}: expected {typ.__name__}, got {value!r}")
    return value


def _build(cls, values: dict, prefix: str, source: str):
    hints = typing.get_type_hints(cls)
    known = {f.name for f in fields(cls)}
    for key in values:
        if f"{prefix}{key}" in REMOVED_KEYS:
            raise SmecError(f"{source}: config key '{prefix}{key}' was removed: its value is now decided by "
                            f"{REMOVED_KEYS[prefix + key]}")
        if key not in known:
            raise SmecError(f"{source}: unknown config key '{prefix}{key}' (allowed: {', '.join(sorted(known))})")
    kwargs = {}
    for key, value in values.items():
        typ = hints[key]
        if dataclasses.is_dataclass(typ):
            if not isinstance(value, dict):
                raise SmecError(f"{source}: '{prefix}{key}' must be a mapping of keys")
            kwargs[key] = _build(typ, value, f"{prefix}{key}.", source)
        else:
            kwargs[key] = _coerce(f"{source}: {prefix}{key}", value, typ)
    try:
        return cls(**kwargs)
    except SmecError as exc:
        if source == "defaults" or str(exc).startswith(source):
            raise
        raise SmecError(f"{source}: {exc}") from exc


def parse_overrides(items: list[str]) -> dict:
    """``["train.epochs=5", "run.dims=[96,48]"]`` -> nested dict (values parsed as YAML)."""
    out: dict = {}
    for item in items:
        if "=" not in item:
            raise SmecError(f"override '{item}' is not of the form section.key=value")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError as exc:
            raise SmecError(f"override '{item}': value is not valid YAML ({exc.problem})") from exc
        node = out
        parts = key.strip().split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise SmecError(f"override '{item}' conflicts with another override")
        node[parts[-1]] = value
    return out


def _merge(base: dict, top: dict) -> dict:
    out = dict(base)
    for k, v in top.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Defaults, then the YAML file, then the overrides; every key checked."""
    values: dict = {}
    source = "defaults"
    if path is not None:
        path = Path(path)
        source = str(path)
        if not path.exists():
            raise SmecError(f"{path}: config file not found")
        try:
            raw = path.read_bytes()
        except OSError as exc:
            raise SmecError(f"{path}: cannot read the config file ({exc.strerror or exc})") from exc
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            line = raw.count(b"\n", 0, exc.start) + 1
            raise SmecError(f"{path}:{line}: not valid UTF-8 (byte {raw[exc.start]:#04x})") from exc
        try:
            values = yaml.safe_load(text) or {}
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f":{mark.line + 1}" if mark else ""
            raise SmecError(f"{path}{where}: not valid YAML ({getattr(exc, 'problem', exc)})") from exc
        if not isinstance(values, dict):
            raise SmecError(f"{path}: top level must be a mapping of sections")
        if not isinstance(values.pop(RESOLVED, {}), dict):
            raise SmecError(f"{path}: '{RESOLVED}' must be a mapping (a run writes it; it is not read back)")
    cfg = _build(Config, values, "", source)
    if overrides:
        cfg = _build(Config, _merge(cfg.to_dict(), parse_overrides(overrides)), "", "command line")
    return cfg


RESOLVED = "resolved"
"""The section of a run's config.yaml that records values the run derived from the keys (each
setting's loss); :func:`load_config` skips it, so the file loads back as the config it was."""


def dump_config(cfg: Config, path: str | Path, resolved: dict | None = None) -> None:
    """Save the config next to a run's outputs (reloadable with :func:`load_config`), with the
    values the run derived from it under ``resolved``."""
    values = cfg.to_dict()
    if resolved:
        values[RESOLVED] = resolved
    atomic_write_text(path, yaml.safe_dump(values, sort_keys=False))


def resolved_losses(cfg: Config, settings) -> dict:
    """``{setting: LossConfig as a dict}``: what results.json and config.yaml record."""
    return {s: asdict(setting_loss(cfg, s)) for s in settings}
