"""The adapter job on an STS dataset (STS-B): Spearman of cosine similarities per method and dim."""

from __future__ import annotations

import logging
import time
from types import SimpleNamespace

import numpy as np
import torch
import torch.nn.functional as F

from ..cache import load_cache
from ..config import resolved_losses
from ..data import ensure_dataset, load_sts_dir
from ..errors import SmecError
from ..evaluation.sts import cosine_spearman
from ..train.samplers import TrainSet
from .adapter import Job, check_dims, subsample
from .encode import encode

log = logging.getLogger(__name__)


class StsJob(Job):
    """The main job on an STS dataset (STS-B).

    The train split's distinct sentences play the corpus: they are the anchors of the
    ``corpus-only`` setting (unlabelled: each sentence's neighbourhood among them is
    preserved) and the PCA basis; the ``supervised`` setting trains on the train pairs scored
    at least ``STS_POSITIVE`` (first sentence -> second) with InfoNCE. Scores come from
    ``data.eval_split`` (test).
    """

    retrieval = False
    STS_POSITIVE = 4.0

    def setup(self) -> None:
        cfg = self.cfg
        self.stage_output()
        t = time.perf_counter()
        root = ensure_dataset(cfg.data.dataset, cfg.data.data_dir)
        if "unsupervised-queries" in cfg.run.settings:
            raise SmecError(f"run.settings: 'unsupervised-queries' needs query texts; {root} is an STS dataset "
                            f"(use corpus-only and supervised)")
        if cfg.run.validation:
            raise SmecError(f"run.validation: holds out judged retrieval queries; {root} is an STS dataset "
                            f"(score a dev split with data.eval_split instead)")
        train = load_sts_dir(root, "train")
        self.pairs = load_sts_dir(root, cfg.data.eval_split)
        check_dims(cfg)
        texts = list(dict.fromkeys([p.s1 for p in train] + [p.s2 for p in train]
                                   + [p.s1 for p in self.pairs] + [p.s2 for p in self.pairs]))
        row = {x: i for i, x in enumerate(texts)}
        ids = [f"s{i}" for i in range(len(texts))]
        self.timings["load data"] = time.perf_counter() - t

        t = time.perf_counter()
        ds = SimpleNamespace(root=root, name=root.name)
        cache_dir = encode(cfg, ds, {"sentences": (ids, texts)})
        emb = F.normalize(torch.from_numpy(load_cache(cache_dir).embeddings("sentences")), dim=-1)  # (n, D)
        self.timings["encode (cache)"] = time.perf_counter() - t
        self.ds, self.full_dim = ds, emb.shape[1]
        train_rows = sorted({row[p.s1] for p in train} | {row[p.s2] for p in train})
        self.corpus = emb[train_rows]  # (n_train_sentences, D)
        self.e1 = emb[[row[p.s1] for p in self.pairs]]
        self.e2 = emb[[row[p.s2] for p in self.pairs]]
        self.gold = np.array([p.score for p in self.pairs])
        at = {r: i for i, r in enumerate(train_rows)}
        good = [p for p in train if p.score >= self.STS_POSITIVE]
        self.pos_anchor = emb[[row[p.s1] for p in good]]
        self.pos_rows = [[at[row[p.s2]]] for p in good]
        log.info("STS dataset %s: %d train sentences, %d train pairs (%d scored >= %.0f), %d %s pairs; width %d",
                 root.name, len(train_rows), len(train), len(good), self.STS_POSITIVE, len(self.pairs),
                 cfg.data.eval_split, self.full_dim)
        self.start_tracking()

    def evaluate(self, compress) -> dict[str, dict]:
        with torch.no_grad():
            a, b = compress(self.e1), compress(self.e2)
        return {"eval": {"Spearman": cosine_spearman(a.numpy(), b.numpy(), self.gold),
                         "bytes/doc": float(a.shape[1] * 4)}}

    def train_set(self, setting: str) -> TrainSet:
        gen = torch.Generator().manual_seed(self.cfg.train.seed)
        if setting == "corpus-only":
            anchors, anchor_doc, positives = self.corpus, torch.arange(len(self.corpus)), None
        else:
            anchors, anchor_doc, positives = self.pos_anchor, torch.full((len(self.pos_anchor),), -1), self.pos_rows
        return subsample(TrainSet(anchors, self.corpus, anchor_doc, positives), self.cfg.run.max_anchors, gen)

    def meta(self) -> dict:
        return {"dataset": self.ds.name, "model": self.cfg.model.name, "full_dim": self.full_dim,
                "dims": self.cfg.run.dims, "eval_split": self.cfg.data.eval_split, "n_pairs": len(self.pairs),
                "n_train_sentences": len(self.corpus), "seeds": list(self.cfg.run.seeds),
                "loss": resolved_losses(self.cfg, self.cfg.run.settings),
                "metric": "Spearman", "metrics": ["Spearman"]}
