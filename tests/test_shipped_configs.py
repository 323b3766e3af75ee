"""The shipped launch files agree with the code and with each other (fast: no process is launched).

``tests/test_config.py`` already loads every top-level ``configs/*.yaml`` and checks its values
and header. This file adds what spans several files:

* smec configs in subfolders of ``configs/`` load too, and every smec config's header states a
  launch command; end-to-end configs name ``launch/train.py`` (or ``smec train``), and the
  accelerate configs, DeepSpeed JSONs and sbatch scripts their headers mention exist;
* ``configs/accelerate/*.yaml`` are valid Accelerate launcher configs;
* every DeepSpeed JSON an end-to-end config can run with (its ``e2e.deepspeed``, an
  ``e2e.deepspeed=...`` override in its header, the JSON of an accelerate config its header
  names) passes the trainer's own :func:`smec_dist.train.engine.check_deepspeed` with that config;
* every ``ds_configs/*.json`` parses and passes ``check_deepspeed``; contradictions are one-line
  errors naming the key;
* every ``slurm/*.sh`` is valid bash, and the end-to-end ones always pass ``--resume auto``.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from smec_dist.backbone import TINY_SHAPES
from smec_dist.config import Config, load_config
from smec_dist.train.engine import check_deepspeed
from smec_dist.errors import SmecError
from smec_dist.plan import load_model_config

ROOT = Path(__file__).resolve().parents[1]
ACCEL_DIR = ROOT / "configs" / "accelerate"
ALL_YAML = sorted(p for p in (ROOT / "configs").rglob("*") if p.suffix in (".yaml", ".yml"))
ACCEL_CONFIGS = [p for p in ALL_YAML if ACCEL_DIR in p.parents]
SMEC_CONFIGS = [p for p in ALL_YAML if p not in ACCEL_CONFIGS]
DS_CONFIGS = sorted((ROOT / "ds_configs").glob("*.json"))
SLURM_SCRIPTS = sorted((ROOT / "slurm").glob("*.sh"))

LAUNCH_RE = re.compile(r"(accelerate launch|torchrun|python launch/|\bsmec |sbatch)")
# paths a header may mention; each must exist in the repo
MENTION_RE = re.compile(r"((?:configs|ds_configs|slurm)/[\w./-]+\.(?:ya?ml|json|sh))")
DS_OVERRIDE_RE = re.compile(r"e2e\.deepspeed=(\S+\.json)")
ACCEL_FILE_RE = re.compile(r"--config_file\s+(configs/accelerate/\S+\.ya?ml)")
# accelerate's DistributedType values (a plain list: accelerate imports slowly)
DISTRIBUTED_TYPES = {"NO", "MULTI_CPU", "MULTI_GPU", "MULTI_NPU", "MULTI_MLU", "MULTI_SDAA", "MULTI_MUSA",
                     "MULTI_XPU", "MULTI_HPU", "MULTI_NEURON", "DEEPSPEED", "FSDP", "XLA", "MEGATRON_LM"}


def rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def header(path: Path) -> str:
    """The comment block a file opens with (a shebang line is skipped)."""
    lines = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("#!") and not lines:
            continue
        if not line.lstrip().startswith("#"):
            break
        lines.append(line)
    return "\n".join(lines)


def raw(path: Path) -> dict:
    return yaml.safe_load(path.read_text(encoding="utf-8")) or {}


def is_e2e(path: Path) -> bool:
    """An end-to-end (``smec train``) config: it has an ``e2e`` section."""
    return "e2e" in raw(path)


def is_cpu(path: Path) -> bool:
    return "cpu" in path.stem.split("-")


def world_of(path: Path) -> int:
    """The world size an end-to-end config is written for: 2 CPU ranks or 8 GPUs."""
    return 2 if is_cpu(path) else 8


def prec_of(cfg: Config, path: Path) -> str:
    """``e2e.precision`` as the trainer resolves it on the machine the config is meant for."""
    p = cfg.e2e.precision
    return ("fp32" if is_cpu(path) else "bf16") if p == "auto" else p


def width_of(model: str) -> int:
    if model.lower() in TINY_SHAPES:
        return TINY_SHAPES[model.lower()][1]["hidden_size"]
    return int(load_model_config(model).hidden_size)  # built-in shapes: no download, no weights


def ds_json(name: str) -> dict:
    path = ROOT / name
    assert path.parent == ROOT / "ds_configs" and path.is_file(), f"{name}: not a file in ds_configs/"
    return json.loads(path.read_text(encoding="utf-8"))


E2E_CONFIGS = [p for p in SMEC_CONFIGS if is_e2e(p)]


def test_every_kind_of_launch_file_is_shipped():
    assert E2E_CONFIGS, "no end-to-end config (with an e2e section) in configs/"
    assert ACCEL_CONFIGS, f"no accelerate config in {rel(ACCEL_DIR)}"
    assert DS_CONFIGS, "no DeepSpeed JSON in ds_configs/"
    assert SLURM_SCRIPTS, "no sbatch script in slurm/"


# --------------------------------------------------------------------------- smec configs


@pytest.mark.parametrize("path", SMEC_CONFIGS, ids=rel)
def test_smec_config_loads_and_states_its_launch_command(path: Path):
    load_config(path)  # also the ones in subfolders, which tests/test_config.py does not see
    text = header(path)
    assert LAUNCH_RE.search(text), f"{rel(path)}: the header names no launch command:\n{text}"
    for name in MENTION_RE.findall(text):
        assert (ROOT / name).exists(), f"{rel(path)}: the header mentions {name}, which does not exist"


@pytest.mark.parametrize("path", E2E_CONFIGS, ids=rel)
def test_e2e_config_header_runs_the_trainer(path: Path):
    text = header(path)
    assert "launch/train.py" in text or "smec train" in text, f"{rel(path)}: header does not run smec train"
    assert rel(path) in text, f"{rel(path)}: the launch commands in the header do not name the file itself"
    if not is_cpu(path):
        assert "sbatch slurm/" in text, f"{rel(path)}: a GPU config should say how to submit it"
        assert "smec plan" in text, f"{rel(path)}: a GPU config should say where its memory figures come from"


@pytest.mark.parametrize("path", E2E_CONFIGS, ids=rel)
def test_e2e_config_dims_fit_the_backbone(path: Path):
    cfg = load_config(path)
    width = width_of(cfg.model.name)
    assert cfg.run.dims[0] < width, f"{rel(path)}: run.dims[0]={cfg.run.dims[0]} is not below the width {width}"
    assert cfg.e2e.per_device_batch * world_of(path) <= 809, "more queries per step than SciFact's train split"


def deepspeed_uses(path: Path) -> list[tuple[str, int, str]]:
    """(DeepSpeed JSON, world size, where it comes from) for every way the header runs ``path``."""
    cfg = load_config(path)
    uses = []
    if cfg.e2e.deepspeed:
        uses.append((cfg.e2e.deepspeed, world_of(path), "e2e.deepspeed"))
    for name in DS_OVERRIDE_RE.findall(header(path)):
        uses.append((name, world_of(path), "an override in the header"))
    for accel in ACCEL_FILE_RE.findall(header(path)):
        conf = raw(ROOT / accel)
        name = conf.get("deepspeed_config", {}).get("deepspeed_config_file")
        if name:
            uses.append((name, int(conf["num_processes"]), accel))
    return uses


@pytest.mark.parametrize("path", [p for p in E2E_CONFIGS if deepspeed_uses(p)], ids=rel)
def test_e2e_config_passes_check_deepspeed(path: Path):
    cfg = load_config(path)
    for name, world, source in deepspeed_uses(path):
        done = check_deepspeed(ds_json(name), name, cfg, world, prec_of(cfg, path))
        assert done["train_micro_batch_size_per_gpu"] == cfg.e2e.per_device_batch, source
        assert done["train_batch_size"] == cfg.e2e.per_device_batch * cfg.e2e.grad_accum * world, source
        assert done["bf16"]["enabled"] == (prec_of(cfg, path) == "bf16"), source


@pytest.mark.parametrize("path", [p for p in E2E_CONFIGS if load_config(p).e2e.deepspeed], ids=rel)
def test_accelerate_configs_named_with_an_e2e_config_use_its_json(path: Path):
    """The trainer refuses a launcher JSON that differs from ``e2e.deepspeed``; the header
    must not suggest such a pair."""
    ours = (ROOT / load_config(path).e2e.deepspeed).resolve()
    for line in header(path).splitlines():
        for accel in ACCEL_FILE_RE.findall(line):
            named = raw(ROOT / accel).get("deepspeed_config", {}).get("deepspeed_config_file")
            overridden = DS_OVERRIDE_RE.search(line) or "e2e.deepspeed= " in line + " "
            if named and not overridden:
                assert (ROOT / named).resolve() == ours, f"{rel(path)}: {accel} names {named}, e2e.deepspeed {ours}"


# --------------------------------------------------------------------------- accelerate configs


@pytest.mark.parametrize("path", ACCEL_CONFIGS, ids=rel)
def test_accelerate_config_is_valid(path: Path):
    conf = raw(path)
    assert isinstance(conf, dict) and conf, f"{rel(path)}: not a YAML mapping"
    assert conf.get("distributed_type") in DISTRIBUTED_TYPES, f"{rel(path)}: distributed_type"
    assert isinstance(conf.get("num_processes"), int) and conf["num_processes"] >= 1, f"{rel(path)}: num_processes"
    assert isinstance(conf.get("num_machines", 1), int), f"{rel(path)}: num_machines"
    ds = conf.get("deepspeed_config") or {}
    if conf["distributed_type"] == "DEEPSPEED":
        assert ds.get("deepspeed_config_file"), f"{rel(path)}: DEEPSPEED without a deepspeed_config_file"
    if ds.get("deepspeed_config_file"):
        assert (ROOT / ds["deepspeed_config_file"]).is_file(), f"{rel(path)}: {ds['deepspeed_config_file']} missing"
        # Accelerate refuses these next to a deepspeed_config_file: the JSON (filled by the trainer) decides
        for key in ("mixed_precision", "gradient_accumulation_steps", "gradient_clipping", "zero_stage",
                    "offload_optimizer_device", "offload_param_device"):
            assert key not in conf and key not in ds, f"{rel(path)}: {key} next to a deepspeed_config_file"
        assert conf.get("use_cpu") is not True, f"{rel(path)}: use_cpu switches DeepSpeed off; DeepSpeed picks the CPU"
    assert LAUNCH_RE.search(header(path)), f"{rel(path)}: the header names no launch command"
    assert rel(path) in header(path), f"{rel(path)}: the header's command does not name the file itself"


# --------------------------------------------------------------------------- DeepSpeed JSONs


def lora_config(**e2e) -> Config:
    return load_config(None, ["e2e.backbone=lora", "e2e.per_device_batch=8", "e2e.grad_accum=4",
                              *(f"e2e.{k}={v}" for k, v in e2e.items())])


@pytest.mark.parametrize("path", DS_CONFIGS, ids=rel)
@pytest.mark.parametrize("prec", ["bf16", "fp32"])
def test_ds_config_passes_check_deepspeed(path: Path, prec: str):
    ds = json.loads(path.read_text(encoding="utf-8"))
    assert "optimizer" not in ds and "scheduler" not in ds, f"{rel(path)}: the trainer builds its own"
    done = check_deepspeed(ds, rel(path), lora_config(precision=prec), 8, prec)
    assert done["train_batch_size"] == 8 * 4 * 8
    assert done["bf16"]["enabled"] is (prec == "bf16")
    assert done["gradient_clipping"] == 1.0
    assert done["zero_optimization"]["stage"] in (2, 3)


def one_line_error(ds: dict, cfg: Config, prec: str = "fp32") -> str:
    with pytest.raises(SmecError) as info:
        check_deepspeed(ds, "ds.json", cfg, 2, prec)
    msg = str(info.value)
    assert msg and "\n" not in msg, repr(msg)
    assert msg.startswith("ds.json: "), msg
    return msg


@pytest.mark.parametrize("change, key", [
    ({"train_micro_batch_size_per_gpu": 3}, "train_micro_batch_size_per_gpu"),
    ({"gradient_accumulation_steps": 2}, "gradient_accumulation_steps"),
    ({"train_batch_size": 100}, "train_batch_size"),
    ({"gradient_clipping": 0.5}, "gradient_clipping"),
    ({"bf16": {"enabled": True}}, "bf16.enabled"),
    ({"optimizer": {"type": "AdamW", "params": {"lr": 1e-4}}}, "optimizer"),
    ({"scheduler": {"type": "WarmupLR"}}, "scheduler"),
    ({"fp16": {"enabled": True}}, "fp16"),
], ids=["micro-batch", "grad-accum", "train-batch", "clipping", "bf16-vs-fp32", "optimizer", "scheduler", "fp16"])
def test_contradicting_ds_config_is_a_one_line_error_naming_the_key(change: dict, key: str):
    ds = {**json.loads((ROOT / "ds_configs" / "zero3.json").read_text(encoding="utf-8")), **change}
    cfg = lora_config(precision="fp32")
    assert cfg.e2e.per_device_batch == 8
    assert key in one_line_error(ds, cfg, "fp32")


def test_ds_config_for_a_frozen_backbone_is_refused():
    assert "frozen" in one_line_error(ds_json("ds_configs/zero2.json"), lora_config(backbone="frozen"))


def test_qlora_is_refused_under_zero3_only():
    cfg = lora_config(backbone="qlora")
    assert "QLoRA" in one_line_error(ds_json("ds_configs/zero3.json"), cfg)
    check_deepspeed(ds_json("ds_configs/zero2.json"), "zero2.json", cfg, 2, "fp32")


# --------------------------------------------------------------------------- sbatch scripts


@pytest.mark.skipif(shutil.which("bash") is None, reason="no bash")
@pytest.mark.parametrize("path", SLURM_SCRIPTS, ids=rel)
def test_slurm_script_is_valid_bash(path: Path):
    done = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, f"{rel(path)}: {done.stderr}"


@pytest.mark.parametrize("path", SLURM_SCRIPTS, ids=rel)
def test_slurm_script_states_its_sbatch_command_and_resumes(path: Path):
    text = path.read_text(encoding="utf-8")
    assert f"sbatch {rel(path)}" in header(path), f"{rel(path)}: the header does not say how to submit it"
    code = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#") or "#SBATCH" in line)
    end_to_end = "launch/train.py" in code or "smec train" in code
    adapter_mode = "launch/encode.py" in code or "launch/run.py" in code
    evaluation = "launch/eval.py" in code
    assert end_to_end or adapter_mode or evaluation, f"{rel(path)}: runs neither smec train, adapter mode nor eval"
    if end_to_end:
        assert "--resume auto" in code, f"{rel(path)}: a requeued job must continue (--resume auto)"
    # every script is requeueable: warned before the limit, it requeues itself and the rerun resumes
    assert "#SBATCH --requeue" in code, f"{rel(path)}: not requeueable"
    assert re.search(r"#SBATCH --signal=B:USR1@\d+", code), f"{rel(path)}: no warning signal before the limit"
    assert re.search(r"trap \S+ USR1", code), f"{rel(path)}: no USR1 trap"
    assert "source slurm/lib/cluster.sh" in code, f"{rel(path)}: the launch geometry comes from slurm/lib/cluster.sh"
