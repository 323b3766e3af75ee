"""Tests of ``smec plan``: parameter counts from the meta-device model, the ZeRO accounting
against DeepSpeed's own estimators, the activation formula, and the command's output.

Everything runs on CPU without weights or a network; a 7B model on the meta device builds in
a few seconds, so the Qwen2-7B inspections are shared by the module.
"""

from __future__ import annotations

import json

import pytest

from smec_dist.cli import main
from smec_dist.errors import SmecError
from smec_dist.plan import (ModelStats, PlanSpec, activation_bytes, inspect_model, layer_activation_bytes,
                            load_model_config, make_plan)
from smec_dist.plan_report import deepspeed_estimate

# Qwen2-7B's shapes, for counting by hand what the meta model should hold
H, L, V, I, KV = 3584, 28, 152064, 18944, 4 * 128
QWEN2_7B_PARAMS = (
    V * H  # embed_tokens (AutoModel: no LM head)
    + L * ((H * H + H) + 2 * (H * KV + KV) + H * H  # q (bias), k and v (bias, GQA), o
           + 3 * H * I  # gate, up, down
           + 2 * H)  # two RMSNorms
    + H  # final norm
)


def lora_params(r: int) -> int:
    """r (in + out) per adapted linear, over every target of every layer."""
    in_out = [(H, H), (H, KV), (H, KV), (H, H), (H, I), (H, I), (I, H)]  # q k v o gate up down
    return L * sum(r * (a + b) for a, b in in_out)


@pytest.fixture(scope="module")
def qwen_full() -> ModelStats:
    return inspect_model("qwen2-7b", "full")


@pytest.fixture(scope="module")
def qwen_lora() -> ModelStats:
    pytest.importorskip("peft")
    return inspect_model("qwen2-7b", "lora", lora_r=16, lora_targets="all-linear")


# --------------------------------------------------------------------------- counts


def test_qwen2_7b_param_count_from_meta_model(qwen_full):
    assert qwen_full.arch == "Qwen2Model"
    assert qwen_full.total_params == QWEN2_7B_PARAMS == 7_070_619_136
    assert 7.05e9 < qwen_full.total_params < 7.09e9
    assert qwen_full.trainable_params == qwen_full.total_params
    assert qwen_full.largest_module_params == V * H  # embed_tokens
    assert (qwen_full.hidden, qwen_full.layers, qwen_full.kv_heads, qwen_full.gated_mlp) == (H, L, 4, True)


def test_lora_all_linear_trainable_count_matches_formula(qwen_lora):
    assert qwen_lora.trainable_params == lora_params(16) == 40_370_176
    assert qwen_lora.total_params == QWEN2_7B_PARAMS + lora_params(16)
    assert set(qwen_lora.lora_targets) == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                           "down_proj"}
    # a comma list trains only what it names
    only_qv = inspect_model("smollm2-135m", "lora", lora_r=8, lora_targets="q_proj,v_proj")
    assert only_qv.trainable_params == 30 * 8 * ((576 + 576) + (576 + 3 * 64))


def test_missing_lora_target_names_it_and_the_available_ones():
    pytest.importorskip("peft")
    with pytest.raises(SmecError) as info:
        inspect_model("smollm2-135m", "lora", lora_targets="q_proj,foo_proj")
    msg = str(info.value)
    assert "foo_proj" in msg and "q_proj" in msg and "down_proj" in msg and "\n" not in msg


def test_bad_model_name_is_one_line_naming_value_and_choices():
    with pytest.raises(SmecError) as info:
        load_model_config("qwen-9000")
    msg = str(info.value)
    assert "qwen-9000" in msg and "qwen2-7b" in msg and "llama3-8b" in msg and "smollm2-135m" in msg
    assert "\n" not in msg


def test_model_folder_with_config_json(tmp_path):
    load_model_config("smollm2-135m").save_pretrained(tmp_path)
    assert inspect_model(str(tmp_path), "full").total_params == inspect_model("smollm2-135m", "full").total_params
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SmecError, match="no config.json"):
        load_model_config(str(empty))


# --------------------------------------------------------------------------- ZeRO vs DeepSpeed


def _within(plan, tol: float = 0.10) -> float:
    ds = deepspeed_estimate(plan)
    assert ds is not None and ds.ours_gpu_bytes == plan.model_states
    assert abs(ds.rel_diff) <= tol, f"ours {plan.model_states} vs DeepSpeed {ds.gpu_bytes}"
    return ds.rel_diff


def test_zero3_full_close_to_deepspeed(qwen_full):
    pytest.importorskip("deepspeed")
    plan = make_plan(PlanSpec("qwen2-7b", gpus=8, zero=3, mode="full"), qwen_full)
    # ~16 B/param sharded plus gathering: the METHOD.md figure of about 14 GB, plus ZeRO-3 extras
    assert 14e9 < plan.model_states < 21e9
    _within(plan)


def test_zero3_lora_close_to_deepspeed_composed(qwen_lora):
    pytest.importorskip("deepspeed")
    plan = make_plan(PlanSpec("qwen2-7b", gpus=8, zero=3, mode="lora"), qwen_lora)
    ds = deepspeed_estimate(plan)
    assert "trainable" in ds.composed
    # frozen bf16 weights / 8 ride along the estimator on the LoRA parameters alone
    assert plan.gpu["frozen_weights"] == QWEN2_7B_PARAMS * 2 // 8
    assert abs(_within(plan)) < 0.01


def test_zero2_full_close_to_deepspeed(qwen_full):
    pytest.importorskip("deepspeed")
    plan = make_plan(PlanSpec("qwen2-7b", gpus=8, zero=2, mode="full"), qwen_full)
    # bf16 weights replicated, 18 B/param of gradients and optimizer states sharded
    assert plan.model_states == pytest.approx(2 * QWEN2_7B_PARAMS + 18 * QWEN2_7B_PARAMS / 8, rel=1e-6)
    _within(plan)


def test_unsharded_lora_needs_bf16_weights_plus_small_trainable_state(qwen_lora):
    plan = make_plan(PlanSpec("qwen2-7b", gpus=1, zero=0, mode="lora"), qwen_lora)
    assert plan.gpu["frozen_weights"] == 2 * QWEN2_7B_PARAMS  # about 14 GB
    trainable_state = plan.model_states - plan.gpu["frozen_weights"]
    assert 0.5e9 < trainable_state < 1e9  # 40M params x 20 B


def test_offload_moves_states_to_cpu():
    stats = inspect_model("smollm2-135m", "full")
    on_gpu = make_plan(PlanSpec("smollm2-135m", gpus=4, zero=3, mode="full"), stats)
    off = make_plan(PlanSpec("smollm2-135m", gpus=4, zero=3, mode="full", offload=True), stats)
    assert off.model_states == off.gpu["zero3_gathered_params"] < on_gpu.model_states
    assert off.cpu_per_node == pytest.approx(4 * (on_gpu.model_states - on_gpu.gpu["zero3_gathered_params"]),
                                             abs=16)
    with pytest.raises(SmecError, match="--offload"):
        make_plan(PlanSpec("smollm2-135m", zero=0, mode="full", offload=True), stats)


# --------------------------------------------------------------------------- activations


def test_activation_formula_reduces_to_korthikanti_for_a_gpt3_layer():
    h, a, s, b = 1024, 16, 512, 4
    gpt = ModelStats(name="gpt", arch="GPT", total_params=0, trainable_params=0, quantized_params=0,
                     largest_module_params=0, hidden=h, layers=24, heads=a, kv_heads=a, head_dim=h // a,
                     intermediate=4 * h, gated_mlp=False, dropout=True, eager_attention=True, max_positions=None)
    assert layer_activation_bytes(gpt, b, s) == s * b * h * 34 + 5 * a * s * s * b  # sbh(34 + 5as/h)
    # full recomputation keeps 2sbh per layer (plus one layer being recomputed and the final norm input)
    ckpt = activation_bytes(gpt, b, s, grad_ckpt=True)
    assert ckpt == 24 * 2 * s * b * h + layer_activation_bytes(gpt, b, s) + 2 * s * b * h
    assert ckpt < activation_bytes(gpt, b, s, grad_ckpt=False)


# --------------------------------------------------------------------------- the command


def test_cli_plan_qwen2_lora_prints_table(capsys):
    pytest.importorskip("peft")
    assert main(["plan", "--model", "qwen2-7b", "--gpus", "8", "--zero", "3", "--mode", "lora"]) == 0
    out = capsys.readouterr().out
    for row in ("frozen weights", "trainable weights", "gradients", "optimizer states", "model states",
                "activations, no checkpointing", "activations, checkpointing", "SMEC head", "S-XBM queue",
                "CPU RAM per node"):
        assert row in out
    totals = [line for line in out.splitlines() if line.startswith("total")]
    assert len(totals) == 1 and float(totals[0].split()[3]) > 0
    assert "trainable 40,370,176" in out
    assert "DeepSpeed estimator" in out
    assert "Setting accelerator" not in out  # DeepSpeed's import-time chatter stays out


def test_cli_plan_json_parses(capsys):
    pytest.importorskip("peft")
    assert main(["plan", "--model", "smollm2-135m", "--gpus", "2", "--zero", "2", "--mode", "qlora",
                 "--dims", "288,144", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    gib = data["per_gpu_gib"]
    assert data["params"]["trainable"] > 0 and data["setup"]["dims"] == [288, 144]
    assert data["per_gpu_bytes"]["total"] >= data["per_gpu_bytes"]["model_states"] > 0
    assert gib["sxbm_queue"] == round(65536 * (576 * 4 + 8) / 2**30, 2)
    assert data["deepspeed_line"].startswith("DeepSpeed estimator")


def test_cli_plan_bad_model_is_one_line_error(capsys):
    assert main(["plan", "--model", "no-such-model", "--gpus", "8", "--zero", "3"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("smec: error:") and "no-such-model" in err and "qwen2-7b" in err
    assert len(err.splitlines()) == 1


def test_plan_reads_a_train_config_and_flags_win(tmp_path, capsys):
    """``smec plan --config`` takes the backbone, LoRA, batch (a query and a document per
    pair), sequence length, queue, dims and the ZeRO stage of the config's DeepSpeed JSON."""
    cfg = tmp_path / "train.yaml"
    cfg.write_text("model: {name: Qwen/Qwen2-7B, max_length: 256}\n"
                   "run: {dims: [1792, 896]}\n"
                   "train: {queue_size: 1024}\n"
                   "e2e: {backbone: lora, lora_r: 8, per_device_batch: 4, gradient_checkpointing: true,\n"
                   "      deepspeed: ds_configs/zero3.json}\n")
    assert main(["plan", "--config", str(cfg), "--gpus", "8", "--json"]) == 0
    setup = json.loads(capsys.readouterr().out)["setup"]
    assert setup["model"] == "Qwen/Qwen2-7B" and setup["zero"] == 3 and setup["mode"] == "lora"
    assert (setup["lora_r"], setup["batch"], setup["seq_len"], setup["queue_size"]) == (8, 8, 256, 1024)
    assert setup["dims"] == [1792, 896] and setup["gpus"] == 8
    assert main(["plan", "--config", str(cfg), "--zero", "2", "--mode", "full", "--json"]) == 0
    setup = json.loads(capsys.readouterr().out)["setup"]
    assert (setup["zero"], setup["mode"], setup["gpus"]) == (2, "full", 1)


def test_plan_without_model_or_config_is_an_error(capsys):
    assert main(["plan", "--gpus", "8"]) == 2
    assert "needs --model or --config" in capsys.readouterr().err
