"""``smec plan``: per-GPU memory of training a SMEC job on an LLM backbone, before renting GPUs.

This module holds the setup (:class:`PlanSpec`), the model inspection (:func:`inspect_model`),
the memory arithmetic and :func:`make_plan`; the comparison with DeepSpeed's estimators, the
printed table and JSON, and reading the settings from a ``smec train`` config are
:mod:`smec_dist.plan_report`.

Parameter counts come from the real model: the backbone is built from its config on the
``meta`` device (shapes, no weights) with ``AutoModel`` (the base model without an LM head:
embeddings are pooled hidden states), and for LoRA a real PEFT ``LoraConfig`` is applied to
it, so the trainable count is what PEFT would train.

Bytes per parameter (mixed precision, bf16 or fp16 weights, Adam):

    =====================  ======  =====================================================
    state                  bytes   sharded over the N = gpus x nodes ranks by
    =====================  ======  =====================================================
    frozen weights         2       ZeRO-3 (QLoRA: NF4 linear weights, ~0.516 B)
    trainable weights      2       ZeRO-3
    gradients              2       ZeRO-2 and 3 (ZeRO-0/1 hold the full bf16 gradient)
    fp32 gradient copy     4       ZeRO-1, 2, 3; made only for the optimizer step
    fp32 master weights    4       ZeRO-1, 2, 3
    Adam m and v (fp32)    8       ZeRO-1, 2, 3
    =====================  ======  =====================================================

That is the 16 bytes per parameter of Rajbhandari et al. held through the step, plus the fp32
copy of the reduced gradient partition that DeepSpeed's ZeRO optimizers make before Adam runs
(``stage_1_and_2.py``: ``flat_grad_partition.to(fp32)``; ``stage3.py``:
``_prepare_fp32_grad_for_sub_group``, one sub-group of at most ``sub_group_size`` = 1e9
parameters at a time). ZeRO-3 also gathers each module's parameters before using it; like
DeepSpeed's estimator we allow twice the 16-bit copy of the largest module (the one in use and
the one prefetched). With ``--offload`` the optimizer states and the fp32 gradients (ZeRO-1/2),
and under ZeRO-3 the parameters and gradients too, live in CPU RAM.

The per-GPU total adds activations, the SMEC head and the S-XBM queue (replicated on every
rank). The fp32 gradient copy exists only during the optimizer step, after backward has freed
the activations, so the total counts ``max(activations, fp32 gradient copy)``, not both.

Not included: the CUDA context and NCCL buffers (about 1-3 GiB per GPU), ZeRO's communication
buckets, allocator fragmentation and the SMEC head's own activations.

References:
    Rajbhandari et al., "ZeRO: Memory Optimizations Toward Training Trillion Parameter
    Models", SC 2020.
    Korthikanti et al., "Reducing Activation Recomputation in Large Transformer Models",
    2022 (arXiv:2205.05198), section 4.1.
    Hu et al., "LoRA: Low-Rank Adaptation of Large Language Models", ICLR 2022.
    Dettmers et al., "QLoRA: Efficient Finetuning of Quantized LLMs", NeurIPS 2023.
    DeepSpeed ``estimate_zero2_model_states_mem_needs`` and
    ``estimate_zero3_model_states_mem_needs`` (``deepspeed/runtime/zero``).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path

from .errors import SmecError

GIB = 2**30
MODES = ("frozen", "full", "lora", "qlora")
PRECISIONS = ("bf16", "fp16", "fp32")

# Built-in backbones: config class name and the fields that matter for memory (the published
# configs; anything not given keeps the transformers default, which does not change shapes).
BUILTIN_MODELS: dict[str, tuple[str, dict]] = {
    "qwen2-7b": ("Qwen2Config", dict(
        hidden_size=3584, num_hidden_layers=28, num_attention_heads=28, num_key_value_heads=4,
        intermediate_size=18944, vocab_size=152064, tie_word_embeddings=False,
        max_position_embeddings=32768, rope_theta=1e6)),
    "llama3-8b": ("LlamaConfig", dict(
        hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
        intermediate_size=14336, vocab_size=128256, tie_word_embeddings=False,
        max_position_embeddings=8192, rope_theta=5e5)),
    "smollm2-135m": ("LlamaConfig", dict(
        hidden_size=576, num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3,
        intermediate_size=1536, vocab_size=49152, tie_word_embeddings=True,
        max_position_embeddings=8192, rope_theta=1e5)),
}

# Hub ids of the built-ins (planning needs no download: the shapes above are theirs).
HUB_IDS = {
    "Qwen/Qwen2-7B": "qwen2-7b", "Qwen/Qwen2-7B-Instruct": "qwen2-7b",
    "meta-llama/Meta-Llama-3-8B": "llama3-8b", "meta-llama/Meta-Llama-3-8B-Instruct": "llama3-8b",
    "meta-llama/Llama-3.1-8B": "llama3-8b", "HuggingFaceTB/SmolLM2-135M-Instruct": "smollm2-135m",
}

# QLoRA's NF4 storage (bitsandbytes, blocksize 64, double quantisation as in Dettmers et al.):
# 4 bits per weight, an 8-bit absmax per 64 weights and an fp32 constant per 256 absmaxes.
NF4_BYTES = 0.5
NF4_CONST_BYTES = 1 / 64 + 4 / (64 * 256)
# DeepSpeed's default zero_optimization.sub_group_size: ZeRO-3 upcasts gradients to fp32 one
# sub-group of at most this many (per-rank) parameters at a time.
ZERO3_SUB_GROUP = 10**9


@dataclass(frozen=True)
class PlanSpec:
    """What to plan for; mirrors the ``smec plan`` flags.

    Args:
        model: a built-in name (see ``BUILTIN_MODELS``) or a folder with a HF ``config.json``.
        gpus: GPUs per node.
        nodes: nodes; ZeRO shards over all ``gpus * nodes`` data-parallel ranks.
        zero: ZeRO stage, 0 (plain data parallel) to 3.
        mode: ``frozen`` (backbone only encodes), ``full``, ``lora`` or ``qlora``.
        lora_r: LoRA rank; alpha is ``2 * r``.
        lora_targets: ``"all-linear"`` or a comma list of linear module names.
        batch: sequences per GPU per micro step (queries and documents together).
        seq_len: tokens per sequence (padded length: an upper bound).
        queue_size: S-XBM entries.
        offload: ZeRO-Offload of optimizer states (and, under ZeRO-3, parameters) to CPU.
        grad_ckpt: activation (gradient) checkpointing of every decoder layer.
        dims: SMEC head output widths; empty means D/2, D/4, D/8, D/16.
        precision: weight/activation precision (bf16 and fp16 train with fp32 master weights).
    """

    model: str
    gpus: int = 1
    nodes: int = 1
    zero: int = 0
    mode: str = "lora"
    lora_r: int = 16
    lora_targets: str = "all-linear"
    batch: int = 8
    seq_len: int = 512
    queue_size: int = 65536
    offload: bool = False
    grad_ckpt: bool = True
    dims: tuple[int, ...] = ()
    precision: str = "bf16"

    @property
    def world(self) -> int:
        return self.gpus * self.nodes

    def check(self) -> None:
        """Raises SmecError naming the first flag out of range."""
        for flag, value, low in (("--gpus", self.gpus, 1), ("--nodes", self.nodes, 1),
                                 ("--lora-r", self.lora_r, 1), ("--batch", self.batch, 1),
                                 ("--seq-len", self.seq_len, 1), ("--queue-size", self.queue_size, 0)):
            if value < low:
                raise SmecError(f"{flag} must be at least {low}, got {value}")
        if self.zero not in (0, 1, 2, 3):
            raise SmecError(f"--zero must be 0, 1, 2 or 3, got {self.zero}")
        if self.mode not in MODES:
            raise SmecError(f"--mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if self.precision not in PRECISIONS:
            raise SmecError(f"--precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.offload and self.zero == 0:
            raise SmecError("--offload needs --zero 1, 2 or 3 (ZeRO-Offload partitions what it moves)")


@dataclass(frozen=True)
class ModelStats:
    """What the meta-device model says about itself (parameter counts, layer shapes)."""

    name: str
    arch: str  # class of the built model, e.g. Qwen2Model
    total_params: int  # unique parameters, LoRA adapters included
    trainable_params: int
    quantized_params: int  # weights QLoRA stores in NF4 (every backbone nn.Linear weight)
    largest_module_params: int  # DeepSpeed's "largest layer": most direct parameters of one module
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    gated_mlp: bool  # SwiGLU-style gate_proj/up_proj/down_proj
    dropout: bool  # any dropout probability above zero (adds 1-byte masks)
    eager_attention: bool  # attention scores materialised (else SDPA/flash: log-sum-exp only)
    max_positions: int | None
    lora_targets: tuple[str, ...] = ()

    @property
    def frozen_params(self) -> int:
        return self.total_params - self.trainable_params


# --------------------------------------------------------------------------- the model


def load_model_config(model: str):
    """The transformers config of a built-in name or of a folder holding ``config.json``."""
    import transformers

    model = HUB_IDS.get(model, model)
    if model in BUILTIN_MODELS:
        cls_name, kwargs = BUILTIN_MODELS[model]
        return getattr(transformers, cls_name)(**kwargs)
    path = Path(model)
    if not path.is_dir():
        from .backbone import MODEL_ALIASES, resolve_model

        if model.lower() in MODEL_ALIASES:  # smec's own aliases (tiny-qwen2, minilm, ...)
            path = Path(resolve_model(model))
    if not path.is_dir():
        raise SmecError(f"--model {model!r} is neither a built-in name ({', '.join(BUILTIN_MODELS)}) "
                        f"nor a folder with a config.json")
    if not (path / "config.json").is_file():
        raise SmecError(f"--model {model}: the folder has no config.json")
    try:
        return transformers.AutoConfig.from_pretrained(path)
    except (ValueError, KeyError, OSError) as exc:
        raise SmecError(f"{path / 'config.json'}: not a usable transformers config ({exc})") from exc


def _linear_names(model) -> list[str]:
    """Leaf names of the model's nn.Linear modules (q_proj, ..., down_proj), sorted."""
    from torch import nn

    return sorted({name.rsplit(".", 1)[-1] for name, mod in model.named_modules() if isinstance(mod, nn.Linear)})


def _resolve_targets(targets: str, available: list[str], arch: str) -> list[str]:
    if targets.strip() == "all-linear":
        if not available:
            raise SmecError(f"--lora-targets all-linear: {arch} has no nn.Linear modules")
        return available
    wanted = [t.strip() for t in targets.split(",") if t.strip()]
    missing = [t for t in wanted if t not in available]
    if not wanted or missing:
        raise SmecError(f"--lora-targets: {', '.join(missing) or repr(targets)} not found in {arch}; "
                        f"its linear modules are {', '.join(available)} (or use all-linear)")
    return wanted


def inspect_model(model: str, mode: str = "full", lora_r: int = 16, lora_targets: str = "all-linear"
                  ) -> ModelStats:
    """Builds ``model`` on the meta device (no weights) and counts what ``mode`` trains.

    Args:
        model: a built-in name or a folder with ``config.json``.
        mode: one of ``MODES``; ``lora``/``qlora`` apply a PEFT LoraConfig (r, alpha 2r).
        lora_r: LoRA rank.
        lora_targets: ``"all-linear"`` or a comma list of linear module leaf names.

    Raises:
        SmecError: unknown model, unusable config, missing LoRA target, or peft not installed.
    """
    import torch
    from torch import nn
    from transformers import AutoModel

    cfg = load_model_config(model)
    try:
        with torch.device("meta"):
            net = AutoModel.from_config(cfg)
    except (ValueError, KeyError) as exc:
        raise SmecError(f"--model {model}: AutoModel cannot build {type(cfg).__name__} ({exc})") from exc
    arch = type(net).__name__
    linear = [m for m in net.modules() if isinstance(m, nn.Linear)]
    quantized = sum(m.weight.numel() for m in linear)
    # DeepSpeed's model_to_params measures the largest layer the same way (direct parameters)
    largest = max(sum(p.numel() for p in m.parameters(recurse=False)) for m in net.modules())

    linear_names = _linear_names(net)  # before PEFT renames wrapped layers to base_layer
    targets: list[str] = []
    if mode in ("lora", "qlora"):
        targets = _resolve_targets(lora_targets, linear_names, arch)
        try:
            from peft import LoraConfig, get_peft_model
        except ImportError as exc:
            raise SmecError(f"--mode {mode} needs peft: pip install peft==0.21.2 ({exc})") from exc
        lora = LoraConfig(r=lora_r, lora_alpha=2 * lora_r, lora_dropout=0.0, target_modules=targets, bias="none")
        with torch.device("meta"), warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # peft calls a transformers alias deprecated in v6
            net = get_peft_model(net, lora)
    elif mode == "frozen":
        net.requires_grad_(False)

    params = list(net.parameters())  # unique: tied parameters appear once
    total = sum(p.numel() for p in params)
    trainable = sum(p.numel() for p in params if p.requires_grad)

    hidden = _cfg_int(cfg, model, "hidden_size")
    heads = _cfg_int(cfg, model, "num_attention_heads")
    attn_impl = getattr(cfg, "_attn_implementation", None) or "sdpa"
    dropout_keys = ("attention_dropout", "hidden_dropout", "hidden_dropout_prob", "attention_probs_dropout_prob",
                    "resid_pdrop", "attn_pdrop", "dropout")
    return ModelStats(
        name=model, arch=arch, total_params=total, trainable_params=trainable,
        quantized_params=quantized if mode == "qlora" else 0, largest_module_params=largest,
        hidden=hidden, layers=_cfg_int(cfg, model, "num_hidden_layers"), heads=heads,
        kv_heads=getattr(cfg, "num_key_value_heads", None) or heads,
        head_dim=getattr(cfg, "head_dim", None) or hidden // heads,
        intermediate=getattr(cfg, "intermediate_size", None) or 4 * hidden,
        gated_mlp=bool(set(linear_names) & {"gate_proj", "gate_up_proj"}),
        dropout=any(isinstance(getattr(cfg, k, 0), float) and getattr(cfg, k) > 0 for k in dropout_keys),
        eager_attention=attn_impl == "eager",
        max_positions=getattr(cfg, "max_position_embeddings", None),
        lora_targets=tuple(targets),
    )


def _cfg_int(cfg, model: str, key: str) -> int:
    value = getattr(cfg, key, None)
    if not isinstance(value, int):
        raise SmecError(f"--model {model}: its config has no integer {key}")
    return value


# --------------------------------------------------------------------------- activations


def layer_activation_bytes(m: ModelStats, batch: int, seq_len: int, elem: int = 2) -> int:
    """Bytes one decoder layer keeps for backward, for ``batch`` sequences of ``seq_len`` tokens.

    Korthikanti et al. (2022) count, per layer of a GPT-3 style transformer (16-bit
    activations, 1-byte dropout masks, attention scores materialised)::

        s b h (34 + 5 a s / h)  bytes

    with s the sequence length, b the micro batch, h the hidden width and a the heads:
    11 sbh for attention (QKV input 2, Q and K 4, V 2, output-projection input 2, dropout
    mask 1) plus 5 a s^2 b for the scores (softmax output 2, dropout mask 1, dropout output 2),
    19 sbh for the 4h MLP (input 2, GeLU input 8, GeLU output 8, dropout mask 1) and 4 sbh for
    the two LayerNorm inputs.

    The same count term by term for the layer the model really has, with e bytes per
    activation, q = a d query width, k = a_kv d key/value width (GQA), i the MLP width::

        per token:  2 e h             the two norm inputs
                  + e h               QKV-projection input
                  + e (q + 2 k)       Q, K, V
                  + e q               output-projection input
                  + h                 attention-output dropout mask        (if dropout)
                  + e h + 4 e i       gated MLP: input, gate out, up out, act(gate), product
                 (or e h + 2 e i + h  plain MLP: input, act input, act output, mask)
        per score (a s^2 b): e, or e + 1 + e with dropout   (eager attention only)
        per head and query:  4        fp32 log-sum-exp     (SDPA / flash attention)

    which reduces to sbh(34 + 5as/h) for a GPT-3 layer (q = k = h, i = 4h, dropout, eager).
    LoRA adds r values per target per token (under 0.2% here) and is left out.

    Args:
        m: the model's shapes.
        batch: sequences per GPU (b).
        seq_len: tokens per sequence (s).
        elem: bytes per activation (2 for bf16/fp16, 4 for fp32).

    Returns:
        Bytes for one layer.
    """
    h, q, k, i = m.hidden, m.heads * m.head_dim, m.kv_heads * m.head_dim, m.intermediate
    mask = 1 if m.dropout else 0
    per_token = 2 * elem * h + elem * h + elem * (q + 2 * k) + elem * q + mask * h
    per_token += elem * h + 4 * elem * i if m.gated_mlp else elem * h + 2 * elem * i + mask * h
    tokens = batch * seq_len
    if m.eager_attention:
        scores = m.heads * seq_len * seq_len * batch * (elem + mask * (1 + elem))
    else:
        scores = 4 * m.heads * tokens
    return tokens * per_token + scores


def activation_bytes(m: ModelStats, batch: int, seq_len: int, grad_ckpt: bool, elem: int = 2,
                     training: bool = True) -> int:
    """Activation bytes per GPU for the whole backbone.

    Without checkpointing every layer keeps ``layer_activation_bytes``. With full
    checkpointing of each decoder layer only the layer inputs stay (Korthikanti et al.'s
    2 sbh L: ``e * h`` bytes per token per layer), plus one layer's full activations while it
    is recomputed during backward. Both add the final norm's input. Without training (frozen
    backbone: inference, no autograd graph) the peak is one layer's working set.
    """
    one_layer = layer_activation_bytes(m, batch, seq_len, elem)
    final_norm = elem * m.hidden * batch * seq_len
    if not training:
        return one_layer + final_norm
    if grad_ckpt:
        return m.layers * elem * m.hidden * batch * seq_len + one_layer + final_norm
    return m.layers * one_layer + final_norm


# --------------------------------------------------------------------------- SMEC head, queue


def default_dims(full_dim: int) -> tuple[int, ...]:
    """D/2, D/4, D/8, D/16 (fewer where D is small)."""
    return tuple(d for d in (full_dim // 2, full_dim // 4, full_dim // 8, full_dim // 16) if d >= 1)


def smec_head_params(full_dim: int, dims: tuple[int, ...]) -> tuple[int, int]:
    """(all stages' parameters, the largest stage's) of the real SMECHead, built on meta."""
    import torch

    from .method.smrl import SMECHead

    if not dims or any(d <= 0 for d in dims) or any(a <= b for a, b in zip((full_dim,) + dims, dims)):
        raise SmecError(f"--dims {','.join(map(str, dims))}: need positive widths, strictly decreasing, "
                        f"each below the backbone width {full_dim}")
    with torch.device("meta"):
        head = SMECHead(full_dim, list(dims))
    per_stage = [sum(p.numel() for p in s.parameters()) for s in head.stages]
    return sum(per_stage), max(per_stage)


# --------------------------------------------------------------------------- the plan


@dataclass
class Plan:
    """Per-GPU bytes (and CPU bytes per node) for one spec; ``rows`` keep the table order."""

    spec: PlanSpec
    stats: ModelStats
    gpu: dict[str, int] = field(default_factory=dict)  # row -> bytes per GPU
    notes: dict[str, str] = field(default_factory=dict)  # row -> how it was computed
    cpu: dict[str, int] = field(default_factory=dict)  # row -> bytes per rank offloaded to CPU RAM
    head_params: int = 0
    dims: tuple[int, ...] = ()

    STATE_ROWS = ("frozen_weights", "trainable_weights", "gradients", "fp32_grad_copy", "optimizer_states",
                  "zero3_gathered_params")

    @property
    def cpu_per_node(self) -> int:
        """CPU RAM per node for what ``--offload`` moves there (every local rank's share)."""
        return sum(self.cpu.values()) * self.spec.gpus

    @property
    def model_states(self) -> int:
        """GPU model states, the figure DeepSpeed's estimators give (fp32 gradient copy included)."""
        return sum(self.gpu[r] for r in self.STATE_ROWS)

    @property
    def activations(self) -> int:
        return self.gpu["activations_ckpt" if self.spec.grad_ckpt else "activations_no_ckpt"]

    @property
    def total(self) -> int:
        """Peak per GPU: the fp32 gradient copy and the activations are never alive together."""
        copy = self.gpu["fp32_grad_copy"]
        return self.model_states - copy + max(self.activations, copy) + self.gpu["smec_head"] + self.gpu["sxbm_queue"]


def make_plan(spec: PlanSpec, stats: ModelStats | None = None) -> Plan:
    """Computes every figure of the plan.

    Args:
        spec: the setup.
        stats: ``inspect_model`` for ``spec`` when already at hand (building a 7B model on meta
            takes a few seconds); otherwise built here.
    """
    spec.check()
    if stats is None:
        stats = inspect_model(spec.model, spec.mode, spec.lora_r, spec.lora_targets)
    if stats.max_positions and spec.seq_len > stats.max_positions:
        raise SmecError(f"--seq-len {spec.seq_len} exceeds {spec.model}'s max_position_embeddings "
                        f"{stats.max_positions}")
    n, z, off = spec.world, spec.zero, spec.offload
    mixed = spec.precision != "fp32"
    w = 2 if mixed else 4  # bytes per weight / gradient / activation
    T, F = stats.trainable_params, stats.frozen_params
    train = spec.mode != "frozen"
    gpu: dict[str, int] = {}
    notes: dict[str, str] = {}
    cpu: dict[str, int] = {}

    def place(row: str, nbytes: float, note: str, on_cpu: bool) -> None:
        gpu[row] = 0 if on_cpu else int(nbytes)
        cpu[row] = int(nbytes) if on_cpu else 0
        notes[row] = note + (", in CPU RAM" if on_cpu else "")

    p_shard = f", /{n} ZeRO-3" if z == 3 else ""
    if spec.mode == "qlora":
        # NF4 covers the linear weights; embeddings, norms and biases stay 16-bit
        q = stats.quantized_params
        frozen = q * (NF4_BYTES + NF4_CONST_BYTES) + (F - q) * w
        f_note = f"NF4 {NF4_BYTES + NF4_CONST_BYTES:.3f} B x {q / 1e9:.2f}B linear + {w} B x rest"
    else:
        frozen, f_note = F * w, f"{spec.precision} {w} B/param"
    place("frozen_weights", frozen / (n if z == 3 else 1), f_note + p_shard, z == 3 and off)
    place("trainable_weights", T * w / (n if z == 3 else 1), f"{spec.precision} {w} B/param" + p_shard,
          z == 3 and off)
    g_div = n if z >= 2 else 1
    place("gradients", T * w / g_div, f"{spec.precision} {w} B/param" + (f", /{n} ZeRO-{z}" if z >= 2 else ""),
          z >= 2 and off)
    if mixed and train:
        per_rank = T / (n if z >= 1 else 1)
        if z == 3:
            per_rank = min(per_rank, ZERO3_SUB_GROUP)
        place("fp32_grad_copy", 4 * per_rank, "fp32 4 B/param" + (f", /{n}" if z >= 1 else "")
              + ", optimizer step only", off)
    else:
        place("fp32_grad_copy", 0, "frozen backbone: none" if mixed else "none in fp32 training", False)
    opt = 12 if mixed else 8  # fp32 master + Adam m, v; fp32 training needs no master copy
    place("optimizer_states", T * opt / (n if z >= 1 else 1),
          ("fp32 master 4 B + Adam m,v 8 B" if mixed else "Adam m,v 8 B") + (f", /{n} ZeRO-{z}" if z >= 1 else ""),
          off)
    if not train:
        for row in ("trainable_weights", "gradients", "optimizer_states"):
            notes[row] = "frozen backbone: none"
    place("zero3_gathered_params", 2 * w * stats.largest_module_params if z == 3 else 0,
          f"2 x {w} B x largest module ({stats.largest_module_params / 1e6:.0f}M)" if z == 3 else "ZeRO-3 only",
          False)

    gpu["activations_no_ckpt"] = activation_bytes(stats, spec.batch, spec.seq_len, False, w, train)
    gpu["activations_ckpt"] = activation_bytes(stats, spec.batch, spec.seq_len, True, w, train)
    notes["activations_no_ckpt"] = (f"b={spec.batch} s={spec.seq_len}, Korthikanti et al. per layer"
                                    if train else "inference: one layer's working set")
    notes["activations_ckpt"] = "layer inputs + one layer recomputed" if train else notes["activations_no_ckpt"]

    dims = spec.dims or default_dims(stats.hidden)
    head_total, head_stage = smec_head_params(stats.hidden, tuple(dims))
    # SMRL trains one stage at a time and freezes it (trainer.py: no gradient, no optimizer
    # state), so fp32 weights of every stage plus grads and Adam m, v of the largest stage
    gpu["smec_head"] = 4 * head_total + 12 * head_stage
    notes["smec_head"] = f"{len(dims)} stages, {head_total / 1e6:.1f}M params fp32 + Adam on 1 stage"
    gpu["sxbm_queue"] = spec.queue_size * (stats.hidden * 4 + 8)  # fp32 teacher vector + int64 id
    notes["sxbm_queue"] = f"{spec.queue_size:,} x {stats.hidden} fp32 + ids"

    return Plan(spec=spec, stats=stats, gpu=gpu, notes=notes, cpu=cpu, head_params=head_total, dims=tuple(dims))
