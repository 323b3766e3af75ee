"""bench.encode on a tiny input: the JSON it writes and that both encoders agree (never its speed)."""

import json

import numpy as np
import pytest

from bench.encode import main, same_input_ids, sentence_transformer
from smec_dist.backbone import Encoder, load_encoder, resolve_model

pytest.importorskip("sentence_transformers")


def test_minilm_tiny_run_writes_json_and_embeddings_agree(tmp_path, data_dir, capsys):
    out = tmp_path / "encode.json"
    assert main(["--models", "minilm", "--limit", "16", "--repeats", "1", "--batch-size", "8",
                 "--max-length", "64", "--warmup-docs", "2", "--data-dir", str(data_dir),
                 "--json-out", str(out)]) == 0
    results = json.loads(out.read_text())
    meta = results["meta"]
    assert meta["batch_size"] == 8 and meta["max_length"] == 64 and meta["dtype"] == "float32"
    assert len(meta["loadavg_before"]) == 3 and meta["torch_threads"] >= 1
    (row,) = results["rows"]
    assert row["model"] == "minilm" and row["n_docs"] == 16 and row["pooling"] == "mean"
    assert row["same_input_ids"] is True
    # every real token is fed once per call on each side, padding on top
    assert row["padded_tokens"]["ours"] >= row["real_tokens"] and row["padded_tokens"]["theirs"] >= row["real_tokens"]
    assert len(row["ours_s"]) == len(row["theirs_s"]) == len(row["ours_cpu_s"]) == 1
    for key in ("ours_docs_per_s", "theirs_docs_per_s", "ratio", "paired_ratio", "cpu_ratio"):
        assert row[key] > 0
    assert row["max_abs_diff"] < 1e-4
    assert "ours/theirs" in capsys.readouterr().out


def test_decoder_with_eos_gets_identical_ids_and_embeddings(tmp_path):
    # SmolLM2 stands in: the tiny decoder, its tokenizer stripped of special tokens (as
    # SmolLM2's adds none), so the benchmark's EOS post-processor must reproduce our truncation
    import shutil

    from tokenizers import processors
    from transformers import AutoTokenizer

    tiny = resolve_model("tiny-qwen2", tmp_path)
    folder = tmp_path / "plain-tokenizer"
    shutil.copytree(tiny, folder)
    tok = AutoTokenizer.from_pretrained(tiny)
    tok._tokenizer.post_processor = processors.TemplateProcessing(single="$A", pair="$A $B", special_tokens=[])
    tok.save_pretrained(folder)

    ours = load_encoder(str(folder), pooling="last", append_eos=True, max_length=8, device="cpu")
    theirs = sentence_transformer(folder, "last", True, True, 8, "cpu")
    texts = ["one two three four five six seven eight nine ten", "hi", "protein folding"]
    assert same_input_ids(ours, theirs, texts)
    assert (ours.tokenize(texts)["input_ids"][0, -1] == tok.eos_token_id).item()  # EOS survived truncation
    np.testing.assert_allclose(ours.encode(texts, progress=False), theirs.encode(texts), atol=1e-5)


def test_tokenizer_adding_special_tokens_is_refused(tmp_path):
    # appending EOS would replace [CLS] ... [SEP]: the comparison would not be like for like
    from smec_dist.errors import SmecError

    with pytest.raises(SmecError, match="already adds special tokens"):
        sentence_transformer(resolve_model("tiny-qwen2", tmp_path), "last", True, True, 8, "cpu")


def test_same_input_ids_sees_a_difference():
    ours = load_encoder("minilm", max_length=16, device="cpu")
    theirs = sentence_transformer(resolve_model("minilm"), "mean", False, True, 16, "cpu")
    texts = ["protein folding in the cell", "a"]
    assert same_input_ids(ours, theirs, texts)
    shorter = Encoder(ours.model, ours.tokenizer, max_length=4)
    assert not same_input_ids(shorter, theirs, texts)
    np.testing.assert_allclose(ours.encode(texts, progress=False), theirs.encode(texts), atol=1e-5)
