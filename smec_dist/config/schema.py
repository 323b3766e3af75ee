"""The config's sections: typed dataclasses, each key documented by the string after it and
checked in ``__post_init__`` (the error names the key and what is allowed)."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..console import bars_wanted
from ..errors import SmecError
from ..method.registry import DEFAULT_METHODS, METHODS

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
    """The folder holding the datasets by name (``$SMEC_DATA_DIR`` when set); a missing dataset
    is downloaded there when a network exists."""
    dataset: str = "scifact"
    """A dataset name under ``data_dir``, or a folder (BEIR layout, or an STS-B-style folder of ``<split>.tsv``)."""
    eval_split: str = "test"
    """The qrels split that is scored."""
    ignore_identical_ids: bool | str = "auto"
    """Drop the document whose id is the query's from every ranking and every anchor's samples,
    as BEIR and MTEB do on sets whose queries are documents (ArguAna, Quora): ``true``,
    ``false``, or ``auto`` (on when at least half of the queries are documents under their own
    id with the same text; off on numeric-id sets such as Cranfield, where query "1" and
    document "1" are unrelated). The decision is recorded in results.json."""

    def __post_init__(self):
        if env := os.environ.get("SMEC_DATA_DIR"):
            self.data_dir = env if self.data_dir == DataConfig.data_dir else self.data_dir
        if isinstance(self.ignore_identical_ids, str) and self.ignore_identical_ids != "auto":
            raise SmecError(f"data.ignore_identical_ids: '{self.ignore_identical_ids}' is not one of auto, true, false")


@dataclass
class ModelConfig:
    """The frozen backbone: an alias (minilm, smollm2-135m), a local folder or a hub id."""

    name: str = "minilm"
    """The backbone: an alias (``minilm``, ``mpnet``, ``smollm2-135m``, ``tiny-qwen2``), a local folder or a hub id."""
    pooling: str | None = None
    """``mean``, ``cls`` or ``last``; ``null``: the alias's (mean for encoders, last token for decoders)."""
    max_length: int = 256
    """Tokens per text (longer texts are cut)."""
    batch_size: int = 64
    """Texts per encoder batch."""
    dtype: str = "float32"
    """The dtype the backbone runs in: ``float32``, ``bfloat16`` or ``float16`` (part of the cache key)."""
    device: str = "auto"
    """``auto``: this rank's GPU when CUDA is there, else the CPU; or ``cpu``, ``cuda:0``, ..."""

    def __post_init__(self):
        if self.pooling is not None:
            _one_of("model.pooling", self.pooling, ("mean", "cls", "last"))
        _one_of("model.dtype", self.dtype, ("float32", "bfloat16", "float16"))
        _positive("model.max_length", self.max_length)
        _positive("model.batch_size", self.batch_size)


@dataclass
class CacheConfig:
    """The embedding cache (content-addressed: see smec_dist.recipes.encode)."""

    dir: str = ""
    """The cache folder itself; empty: ``<root>/<dataset>-<model>-<dtype>-<key>``."""
    root: str = ""
    """Where default cache folders go; empty: ``<run.output_dir>/../cache``."""
    dtype: str = "float32"
    """The stored precision of the embeddings: ``float32`` or ``float16`` (half the disk)."""
    shard_size: int = 2048
    """Items per shard: the unit of resumption and of the split over ranks."""

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
    """Adam weight decay of the head."""
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
    """Weight of each lookahead term."""
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
    """Norm of the noise of each anchor copy (``anchor_copies``)."""
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
    """Methods computed (the registry's names: full, bm25, truncation, pca, single, mrl, cmrl, linear, smec)."""
    anchors: str = "split:train"
    supervised_split: str = "train"
    """The qrels split whose judgments the supervised setting trains on (never the eval split)."""
    supervised_infonce_weight: float = 1.0
    corpus_only_temperature: float = 0.05
    supervised_temperature: float = 0.05
    validation: str = ""
    doc_anchors: int = 0
    """Documents added to the unlabelled query texts as anchors in the unsupervised-queries
    setting (0: none, -1: every document; a seeded draw), each never its own sample."""
    max_anchors: int = 1000
    seeds: list[int] = field(default_factory=lambda: [0])
    search_k: int = 100
    """Documents retrieved per query (exact search) before the metrics."""
    select: str = ""
    """``validation``: pick, per dim, the method and setting with the best validation nDCG@10
    and export them together as ``models/best.safetensors`` (needs ``run.validation``);
    ``""``: no pick."""
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
        if self.doc_anchors < -1:
            raise SmecError(f"run.doc_anchors: {self.doc_anchors} must be -1 (every document), 0 (none) or a count")
        _positive("run.supervised_infonce_weight", self.supervised_infonce_weight, zero_ok=True)
        _positive("run.corpus_only_temperature", self.corpus_only_temperature)
        _positive("run.supervised_temperature", self.supervised_temperature)
        self.validation_fraction()  # a malformed spec is an error now, not when the job starts
        if not self.seeds:
            raise SmecError("run.seeds: at least one seed is needed")
        _positive("run.search_k", self.search_k)
        _one_of("run.bm25_stemmer", self.bm25_stemmer, ("none", "english"))
        _one_of("run.select", self.select, ("", "validation"))
        if self.select and not self.validation:
            raise SmecError("run.select: 'validation' chooses on held-out queries: set run.validation too "
                            "(e.g. run.validation=holdout:0.2)")
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
    """LoRA rank."""
    lora_alpha: int = 32
    """LoRA scaling alpha."""
    lora_dropout: float = 0.0
    """Dropout on the LoRA path."""
    lora_targets: list[str] = field(default_factory=lambda: ["all-linear"])
    gradient_checkpointing: bool = False
    """Recompute every layer's activations in the backward pass (memory for time)."""
    precision: str = "auto"
    backbone_lr: float = 1e-4
    warmup_steps: int = 0
    max_grad_norm: float = 1.0
    """Gradient clipping of the backbone (0: none; DeepSpeed: its gradient_clipping)."""
    per_device_batch: int = 8
    grad_accum: int = 1
    """Micro-steps per optimizer step."""
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
    """Documents (and as many training queries) encoded for each stage's PCA start."""

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
    """The W&B project."""
    name: str = ""
    """The run's name (default: the run folder's name)."""
    mode: str = "auto"

    def __post_init__(self):
        _one_of("track.backend", self.backend, ("wandb", "tensorboard", "none"))
        _one_of("track.mode", self.mode, ("auto", "offline", "online", "disabled"))


@dataclass
class SuiteConfig:
    """``smec suite``: the adapter job over several datasets (smec_dist.recipes.suite)."""

    datasets: list[str] = field(default_factory=list)
    """Dataset names under ``data.data_dir`` (or folders); an STS folder runs the STS job."""
    validation: str = "holdout:0.2"
    """``run.validation`` of each retrieval set: a held-out part of its train judgments, or of
    its anchors where it has a test split only (``""``: none)."""
    anchor_holdout: float = 0.5
    """For a set with a test split only: the part of its test queries that are unlabelled
    anchors (the rest is scored)."""

    def __post_init__(self):
        if not 0.0 < self.anchor_holdout < 1.0:
            raise SmecError(f"suite.anchor_holdout: {self.anchor_holdout} must be in (0, 1)")


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)
    run: RunConfig = field(default_factory=RunConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    e2e: E2EConfig = field(default_factory=E2EConfig)
    track: TrackConfig = field(default_factory=TrackConfig)
    suite: SuiteConfig = field(default_factory=SuiteConfig)

    def to_dict(self) -> dict:
        return asdict(self)
