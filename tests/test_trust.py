"""Outputs you can trust, through the ``smec`` command: a content-addressed embedding cache,
run folders that never clobber and never mix, heads that describe and check themselves, resume
without our own pickles, declared dependencies, and no noise in logs.

The tiny SciFact slice of test_cli (60 documents, real MiniLM) keeps each run to seconds.
"""

from __future__ import annotations

import ast
import json
import logging
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from smec_dist.cli import main
from test_cli import DATASET, assert_one_error_line, build_tiny_beir, invoke

ROOT = Path(__file__).resolve().parents[1]
FAST = ["run.dims=[32,16]", "train.epochs=1", "train.topk=10", "run.search_k=20", "run.k_values=[10,20]",
        "track.backend=none"]


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, data_dir) -> Path:
    base = tmp_path_factory.mktemp("trust")
    build_tiny_beir(data_dir / "scifact", base / "data" / DATASET)
    return base


def _run_args(data_root: Path, out: Path | str, *extra: str, methods: str = "[full,pca,smec]",
              progress: str = "run.progress=false") -> list[str]:
    """``smec run`` on the tiny set: the corpus-only setting, a few methods, one epoch."""
    return ["run", f"data.data_dir={data_root}", f"data.dataset={DATASET}", f"run.output_dir={out}",
            "run.settings=[corpus-only]", f"run.methods={methods}", *FAST, progress, *extra]


def _table(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _copy_data(tiny: Path, tmp_path: Path) -> Path:
    shutil.copytree(tiny / "data", tmp_path / "data")
    return tmp_path / "data"


# ------------------------------------------------------------------ 1. a content-addressed cache


def test_rewritten_texts_never_reuse_the_cache(tiny, tmp_path, caplog):
    """Same ids, every text rewritten: the second run must encode anew (and say why), and score
    exactly what a run with a fresh cache scores. (On f44ecf6 the old cache was reused:
    "complete and matches: reusing it", and stale scores came out.)"""
    data = _copy_data(tiny, tmp_path)
    runs = tmp_path / "runs"
    assert main(_run_args(data, runs / "a", methods="[full]")) == 0
    corpus = data / DATASET / "corpus.jsonl"
    docs = [json.loads(line) for line in corpus.read_text().splitlines()]
    texts = [d["text"] for d in docs]
    for d, text in zip(docs, texts[1:] + texts[:1]):  # every document gets another one's text
        d["text"] = text
    corpus.write_text("".join(json.dumps(d) + "\n" for d in docs))
    with caplog.at_level(logging.INFO):
        assert main(_run_args(data, runs / "b", methods="[full]")) == 0
    log = caplog.text
    assert "reusing it" not in log
    assert re.search(r"holds other embeddings \(parts\.corpus\.texts_sha256", log), log[-2000:]
    assert main(_run_args(data, runs / "c", f"cache.dir={tmp_path / 'fresh'}", methods="[full]")) == 0
    score = {r: json.loads((runs / r / "results.json").read_text())["settings"]["corpus-only"]["full"]["384"]
             for r in "abc"}
    assert score["b"]["nDCG@10"] == score["c"]["nDCG@10"] != score["a"]["nDCG@10"]
    assert len(list((runs / "cache").iterdir())) == 2  # one cache per content, side by side


def test_the_same_dataset_in_two_folders_shares_one_cache_only_if_identical(tiny, tmp_path, caplog):
    data = _copy_data(tiny, tmp_path)
    other = tmp_path / "elsewhere" / DATASET
    shutil.copytree(data / DATASET, other)
    runs = tmp_path / "runs"
    assert main(_run_args(data, runs / "a", methods="[full]")) == 0
    with caplog.at_level(logging.INFO):
        assert main(_run_args(other.parent, runs / "b", methods="[full]")) == 0
    assert "is complete and matches (model, settings and every text): reusing it" in caplog.text
    assert len(list((runs / "cache").iterdir())) == 1


def test_an_unsealed_cache_never_adopts_a_corrupted_shard(tiny, tmp_path, caplog):
    """A cache left without its manifest (a kill before sealing) with a shard whose bytes were
    altered since it was written: the next `smec encode` encodes that shard again instead of
    adopting it after a header check, and the sealed cache verifies."""
    from smec_dist.cache import MANIFEST, load_cache

    cache = tmp_path / "cache"
    args = ["encode", f"data.data_dir={tiny / 'data'}", f"data.dataset={DATASET}", f"cache.dir={cache}",
            "cache.shard_size=16", "cache.dtype=float32", "run.progress=false"]
    assert main(args) == 0
    reference = load_cache(cache).embeddings("corpus")
    (cache / MANIFEST).unlink()
    shard = cache / "corpus" / "shard-00001.safetensors"
    data = bytearray(shard.read_bytes())
    data[-4:] = bytes(4)  # same size, same header: only the bytes tell
    shard.write_bytes(bytes(data))
    with caplog.at_level(logging.INFO):
        assert main(args) == 0
    assert f"{shard}: does not match its checksum record: encoding it again" in caplog.text
    np.testing.assert_array_equal(load_cache(cache).embeddings("corpus"), reference)


# ------------------------------------------------------------------ 2. run folders that never clobber


def test_a_run_refuses_a_folder_holding_another_run(tiny, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(_run_args(tiny / "data", out)) == 0
    before = _table(out)
    capsys.readouterr()
    rc = main(_run_args(tiny / "data", out))
    cap = capsys.readouterr()
    assert_one_error_line(rc, cap.out, cap.err, str(out), "holds another run's results", "--overwrite")
    assert _table(out) == before
    assert not list(tmp_path.glob(".out.*"))  # no staging folder left
    assert main(["run", "--overwrite", *_run_args(tiny / "data", out)[1:]]) == 0
    assert _table(out) != before and (out / "results.json").exists()


@pytest.mark.parametrize("output_dir", ["", "."])
def test_the_current_folder_is_never_a_run_folder(tiny, tmp_path, capsys, monkeypatch, output_dir):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "report.md").write_text("the user's own report\n")
    rc = main(_run_args(tiny / "data", output_dir))
    cap = capsys.readouterr()
    assert_one_error_line(rc, cap.out, cap.err, "run.output_dir", "not a run folder")
    assert (tmp_path / "report.md").read_text() == "the user's own report\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.md"]


@pytest.mark.parametrize("kind", ["file", "under-a-file"])
def test_an_output_folder_that_cannot_be_written_fails_before_any_work(tiny, tmp_path, capsys, kind):
    (tmp_path / "f").write_text("a file\n")
    out = tmp_path / "f" if kind == "file" else tmp_path / "f" / "out"
    rc = main(_run_args(tiny / "data", out, f"cache.dir={tmp_path / 'cache'}"))
    cap = capsys.readouterr()
    assert_one_error_line(rc, cap.out, cap.err, "run.output_dir", str(out))
    assert not (tmp_path / "cache").exists()  # nothing was encoded


# ------------------------------------------------------------------ 3. runs never mix


def _smec(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    full_env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", **(env or {}))
    return subprocess.run([sys.executable, "-m", "smec_dist.cli", *args], cwd=ROOT, env=full_env,
                          capture_output=True, text=True, timeout=600)


def test_sigkill_during_the_final_swap_leaves_the_previous_run_intact(tiny, tmp_path):
    """A re-run with --overwrite killed at the moment its folder is swapped in: the previous
    run's folder is whole (every file as it was), its heads load and compress."""
    out = tmp_path / "out"
    args = _run_args(tiny / "data", out, f"cache.dir={tmp_path / 'cache'}")
    assert _smec(*args).returncode == 0
    before = _table(out)
    killed = _smec("run", "--overwrite", *args[1:], "train.seed=7", env={"SMEC_FAULT": "publish:before"})
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert _table(out) == before
    np.save(tmp_path / "x.npy", np.random.default_rng(0).standard_normal((3, 384)).astype(np.float32))
    ok = _smec("compress", "--head", str(out / "models" / "corpus-only" / "smec.safetensors"), "--input",
               str(tmp_path / "x.npy"), "--dim", "16", "--output", str(tmp_path / "y.npy"))
    assert ok.returncode == 0, ok.stderr
    again = _smec("run", "--overwrite", *args[1:], "train.seed=7")  # the next run replaces it whole
    assert again.returncode == 0, again.stderr[-2000:]
    assert _table(out) != before and not list(tmp_path.glob(".out.*"))


def test_a_folder_left_aside_by_a_kill_between_two_renames_is_put_back(tmp_path):
    """Where two folders cannot be swapped in one step, a kill between the two renames leaves the
    previous run beside its name; the next run puts it back before anything else."""
    from smec_dist.recipes.base import stage_run_folder

    out = tmp_path / "out"
    aside = tmp_path / ".out.1234.old"
    aside.mkdir()
    (aside / "results.json").write_text("{}")
    with pytest.raises(Exception, match="holds another run's results"):
        stage_run_folder(out, overwrite=False)
    assert (out / "results.json").read_text() == "{}" and not aside.exists()


# ------------------------------------------------------------------ 5. heads that describe themselves


def test_heads_say_what_they_expect_and_refuse_tampering_anywhere(tiny, tmp_path, capsys):
    from safetensors import safe_open
    from safetensors.torch import save_file

    from smec_dist.backbone import model_identity
    from smec_dist.method.export import head_about

    out = tmp_path / "out"
    assert main(_run_args(tiny / "data", out, f"cache.dir={tmp_path / 'cache'}")) == 0
    head = out / "models" / "corpus-only" / "smec.safetensors"
    about = head_about(head)
    assert about["base_model"]["sha256"] == model_identity("minilm")["sha256"]
    assert (about["pooling"], about["max_length"], about["normalize"]) == ("mean", 256, True)
    assert about["instructions"] == {"query": "", "doc": ""} and about["dims"] == [32, 16]
    assert (about["method"], about["setting"], about["full_dim"]) == ("smec", "corpus-only", 384)

    copied = tmp_path / "away" / "smec.safetensors"  # out of its run folder, no manifest around it
    copied.parent.mkdir()
    with safe_open(str(head), framework="pt") as f:
        meta, state = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    state["stages.1.transform.linear.weight"][3, 3] += 0.01
    save_file(state, str(copied), metadata=meta)
    np.save(tmp_path / "x.npy", np.ones((2, 384), dtype=np.float32))
    capsys.readouterr()
    rc = main(["compress", "--head", str(copied), "--input", str(tmp_path / "x.npy"), "--dim", "16",
               "--output", str(tmp_path / "y.npy")])
    cap = capsys.readouterr()
    assert_one_error_line(rc, cap.out, cap.err, str(copied), "sha256")
    assert not (tmp_path / "y.npy").exists()

    np.save(tmp_path / "narrow.npy", np.ones((2, 128), dtype=np.float32))
    rc = main(["compress", "--head", str(head), "--input", str(tmp_path / "narrow.npy"), "--dim", "16",
               "--output", str(tmp_path / "y.npy")])
    cap = capsys.readouterr()
    assert_one_error_line(rc, cap.out, cap.err, "expected (n, 384)", "384-dim embeddings of minilm",
                          "mean pooling")


# ------------------------------------------------------------------ 6. resume without our pickles


def test_checkpoints_hold_the_run_state_without_pickle(tmp_path, tmp_path_factory):
    from tests.mini_beir import mini_data_dir

    root = mini_data_dir(tmp_path_factory, n_queries=8, n_extra_docs=16)
    out = tmp_path / "train"
    args = ["train", f"data.data_dir={root}", "data.dataset=mini", "model.name=tiny-qwen2", "model.max_length=32",
            "run.dims=[32,16]", "run.progress=false", f"run.output_dir={out}", "train.topk=4",
            "train.queue_size=16", "e2e.per_device_batch=4", "e2e.steps_per_stage=4", "e2e.checkpoint_every=2",
            "e2e.basis_docs=8", "e2e.backbone=lora", "track.backend=none"]
    rc, stdout, stderr = invoke(args)
    assert rc == 0, stderr[-2000:]
    ckpts = sorted((out / "checkpoints").iterdir())
    assert ckpts
    for ck in ckpts:
        names = {p.name for p in ck.rglob("*")}
        assert {"run_state.safetensors", "run_state.json"} <= names
        assert not [n for n in names if n.startswith("custom_checkpoint")], names  # nothing of ours is pickled
    # an altered file of the newest checkpoint: resume falls back to the previous one, never loads it
    marker = json.loads((ckpts[-1] / "complete.json").read_text())
    assert "run_state.json" in marker["files"]
    # a folder holding a finished run is not trained into again without --resume or --overwrite
    rc, stdout, stderr = invoke(args)
    assert rc == 2 and "holds another run" in stderr and "--resume auto" in stderr


# ------------------------------------------------------------------ 7. declared dependencies


def test_every_third_party_import_is_declared():
    """Each package smec_dist imports (at any depth) is a declared dependency or extra: nothing
    works only because it happens to be installed."""
    import importlib.metadata as md
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = {re.split(r"[<>=!\[ ;]", d, maxsplit=1)[0].lower().replace("_", "-")
                for d in project["dependencies"] + sum(project["optional-dependencies"].values(), [])}
    dists = md.packages_distributions()
    stdlib = set(sys.stdlib_module_names)
    missing = {}
    for path in (ROOT / "smec_dist").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module else []
            for name in names:
                top = name.split(".")[0]
                if top in stdlib or top == "smec_dist":
                    continue
                found = {d.lower().replace("_", "-") for d in dists.get(top, [])}
                if not found & declared:
                    missing[top] = str(path.relative_to(ROOT))
    assert not missing, missing


# ------------------------------------------------------------------ 8. no noise


def test_logs_hold_no_loader_noise_and_no_bars_off_a_terminal(tiny, tmp_path):
    proc = _smec(*_run_args(tiny / "data", tmp_path / "out", f"cache.dir={tmp_path / 'cache'}",
                            progress="run.progress=null"))  # the default: bars on a terminal only
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "faiss.loader" not in proc.stderr and "Could not load library" not in proc.stderr
    assert "it/s" not in proc.stderr and "text/s" not in proc.stderr and "\r" not in proc.stderr


def test_version_and_quiet():
    proc = _smec("--version")
    assert proc.returncode == 0 and re.fullmatch(r"smec-dist \d+\.\d+\.\d+\n", proc.stdout)
    quiet = _smec("-q", "config")
    assert quiet.returncode == 0 and quiet.stderr == "" and "data:" in quiet.stdout


# ------------------------------------------------------------------ run.select: the best head per dim


def test_select_on_validation_exports_the_best_head_per_dim(tiny, tmp_path):
    """run.select=validation: per dim, the method and setting with the best validation nDCG@10
    (PCA and truncation compete), one file serving every dim, the choice recorded."""
    from smec_dist.method.export import CompressedModel, head_about

    out = tmp_path / "out"
    assert main(_run_args(tiny / "data", out, f"cache.dir={tmp_path / 'cache'}", "run.validation=holdout:0.25",
                          "run.select=validation", methods="[full,truncation,pca,mrl,smec]")) == 0
    results = json.loads((out / "results.json").read_text())
    best = results["meta"]["best"]
    assert set(best) == {"32", "16"}
    for dim, choice in best.items():
        scores = {(s, m): v[dim]["nDCG@10"] for s, ms in results["validation"].items() for m, v in ms.items()
                  if dim in v}
        assert choice["validation nDCG@10"] == max(scores.values())
    head = out / "models" / "best.safetensors"
    assert head_about(head)["selected"] == best
    model = CompressedModel.load(head)
    x = torch.randn(5, 384)
    for dim, choice in best.items():
        y = model.compress(x.numpy(), int(dim))
        assert y.shape == (5, int(dim)) and np.allclose(np.linalg.norm(y, axis=1), 1.0, atol=1e-5)
        if choice["method"] != "pca" and choice["method"] != "truncation":
            other = CompressedModel.load(out / "models" / choice["setting"] / f"{choice['method']}.safetensors")
            np.testing.assert_allclose(y, other.compress(x.numpy(), int(dim)), atol=1e-6)
