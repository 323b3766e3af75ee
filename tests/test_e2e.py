"""End-to-end mode on one process: bad input stops before any work, checkpoints are
complete or ignored, and a stage export loads without DeepSpeed."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest
import torch

from smec_dist.train.checkpoint import Checkpoints, MARKER, StopRequest, config_difference
from smec_dist.cli import main
from smec_dist.errors import SmecError
from tests.mini_beir import mini_data_dir

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return mini_data_dir(tmp_path_factory, n_queries=16, n_extra_docs=16)


@pytest.fixture(autouse=True)
def _cache(monkeypatch):
    monkeypatch.setenv("SMEC_CACHE", os.environ.get("SMEC_CACHE", str(ROOT / ".cache")))


def args(data_dir: Path, out: Path, *overrides: str) -> list[str]:
    return ["train", f"data.data_dir={data_dir}", "data.dataset=mini", "model.name=tiny-qwen2",
            "model.max_length=32", "run.dims=[32,16]", "run.progress=false", f"run.output_dir={out}",
            "train.topk=4", "train.queue_size=16", "e2e.per_device_batch=4", "e2e.steps_per_stage=3",
            "e2e.checkpoint_every=2", "e2e.basis_docs=8", *overrides]


def _error(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("smec: error: ") and "\n" not in err, err
    return err


# ------------------------------------------------------------------- bad input, before any work


def test_deepspeed_config_contradicting_the_trainer(data_dir, tmp_path, capsys):
    ds = tmp_path / "ds.json"
    ds.write_text(json.dumps({"zero_optimization": {"stage": 2}, "train_micro_batch_size_per_gpu": 3}))
    err = _error(capsys, args(data_dir, tmp_path / "out", f"e2e.deepspeed={ds}"))
    assert str(ds) in err and "train_micro_batch_size_per_gpu=3" in err and "e2e.per_device_batch=4" in err
    assert not (tmp_path / "out").exists()  # nothing written: the check came first


@pytest.mark.parametrize("bad, key", [
    ({"optimizer": {"type": "AdamW"}}, "optimizer"),
    ({"bf16": {"enabled": True}}, "bf16.enabled"),
    ({"gradient_accumulation_steps": 4}, "gradient_accumulation_steps"),
    ({"zero_optimization": {"stage": 5}}, "zero_optimization.stage"),
])
def test_deepspeed_contradictions_name_their_key(bad, key, data_dir, tmp_path, capsys):
    ds = tmp_path / "ds.json"
    ds.write_text(json.dumps({"zero_optimization": {"stage": 3}, **bad}))
    assert key in _error(capsys, args(data_dir, tmp_path / "out", f"e2e.deepspeed={ds}"))


def test_deepspeed_config_not_json_names_file_and_line(data_dir, tmp_path, capsys):
    ds = tmp_path / "ds.json"
    ds.write_text('{\n  "zero_optimization": {"stage": 2},\n  oops\n}')
    assert f"{ds}:3" in _error(capsys, args(data_dir, tmp_path / "out", f"e2e.deepspeed={ds}"))


def test_frozen_backbone_with_deepspeed_is_refused(data_dir, tmp_path, capsys):
    err = _error(capsys, args(data_dir, tmp_path / "out", "e2e.backbone=frozen", "e2e.deepspeed=ds_configs/zero2.json"))
    assert "frozen" in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="QLoRA is the GPU path")
def test_qlora_on_cpu_is_a_clear_error(data_dir, tmp_path, capsys):
    err = _error(capsys, args(data_dir, tmp_path / "out", "e2e.backbone=qlora"))
    assert "qlora" in err and "GPU" in err
    assert not (tmp_path / "out").exists()


def test_missing_lora_targets_are_named(data_dir, tmp_path, capsys):
    err = _error(capsys, args(data_dir, tmp_path / "out", "e2e.lora_targets=[q_proj,query,value]"))
    assert "query, value" in err and "q_proj, up_proj, v_proj" in err
    assert not (tmp_path / "out" / "checkpoints").exists()


def test_dims_at_or_above_the_backbone_width(data_dir, tmp_path, capsys):
    assert "backbone width 64" in _error(capsys, args(data_dir, tmp_path / "out", "run.dims=[64,32]"))


def test_split_without_judgments(data_dir, tmp_path, capsys):
    assert "e2e.split: 'dev'" in _error(capsys, args(data_dir, tmp_path / "out", "e2e.split=dev"))


def test_batch_larger_than_the_split(data_dir, tmp_path, capsys):
    assert "e2e.per_device_batch" in _error(capsys, args(data_dir, tmp_path / "out", "e2e.per_device_batch=64"))


# ------------------------------------------------------------------- checkpoints


def test_checkpoints_ignore_partial_and_unmarked_folders(tmp_path):
    ck = Checkpoints(tmp_path, {"model": {"name": "m"}})
    good = tmp_path / "step-00000004"
    good.mkdir()
    (good / MARKER).write_text(json.dumps({"fingerprint": {"model": {"name": "m"}}, "global_step": 4,
                                           "files": {}}))
    (tmp_path / "step-00000008.partial").mkdir()  # a save the kill interrupted
    (tmp_path / "step-00000006").mkdir()  # renamed but no marker: never complete
    assert ck.complete() == [(4, good)]
    assert ck.resolve("auto") == good
    assert ck.resolve("") is None
    with pytest.raises(SmecError, match="not a complete checkpoint"):
        ck.resolve(str(tmp_path / "step-00000008.partial"))
    assert Checkpoints(tmp_path / "none", {}).resolve("auto") is None  # nothing yet: a fresh start


def test_a_checkpoint_without_a_sha256_table_is_never_resumed(tmp_path):
    """Its pickles (Accelerate's, DeepSpeed's) could not be checked: refused, named."""
    old = tmp_path / "step-00000004"
    old.mkdir()
    (old / MARKER).write_text(json.dumps({"fingerprint": {}, "global_step": 4}))
    with pytest.raises(SmecError, match="no sha256 table"):
        Checkpoints(tmp_path, {}).resolve(str(old))
    with pytest.raises(SmecError, match="every complete checkpoint is damaged"):
        Checkpoints(tmp_path, {}).resolve("auto")


def test_checkpoint_of_another_config_names_the_difference(tmp_path):
    (tmp_path / "step-00000002").mkdir()
    (tmp_path / "step-00000002" / MARKER).write_text(json.dumps({"fingerprint": {"dims": [32, 16]}}))
    with pytest.raises(SmecError, match=r"another config \(dims: \[32, 16\] -> \[48, 24\]\)"):
        Checkpoints(tmp_path, {"dims": [48, 24]}).resolve("auto")
    assert config_difference({"a": {"b": 1}}, {"a": {"b": 2}}) == ["a.b: 1 -> 2"]


# ------------------------------------------------------------------- a real one-process run


@pytest.fixture(scope="module")
def trained(data_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "out"
    os.environ.setdefault("SMEC_CACHE", str(ROOT / ".cache"))
    assert main(args(data_dir, out, "e2e.backbone=lora", "e2e.backbone_lr=5e-3")) == 0
    return out


@pytest.mark.parametrize("backbone, training", [("full", True), ("lora", True), ("frozen", False)])
def test_backbone_trains_in_training_mode(backbone, training, data_dir, tmp_path):
    # from_pretrained returns eval mode; a trained backbone must drop out and checkpoint as
    # transformers does only in training mode, a frozen one must give deterministic embeddings
    from smec_dist.config import load_config
    from smec_dist.recipes.e2e import E2EJob

    cfg = load_config(None, args(data_dir, tmp_path / "out", f"e2e.backbone={backbone}",
                                 "e2e.gradient_checkpointing=true")[1:])
    job = E2EJob(cfg)
    try:
        job.setup()
        modes = {m.training for m in job.encoder.model.modules()}
        assert modes == {training}
        if backbone == "full":
            assert job.engine.opt.defaults["fused"]  # torch's fused AdamW kernel on CPU
    finally:
        job.cleanup()


def test_pairs_are_embedded_each_padded_to_its_own_longest(data_dir, tmp_path):
    from smec_dist.config import load_config
    from smec_dist.recipes.e2e import E2EJob

    job = E2EJob(load_config(None, args(data_dir, tmp_path / "out", "e2e.backbone=lora",
                                                  "model.max_length=256")[1:]))
    try:
        job.setup()
        widths = []
        tokenize = job.encoder.tokenize
        job.encoder.tokenize = lambda texts: (lambda b: widths.append(b["input_ids"].shape) or b)(tokenize(texts))
        queries, docs = torch.arange(4), torch.tensor([p[0] for p in job.pairs.positives[:4]])
        q, d = job.task.embed_pairs(queries, docs)
        assert q.shape == d.shape == (4, job.encoder.dim)
        assert len(widths) == 2 and widths[0][1] < widths[1][1]  # short queries are not padded to the docs
    finally:
        job.cleanup()


def test_one_process_run_writes_log_checkpoints_and_stage_exports(trained):
    log = json.loads((trained / "train_log.json").read_text())
    assert log["world_size"] == 1 and not log["deepspeed"] and len(log["losses"]) == 6
    assert set(log["probe_loss"]) == {"1", "2"}
    names = sorted(p.name for p in (trained / "checkpoints").iterdir())
    assert names == ["step-00000005", "step-00000006"]  # saved at 2, 3, 5, 6; keep_checkpoints=2; no .partial
    for s in (1, 2):
        meta = json.loads((trained / "stages" / f"stage{s}" / "smec.json").read_text())
        assert meta["dims"] == [32, 16][:s] and meta["pooling"] == "last" and meta["append_eos"]


def test_stop_request_mid_stage_checkpoints_and_resume_finishes_the_same(trained, data_dir, tmp_path, capsys,
                                                                         monkeypatch):
    from smec_dist.recipes.e2e import E2EJob

    original = E2EJob._on_step_end

    def signal_at_stage2_step1(self, trainer):
        original(self, trainer)
        if trainer.phase_index == 1 and trainer.step == 1:
            os.kill(os.getpid(), signal.SIGUSR1)  # as Slurm's --signal=USR1@... would

    monkeypatch.setattr(E2EJob, "_on_step_end", signal_at_stage2_step1)
    out = tmp_path / "out"
    run = args(data_dir, out, "e2e.backbone=lora", "e2e.backbone_lr=5e-3")
    assert main(run) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["stopped"] == {"stage": 2, "step_in_stage": 1}
    assert signal.getsignal(signal.SIGUSR1) is signal.SIG_DFL  # the handler is gone with the run
    marker = json.loads((out / "checkpoints" / "step-00000004" / MARKER).read_text())
    assert (marker["stage"], marker["step_in_stage"]) == (2, 1)
    assert not (out / "train_log.json").exists() and not (out / "stages" / "stage2").exists()

    monkeypatch.setattr(E2EJob, "_on_step_end", original)
    assert main([*run, "e2e.resume=auto"]) == 0
    resumed = json.loads((out / "train_log.json").read_text())
    assert resumed["losses"] == json.loads((trained / "train_log.json").read_text())["losses"]


def test_damaged_newest_checkpoint_falls_back_to_the_previous_one(trained, data_dir, tmp_path, caplog):
    import logging
    import shutil

    caplog.set_level(logging.INFO)
    out = tmp_path / "out"
    shutil.copytree(trained, out)
    newest = out / "checkpoints" / "step-00000006"
    listed = json.loads((newest / MARKER).read_text())["files"]
    assert listed and all(len(f["sha256"]) == 64 for f in listed.values())
    victim = newest / max(listed, key=lambda rel: listed[rel]["size"])  # flip a byte, keep the size
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF
    victim.write_bytes(bytes(data))
    (out / "train_log.json").unlink()
    assert main(args(data_dir, out, "e2e.backbone=lora", "e2e.backbone_lr=5e-3", "e2e.resume=auto")) == 0
    assert f"checkpoint {newest} is damaged" in caplog.text and "sha256 differs" in caplog.text
    assert "resuming from " + str(out / "checkpoints" / "step-00000005") in caplog.text
    resumed = json.loads((out / "train_log.json").read_text())
    assert resumed["losses"] == json.loads((trained / "train_log.json").read_text())["losses"]


def test_damaged_checkpoint_named_explicitly_is_refused(trained, data_dir, tmp_path, capsys):
    import shutil

    ckpt = tmp_path / "step-00000005"
    shutil.copytree(trained / "checkpoints" / "step-00000005", ckpt)
    victim = max((p for p in ckpt.rglob("*") if p.is_file() and p.name != MARKER), key=lambda p: p.stat().st_size)
    victim.write_bytes(victim.read_bytes()[:-10])
    err = _error(capsys, args(data_dir, tmp_path / "out", "e2e.backbone=lora", "e2e.backbone_lr=5e-3",
                              f"e2e.resume={ckpt}"))
    assert f"checkpoint {ckpt} is damaged" in err and "truncated" in err


def _nan_at(monkeypatch, stage: int, step: int, times: int = 1) -> None:
    """Make PairTask's loss NaN at (stage, step in stage), ``times`` times in a row."""
    from smec_dist.train.pairs import PairTask

    original, left = PairTask.loss, [times]

    def loss(self, phase, at):
        value = original(self, phase, at)
        if phase.name.startswith(f"stage{stage}:") and at == step and left[0] > 0:
            left[0] -= 1
            return value * float("nan")
        return value

    monkeypatch.setattr(PairTask, "loss", loss)


def test_non_finite_loss_stops_naming_stage_step_and_batch(data_dir, tmp_path, capsys, monkeypatch):
    _nan_at(monkeypatch, stage=2, step=1)
    out = tmp_path / "out"
    err = _error(capsys, args(data_dir, out, "e2e.backbone=lora"))
    assert "non-finite loss (nan) in stage2:32->16 (stage 2) at step 2 of 3, split 'train' queries " in err
    assert "newest complete checkpoint is kept" in err and "train.nonfinite=skip" in err
    kept = Checkpoints(out / "checkpoints", {}).complete()
    assert [s for s, _ in kept] == [2, 3]  # stage 1's checkpoints, untouched
    assert not (out / "train_log.json").exists()


def test_non_finite_loss_skip_mode_drops_the_step(data_dir, tmp_path, capsys, monkeypatch):
    _nan_at(monkeypatch, stage=2, step=1, times=2)
    out = tmp_path / "out"
    assert main(args(data_dir, out, "e2e.backbone=lora", "train.nonfinite=skip")) == 0
    log = json.loads((out / "train_log.json").read_text())
    assert log["skipped_steps"] == 2 and len(log["losses"]) == 6  # every stage still takes its 3 steps
    assert all(torch.isfinite(torch.tensor(log["losses"])))


def test_non_finite_skip_budget_exceeded_stops(data_dir, tmp_path, capsys, monkeypatch):
    _nan_at(monkeypatch, stage=1, step=0, times=5)
    err = _error(capsys, args(data_dir, tmp_path / "out", "e2e.backbone=lora", "train.nonfinite=skip",
                              "train.max_skipped=3"))
    assert "4 steps skipped, more than train.max_skipped=3" in err


def test_skip_mode_is_refused_under_deepspeed(data_dir, tmp_path, capsys):
    err = _error(capsys, args(data_dir, tmp_path / "out", "e2e.deepspeed=ds_configs/zero2.json",
                              "train.nonfinite=skip"))
    assert "train.nonfinite=skip: not under DeepSpeed" in err


def test_stop_request_file_and_signals(tmp_path):
    stop = StopRequest(tmp_path / "STOP")
    (tmp_path / "STOP").touch()
    old = stop.since - 10
    os.utime(tmp_path / "STOP", (old, old))
    assert not stop.requested()  # a leftover of an earlier stop: resuming needs no clean-up
    os.utime(tmp_path / "STOP")
    assert stop.requested() and "STOP exists" in stop.reason()

    stop = StopRequest(tmp_path / "none").install()
    try:
        assert not stop.requested()
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.requested() and stop.reason() == "signal SIGTERM"
    finally:
        stop.uninstall()
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_resume_folder_from_another_config_is_refused(trained, data_dir, capsys):
    err = _error(capsys, args(data_dir, trained, "run.dims=[48,24]", "--resume", "auto"))
    assert "checkpoint of another config" in err and "dims" in err


def test_stage_export_loads_without_deepspeed(trained):
    """The exported stage is a PEFT adapter + tokenizer + head: load with transformers and
    peft alone, encode, compress."""
    from peft import PeftModel
    from transformers import AutoModel, AutoTokenizer

    from smec_dist.backbone import Encoder, resolve_model
    from smec_dist.method.export import CompressedModel

    stage = trained / "stages" / "stage2"
    meta = json.loads((stage / "smec.json").read_text())
    base = AutoModel.from_pretrained(resolve_model(meta["base_model"]))
    model = PeftModel.from_pretrained(base, stage / "backbone").merge_and_unload()
    tok = AutoTokenizer.from_pretrained(stage / "backbone")
    enc = Encoder(model, tok, pooling=meta["pooling"], append_eos=meta["append_eos"], max_length=meta["max_length"])
    full = enc.encode(["a claim about cells", "another text"], progress=False)
    head = CompressedModel.load(stage / "head.safetensors")
    assert head.dims == [32, 16]
    small = head.compress(full, 16)
    assert small.shape == (2, 16)
    assert abs(float((small ** 2).sum(1)[0]) - 1.0) < 1e-5
    # the adapter changed the backbone: its output differs from the base model's
    plain = Encoder(AutoModel.from_pretrained(resolve_model(meta["base_model"])), tok, pooling="last",
                    append_eos=True, max_length=meta["max_length"]).encode(["a claim about cells"], progress=False)
    assert not torch.allclose(torch.from_numpy(full[:1]), torch.from_numpy(plain), atol=1e-6)


def test_evaluate_a_stage_export(trained, data_dir, capsys):
    stage = trained / "stages" / "stage2"
    assert main(["eval", "--stage", str(stage), f"data.data_dir={data_dir}", "data.dataset=mini",
                 "run.progress=false"]) == 0
    out = capsys.readouterr().out
    assert "| method | 64 | 32 | 16 |" in out and "| smec |" in out and "| truncate |" in out
    result = json.loads((stage / "eval" / "eval.json").read_text())
    assert result["world_size"] == 1 and result["split"] == "test"
    metrics = result["metrics"]
    assert set(metrics) == {"full", "smec", "truncate"}
    assert set(metrics["full"]) == {"64"} and set(metrics["smec"]) == set(metrics["truncate"]) == {"32", "16"}
    assert all(0.0 <= m["nDCG@10"] <= 1.0 for per in metrics.values() for m in per.values())
    # the SMEC head is not truncation: its rows differ
    assert metrics["smec"]["16"] != metrics["truncate"]["16"]
    # a second evaluation reuses the embeddings (same export: no shard rewritten), same figures
    shards = sorted((stage / "eval" / "embeddings").rglob("*.safetensors"))
    stamps = [p.stat().st_mtime_ns for p in shards]
    assert main(["evaluate", "--stage", str(stage), f"data.data_dir={data_dir}", "data.dataset=mini",
                 "run.progress=false"]) == 0
    assert [p.stat().st_mtime_ns for p in shards] == stamps
    assert json.loads((stage / "eval" / "eval.json").read_text())["metrics"] == metrics


def test_damaged_export_is_refused_on_load(trained, data_dir, tmp_path, capsys):
    import shutil

    stage = tmp_path / "stage2"
    shutil.copytree(trained / "stages" / "stage2", stage, ignore=shutil.ignore_patterns("eval"))
    listed = json.loads((stage / "manifest.json").read_text())["files"]
    assert {"head.safetensors", "smec.json", "backbone/adapter_model.safetensors"} <= set(listed)
    head = stage / "head.safetensors"
    data = bytearray(head.read_bytes())
    data[-1] ^= 0xFF
    head.write_bytes(bytes(data))
    err = _error(capsys, ["eval", "--stage", str(stage), f"data.data_dir={data_dir}", "data.dataset=mini"])
    assert f"{stage}: damaged export: {head}: sha256 differs" in err
    assert not (stage / "eval").exists()


def test_evaluate_something_that_is_not_an_export(tmp_path, capsys):
    assert "not a stage export" in _error(capsys, ["evaluate", "--stage", str(tmp_path)])


def _wandb_records(run_dir: Path) -> tuple[list[dict], dict]:
    """History rows and the final summary of an offline W&B run, read from its .wandb log
    (a LevelDB-style record log of protobuf ``Record`` messages; wandb 0.31 has no reader)."""
    (path,) = list(run_dir.glob("wandb/offline-run-*/run-*.wandb"))
    # wandb's finish() can return before its writer process has written the last records (seen
    # under load: the final history rows were missing when read at once); read when complete
    deadline = time.monotonic() + 120
    while True:
        history, summary, done = _parse_wandb(path)
        if done or time.monotonic() > deadline:
            return history, summary
        time.sleep(0.5)


def _parse_wandb(path):
    import struct

    from wandb.proto import wandb_internal_pb2

    data, pos, block, buf = path.read_bytes(), 7, 32768, b""
    history, summary, done = [], {}, False
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        buf += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # a FULL record, or the LAST chunk of one
            rec = wandb_internal_pb2.Record()
            rec.ParseFromString(buf)
            buf = b""
            if rec.WhichOneof("record_type") == "history":
                history.append({i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in rec.history.item})
            elif rec.WhichOneof("record_type") == "summary":
                summary.update({i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in rec.summary.update})
            elif rec.WhichOneof("record_type") == "exit":
                done = True  # the run's last record
    return history, summary, done


def test_wandb_offline_run_holds_per_stage_metrics(data_dir, tmp_path):
    out = tmp_path / "out"
    assert main(args(data_dir, out, "e2e.backbone=lora", "track.backend=wandb", "track.mode=offline")) == 0
    history, summary = _wandb_records(out)
    keys = set().union(*history)
    for s in (1, 2):
        assert {f"stage{s}/loss", f"stage{s}/probe_loss_start", f"stage{s}/probe_loss_end", f"stage{s}/seconds"} <= keys
    assert {"train/loss", "lr/head", "lr/backbone", "throughput/pairs_per_s", "memory/rss_gib", "queue/fill"} <= keys
    log = json.loads((out / "train_log.json").read_text())
    ends = [r["stage2/probe_loss_end"] for r in history if "stage2/probe_loss_end" in r]
    assert ends == [pytest.approx(log["probe_loss"]["2"]["end"])]
    assert summary["trainable_parameters"] == log["trainable_parameters"]


def test_tensorboard_run_holds_per_stage_metrics(data_dir, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "out"
    assert main(args(data_dir, out, "track.backend=tensorboard")) == 0
    assert not (out / "wandb").exists()
    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    for s in (1, 2):
        assert {f"stage{s}/loss", f"stage{s}/probe_loss_start", f"stage{s}/probe_loss_end"} <= tags
    assert {"train/loss", "lr/head", "lr/backbone", "queue/fill", "trainable_parameters"} <= tags
    log = json.loads((out / "train_log.json").read_text())
    assert [e.step for e in events.Scalars("train/loss")] == list(range(1, 7))
    assert [e.value for e in events.Scalars("train/loss")] == pytest.approx(log["losses"], rel=1e-6)
    assert events.Scalars("stage2/probe_loss_end")[0].value == pytest.approx(log["probe_loss"]["2"]["end"], rel=1e-6)


def test_no_secret_reaches_the_run_folder(data_dir, tmp_path, monkeypatch, capsys, caplog):
    secret = "wandb-secret-0123456789abcdef0123456789abcdef"
    monkeypatch.setenv("WANDB_API_KEY", secret)
    monkeypatch.setenv("HF_TOKEN", secret)
    out = tmp_path / "out"
    assert main(args(data_dir, out, "track.backend=wandb", "track.mode=offline")) == 0
    assert list((out / "wandb").rglob("*.wandb"))  # the offline run (config, history, summary) is there
    leaked = [p for p in out.rglob("*") if p.is_file() and secret.encode() in p.read_bytes()]
    assert leaked == []
    captured = capsys.readouterr()
    assert secret not in captured.out + captured.err + caplog.text


def test_tracking_switched_off_writes_nothing(data_dir, tmp_path):
    out = tmp_path / "out"
    assert main(args(data_dir, out, "track.backend=none")) == 0
    assert not (out / "wandb").exists() and not (out / "tensorboard").exists()

