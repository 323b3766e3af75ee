"""`smec eval` on one process: heads written by adapter mode, methods, dims, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from smec_dist.cli import main
from smec_dist.recipes.evaluate import SmecModel
from smec_dist.method.baselines import PrefixHead
from smec_dist.method.smrl import SMECHead
from smec_dist.method.export import save_head
from tests.mini_beir import mini_data_dir


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return mini_data_dir(tmp_path_factory, n_queries=12, n_extra_docs=24)


@pytest.fixture(scope="module")
def heads(tmp_path_factory) -> list[Path]:
    root = tmp_path_factory.mktemp("heads")
    torch.manual_seed(0)
    smec = SMECHead(384, [192, 96])
    with torch.no_grad():  # an untrained head is close to truncation: make it a different map
        for p in smec.parameters():
            p.add_(0.3 * torch.randn_like(p))
    for st in smec.stages:
        st.ads.freeze()
    return [save_head(smec, root / "supervised" / "smec.safetensors"),
            save_head(PrefixHead(384, [192, 96, 48]), root / "supervised" / "mrl.safetensors")]


def common(data_dir: Path, out: Path, *overrides: str) -> list[str]:
    """Options, then the overrides (argparse takes the positional overrides in one block)."""
    return ["--config", "configs/scifact-minilm.yaml", "--output", str(out), f"data.data_dir={data_dir}",
            "data.dataset=mini", "run.progress=false", "model.max_length=64", *overrides]


def _error(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("smec: error: ") and "\n" not in err, err
    return err


def test_heads_from_adapter_mode_are_methods(data_dir, heads, tmp_path, capsys):
    argv = ["eval"]
    for h in heads:
        argv += ["--head", str(h)]
    argv += common(data_dir, tmp_path / "ev")
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "| method | 384 | 192 | 96 | 48 |" in out
    result = json.loads((tmp_path / "ev" / "eval.json").read_text())
    metrics = result["metrics"]
    assert set(metrics) == {"full", "smec", "mrl", "truncate"}
    assert set(metrics["smec"]) == {"192", "96"} and set(metrics["mrl"]) == {"192", "96", "48"}
    assert set(metrics["truncate"]) == {"192", "96", "48"}  # every dim some head has
    assert (tmp_path / "ev" / "eval.md").read_text().startswith("# minilm on mini test")
    assert 0 < metrics["full"]["384"]["nDCG@10"] <= 1
    # an untrained prefix head starts as the identity: truncation; the SMEC head selects and maps
    assert metrics["mrl"]["96"] == metrics["truncate"]["96"]
    assert metrics["smec"]["96"] != metrics["truncate"]["96"]


def test_methods_option_selects(data_dir, heads, tmp_path):
    assert main(["eval", "--head", str(heads[1]), "--methods", "mrl", *common(data_dir, tmp_path / "ev")]) == 0
    assert set(json.loads((tmp_path / "ev" / "eval.json").read_text())["metrics"]) == {"full", "mrl"}


def test_model_encode_and_compress_agree(heads):
    model = SmecModel.from_model("minilm", [heads[0]], max_length=64, device="cpu")
    texts = ["a claim about cells", "another text"]
    full = model.encode(texts, "doc")
    assert full.shape == (2, 384) and np.allclose((full ** 2).sum(1), 1, atol=1e-5)
    small = model.encode(texts, "query", dim=96)  # default method: the first head
    assert small.shape == (2, 96)
    np.testing.assert_allclose(small, model.compress(model.encode(texts, "query"), "smec", 96), atol=1e-6)
    cut = model.encode(texts, "doc", dim=50, method="truncate")
    np.testing.assert_allclose(cut, full[:, :50] / np.linalg.norm(full[:, :50], axis=1, keepdims=True), atol=1e-6)


@pytest.mark.parametrize("extra, message", [
    (["--head", "nowhere/smec.safetensors"], "nowhere/smec.safetensors: no such head file"),
    (["--methods", "bogus"], "unknown method 'bogus'"),
    (["--stage", "x", "--head", "y"], "--stage and --head exclude each other"),
    (["--stage", "not-a-stage"], "not-a-stage: not a stage export"),
    (["--mteb-dim", "100", "--head", "HEAD"], "dim 100 is not one of method 'smec''s dims [192, 96]"),
    (["data.eval_split=dev"], "data.eval_split: 'dev' is not a split"),
])
def test_bad_input_is_one_line(data_dir, heads, tmp_path, capsys, extra, message):
    extra = [str(heads[0]) if e == "HEAD" else e for e in extra]
    overrides = [e for e in extra if "=" in e]
    options = [e for e in extra if "=" not in e]
    assert message in _error(capsys, ["eval", *options, *common(data_dir, tmp_path / "ev", *overrides)])
    assert not (tmp_path / "ev" / "eval.json").exists()


def test_mteb_next_to_ours(data_dir, tmp_path, capsys):
    out = tmp_path / "ev"
    assert main(["eval", *common(data_dir, out)[:4], "--mteb", "mini", *common(data_dir, out)[4:]]) == 0
    assert "MTEB mini: nDCG@10" in capsys.readouterr().out
    result = json.loads((out / "eval.json").read_text())
    ours = result["metrics"]["full"]["384"]["nDCG@10"]
    theirs = result["mteb"]["mini"]["ndcg_at_10"]
    assert abs(theirs - ours) <= 5e-6, (theirs, ours)  # MTEB rounds to 5 decimals
    files = list((out / "mteb").rglob("LocalBEIR-mini.json"))
    assert len(files) == 1 and json.loads(files[0].read_text())["task_name"] == "LocalBEIR-mini"


def test_unknown_mteb_task_fails_before_encoding(data_dir, tmp_path, capsys):
    assert "task 'no-such-task'" in _error(capsys, ["eval", "--mteb", "no-such-task", *common(data_dir, tmp_path / "ev")])
    assert not (tmp_path / "ev" / "embeddings").exists()
