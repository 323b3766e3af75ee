"""``smec plan``'s report: DeepSpeed's own estimate beside ours, the table and the JSON, and
the settings read from a ``smec train`` config.

The memory model itself (what each byte is, and the references) is :mod:`smec_dist.plan`.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from .errors import SmecError
from .plan import GIB, NF4_BYTES, NF4_CONST_BYTES, Plan, PlanSpec, make_plan


# --------------------------------------------------------------------------- DeepSpeed's view


@dataclass(frozen=True)
class DeepSpeedEstimate:
    """DeepSpeed's model-states estimate composed for this plan, beside ours (bytes)."""

    estimator: str
    gpu_bytes: int  # per GPU
    cpu_bytes: int  # per node, with DeepSpeed's 1.5x buffer factor
    ours_gpu_bytes: int
    composed: str  # how frozen weights were added

    @property
    def rel_diff(self) -> float:
        """(ours - DeepSpeed) / DeepSpeed."""
        return (self.ours_gpu_bytes - self.gpu_bytes) / self.gpu_bytes if self.gpu_bytes else 0.0


def _deepspeed_estimators():
    """DeepSpeed's two estimator functions, imported quietly (only here: the import is slow)."""
    import torch

    env = os.environ.get("DS_ACCELERATOR")
    if env is None and not torch.cuda.is_available():
        # the auto-detection would choose cpu anyway, but warns about it on stdout
        os.environ["DS_ACCELERATOR"] = "cpu"
    try:
        from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs
        from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs
    finally:
        if env is None:
            os.environ.pop("DS_ACCELERATOR", None)
    return estimate_zero2_model_states_mem_needs, estimate_zero3_model_states_mem_needs


def deepspeed_estimate(plan: Plan) -> DeepSpeedEstimate | None:
    """DeepSpeed's own per-GPU model-states estimate, for comparison with ``plan.model_states``.

    DeepSpeed's estimators assume every parameter trains with mixed-precision Adam: ZeRO-2
    gives ``2 P + 18 P / N`` bytes per GPU (16-bit params; 16-bit and fp32 grads, fp32 params,
    Adam m and v sharded), ZeRO-3 ``4 L + 18 P / N`` with L the largest layer's parameters.
    For full fine-tuning that is the whole model. When part of the model is frozen (LoRA,
    QLoRA, frozen) we compose: the estimator on the trainable parameters only (L stays the
    whole model's largest module: frozen parameters are partitioned and gathered too) plus the
    frozen weights' own bytes, replicated under ZeRO-2, divided by N under ZeRO-3, in CPU RAM
    under ZeRO-3 with offload.

    Note the ZeRO-3 estimator counts 18 B/param where its ZeRO-2 one counts 20 (2 + 18); ours
    counts 20 for both (the bf16 gradient partition and its fp32 copy both exist at the step),
    so ZeRO-3 full fine-tuning comes out about 10% above DeepSpeed.

    Returns:
        None where DeepSpeed has no estimator for the setup (ZeRO-0/1, fp32 training).

    Raises:
        ImportError: deepspeed is not installed.
    """
    spec = plan.spec
    if spec.zero < 2 or spec.precision == "fp32":
        return None
    zero2, zero3 = _deepspeed_estimators()
    T = plan.stats.trainable_params
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):  # the estimators' siblings print tables; keep ours clean
        if spec.zero == 2:
            cpu, gpu = zero2(total_params=T, num_gpus_per_node=spec.gpus, num_nodes=spec.nodes,
                             cpu_offload=spec.offload)
            name = "estimate_zero2_model_states_mem_needs"
        else:
            cpu, gpu, _ = zero3(total_params=T, largest_layer_params=plan.stats.largest_module_params,
                                num_gpus_per_node=spec.gpus, num_nodes=spec.nodes, cpu_offload=spec.offload,
                                cpu_offload_params=spec.offload, zero_init=True)
            name = "estimate_zero3_model_states_mem_needs"
    gpu += plan.gpu["frozen_weights"]
    cpu += plan.cpu["frozen_weights"] * spec.gpus
    if plan.stats.frozen_params:
        where = (f"/ {spec.world} in CPU RAM" if spec.zero == 3 and spec.offload
                 else f"/ {spec.world}" if spec.zero == 3 else "replicated")
        composed = f"estimator on {T:,} trainable params + frozen weights {where}"
    else:
        composed = "all parameters trainable: estimator as is"
    return DeepSpeedEstimate(estimator=name, gpu_bytes=int(gpu), cpu_bytes=int(cpu),
                             ours_gpu_bytes=plan.model_states, composed=composed)


# --------------------------------------------------------------------------- output

ROW_LABELS = {
    "frozen_weights": "frozen weights",
    "trainable_weights": "trainable weights",
    "gradients": "gradients",
    "fp32_grad_copy": "fp32 gradient copy",
    "optimizer_states": "optimizer states",
    "zero3_gathered_params": "ZeRO-3 gathered params",
    "activations_no_ckpt": "activations, no checkpointing",
    "activations_ckpt": "activations, checkpointing",
    "smec_head": "SMEC head",
    "sxbm_queue": "S-XBM queue",
}
NOT_INCLUDED = ("CUDA context and NCCL buffers (about 1-3 GiB), ZeRO communication buckets, "
                "allocator fragmentation, the SMEC head's activations")


def _gib(nbytes: float) -> float:
    return round(nbytes / GIB, 2)


def compare_with_deepspeed(plan: Plan) -> tuple[DeepSpeedEstimate | None, str]:
    """DeepSpeed's estimate and a one-line account of it, or of why there is none."""
    try:
        ds = deepspeed_estimate(plan)
    except ImportError as exc:
        return None, f"DeepSpeed estimator: deepspeed is not importable ({exc}); comparison skipped"
    if ds is None:
        why = "fp32 training" if plan.spec.precision == "fp32" else f"ZeRO-{plan.spec.zero}"
        return None, f"DeepSpeed estimator: none for {why} (it covers ZeRO-2 and ZeRO-3 mixed precision)"
    return ds, (f"DeepSpeed estimator: {_gib(ds.gpu_bytes):.2f} GiB model states per GPU vs ours "
                f"{_gib(ds.ours_gpu_bytes):.2f} GiB ({ds.rel_diff:+.1%}); {ds.estimator}, {ds.composed}")


def _mode_line(plan: Plan) -> str:
    s, m = plan.spec, plan.stats
    if s.mode == "frozen":
        return "frozen: the backbone only encodes (no gradients, no optimizer states); the SMEC head trains"
    if s.mode == "full":
        return "full fine-tuning: every backbone parameter trains"
    line = f"{s.mode}: r={s.lora_r}, alpha={2 * s.lora_r} on {','.join(m.lora_targets)}"
    if s.mode == "qlora":
        line += (f"; frozen linear weights in 4-bit NF4 ({NF4_BYTES} B/param + {NF4_CONST_BYTES:.3f} B/param "
                 f"quantization constants: blocksize 64, double quantization), embeddings, norms and biases "
                 f"stay {s.precision}")
    return line


def format_plan(plan: Plan, deepspeed_line: str) -> str:
    """The human-readable table (GiB per GPU)."""
    s, m = plan.spec, plan.stats
    nodes = f"{s.nodes} node{'s' if s.nodes > 1 else ''} x {s.gpus}"
    prec = "fp32 + Adam" if s.precision == "fp32" else f"{s.precision} mixed precision + Adam"
    share = m.trainable_params / m.total_params if m.total_params else 0.0
    lines = [
        f"smec plan: {s.model} ({m.arch}: {m.layers} layers, hidden {m.hidden}, {m.heads} heads / "
        f"{m.kv_heads} KV, MLP {m.intermediate})",
        _mode_line(plan),
        f"setup: ZeRO-{s.zero} over {s.world} GPUs ({nodes}), {prec}, "
        f"{'offload to CPU' if s.offload else 'no offload'}, {s.batch} sequences x {s.seq_len} tokens per GPU",
        f"parameters: total {m.total_params:,}, trainable {m.trainable_params:,} ({share:.2%}); "
        f"SMEC head {plan.head_params:,} ({' -> '.join(map(str, (m.hidden,) + plan.dims))})",
        "",
        f"{'per GPU':<32}{'GiB':>8}  how",
    ]

    def row(label: str, nbytes: int, how: str = "") -> None:
        lines.append(f"{label:<32}{_gib(nbytes):>8.2f}  {how}".rstrip())

    for key in Plan.STATE_ROWS:
        row("  " + ROW_LABELS[key], plan.gpu[key], plan.notes[key])
    row("model states", plan.model_states, "what DeepSpeed's estimators cover")
    for key in ("activations_no_ckpt", "activations_ckpt", "smec_head", "sxbm_queue"):
        chosen = key == ("activations_ckpt" if s.grad_ckpt else "activations_no_ckpt")
        row(ROW_LABELS[key] + (" *" if chosen else ""), plan.gpu[key], plan.notes[key])
    row(f"total (checkpointing {'on' if s.grad_ckpt else 'off'})", plan.total,
        "states + * + head + queue; fp32 gradient copy only where above the activations")
    lines += [
        "",
        (f"CPU RAM per node: {_gib(plan.cpu_per_node):.2f} GiB (offloaded states of {s.gpus} local ranks)"
         if s.offload else "CPU RAM per node: nothing offloaded"),
        deepspeed_line,
        f"not included: {NOT_INCLUDED}",
    ]
    return "\n".join(lines)


def plan_dict(plan: Plan, ds: DeepSpeedEstimate | None, deepspeed_line: str) -> dict:
    """The same figures as ``format_plan``, for ``--json`` (bytes exact, GiB rounded to 2)."""
    m = plan.stats
    per_gpu = dict(plan.gpu, model_states=plan.model_states, total=plan.total)
    spec = asdict(plan.spec)
    spec["dims"] = list(plan.dims)
    return {
        "model": plan.spec.model,
        "arch": m.arch,
        "setup": spec,
        "params": {"total": m.total_params, "trainable": m.trainable_params, "frozen": m.frozen_params,
                   "lora_targets": list(m.lora_targets), "smec_head": plan.head_params},
        "per_gpu_bytes": per_gpu,
        "per_gpu_gib": {k: _gib(v) for k, v in per_gpu.items()},
        "notes": plan.notes,
        "cpu_per_node_bytes": plan.cpu_per_node,
        "cpu_per_node_gib": _gib(plan.cpu_per_node),
        "deepspeed": None if ds is None else {
            "estimator": ds.estimator, "gpu_bytes": ds.gpu_bytes, "gpu_gib": _gib(ds.gpu_bytes),
            "cpu_bytes_per_node": ds.cpu_bytes, "ours_gpu_bytes": ds.ours_gpu_bytes,
            "rel_diff": round(ds.rel_diff, 4), "composed": ds.composed},
        "deepspeed_line": deepspeed_line,
        "not_included": NOT_INCLUDED,
    }


def parse_dims(text: str | None) -> tuple[int, ...]:
    """``"1792,896"`` -> (1792, 896); None or empty -> () (the default halvings)."""
    if not text:
        return ()
    try:
        return tuple(int(d) for d in text.split(",") if d.strip())
    except ValueError as exc:
        raise SmecError(f"--dims {text!r}: expected comma-separated integers") from exc


FLAG_DEFAULTS = dict(gpus=1, nodes=1, zero=0, mode="lora", lora_r=16, lora_targets="all-linear", batch=8,
                     seq_len=512, queue_size=65536, offload=False, grad_ckpt=True, dims=None, precision="bf16")


def settings_from_config(path: str) -> dict:
    """Plan settings read from a ``smec train`` config: its backbone, LoRA, sequence length,
    batch (queries and documents are encoded together: 2 sequences per pair), queue, dims,
    precision, and the ZeRO stage and offload of its DeepSpeed JSON."""
    from .config import load_config

    cfg = load_config(path)
    e2e = cfg.e2e
    out = dict(model=cfg.model.name, mode=e2e.backbone, lora_r=e2e.lora_r, lora_targets=",".join(e2e.lora_targets),
               batch=2 * e2e.per_device_batch, seq_len=cfg.model.max_length, queue_size=cfg.train.queue_size,
               grad_ckpt=e2e.gradient_checkpointing, dims=",".join(map(str, cfg.run.dims)),
               precision="fp32" if e2e.precision == "fp32" else "bf16", zero=0, offload=False)
    if e2e.deepspeed:
        ds_path = Path(e2e.deepspeed)
        try:
            ds = json.loads(ds_path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise SmecError(f"{path}: e2e.deepspeed {ds_path} cannot be read ({exc})") from exc
        zero = ds.get("zero_optimization", {})
        out["zero"] = int(zero.get("stage", 0))
        out["offload"] = zero.get("offload_optimizer", {}).get("device", "none") == "cpu"
    return out


def plan_report(
    *,
    config: str | None = None,
    model: str | None = None,
    gpus: int | None = None,
    nodes: int | None = None,
    zero: int | None = None,
    mode: str | None = None,
    lora_r: int | None = None,
    lora_targets: str | None = None,
    batch: int | None = None,
    seq_len: int | None = None,
    queue_size: int | None = None,
    offload: bool | None = None,
    grad_ckpt: bool | None = None,
    dims: str | None = None,
    precision: str | None = None,
    as_json: bool = False,
) -> str:
    """``smec plan``: the text (or JSON) to print.

    Each setting given (not None) wins over ``config`` (a ``smec train`` config, see
    :func:`settings_from_config`), which wins over :data:`FLAG_DEFAULTS`; the settings are
    those of :class:`smec_dist.plan.PlanSpec`, with ``dims`` a comma list.

    Raises:
        SmecError: No model, a setting out of range, or an unusable model or config.
    """
    values = dict(FLAG_DEFAULTS, model=None)
    if config:
        values.update(settings_from_config(config))
    given = dict(model=model, gpus=gpus, nodes=nodes, zero=zero, mode=mode, lora_r=lora_r, lora_targets=lora_targets,
                 batch=batch, seq_len=seq_len, queue_size=queue_size, offload=offload, grad_ckpt=grad_ckpt,
                 dims=dims, precision=precision)
    values.update({k: v for k, v in given.items() if v is not None})
    if not values["model"]:
        raise SmecError("smec plan needs --model or --config")
    spec = PlanSpec(model=values["model"], gpus=values["gpus"], nodes=values["nodes"], zero=values["zero"],
                    mode=values["mode"], lora_r=values["lora_r"], lora_targets=values["lora_targets"],
                    batch=values["batch"], seq_len=values["seq_len"], queue_size=values["queue_size"],
                    offload=values["offload"], grad_ckpt=values["grad_ckpt"], dims=parse_dims(values["dims"]),
                    precision=values["precision"])
    plan = make_plan(spec)
    ds, ds_line = compare_with_deepspeed(plan)
    if as_json:
        return json.dumps(plan_dict(plan, ds, ds_line), indent=2)
    return format_plan(plan, ds_line)
