"""The one place each training setting's loss (KL temperature, InfoNCE weight) is decided."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from .schema import SETTINGS, Config, TrainConfig, _one_of

@dataclass(frozen=True)
class LossConfig:
    """The loss one training setting trains with, as decided by :func:`setting_loss`.

    Attributes:
        temperature: softmax temperature of the listwise KL between teacher and student.
        infonce_weight: weight of InfoNCE on judged pairs (0 without judgments).
        kl_weight / pairwise_weight / infonce_temperature: ``train.*``, the same in every
            setting.
    """

    temperature: float
    infonce_weight: float
    kl_weight: float
    pairwise_weight: float
    infonce_temperature: float


def setting_loss(cfg: Config, setting: str) -> LossConfig:
    """The one place a setting's KL temperature and InfoNCE weight are decided.

    Each value comes from exactly one key:

    ================================  ==============================  ================================
    setting                           temperature                     InfoNCE weight
    ================================  ==============================  ================================
    ``unsupervised-queries``          ``train.temperature``           0 (no judgments)
    ``corpus-only``                   ``run.corpus_only_temperature`` 0 (no judgments)
    ``supervised`` (and ``smec        ``run.supervised_temperature``  ``run.supervised_infonce_weight``
    train``, which trains on judged
    pairs)
    ================================  ==============================  ================================

    Jobs record the result per setting (``meta.loss`` in results.json, ``resolved.loss`` in
    the run's config.yaml).
    """
    _one_of("setting", setting, SETTINGS)
    temperature, infonce = {
        "unsupervised-queries": (cfg.train.temperature, 0.0),
        "corpus-only": (cfg.run.corpus_only_temperature, 0.0),
        "supervised": (cfg.run.supervised_temperature, cfg.run.supervised_infonce_weight),
    }[setting]
    return train_loss(cfg.train, temperature, infonce)


def train_loss(train: TrainConfig, temperature: float | None = None, infonce_weight: float = 0.0) -> LossConfig:
    """A loss from ``train.*`` (``train.temperature`` unless ``temperature`` is given): what a
    head trained outside a job (a test, a benchmark, the Python API) trains with by default."""
    return LossConfig(temperature=train.temperature if temperature is None else temperature,
                      infonce_weight=infonce_weight, kl_weight=train.kl_weight,
                      pairwise_weight=train.pairwise_weight, infonce_temperature=train.infonce_temperature)


def resolved_losses(cfg: Config, settings) -> dict:
    """``{setting: LossConfig as a dict}``: what results.json and config.yaml record."""
    return {s: asdict(setting_loss(cfg, s)) for s in settings}
