"""Typed configuration: dataclasses, YAML files, command-line overrides.

A config file is YAML with one mapping per section (``data``, ``model``, ``cache``,
``run``, ``train``); ``key=value`` overrides with dotted keys (``train.epochs=5``,
``run.dims=[96,48]``) merge on top. Unknown sections or keys are errors naming the file
and the key, and every value is checked in ``__post_init__``.

The package: :mod:`.schema` (the sections and their keys), :mod:`.losses` (each setting's
loss), :mod:`.load` (files, overrides, the key reference).
"""

from .load import RESOLVED, dump_config, key_reference, load_config, parse_overrides
from .losses import LossConfig, resolved_losses, setting_loss, train_loss
from .schema import (BACKBONE_MODES, DEFAULT_METHODS, METHODS, REMOVED_KEYS, SETTINGS, CacheConfig, Config, DataConfig,
                     E2EConfig, ModelConfig, RunConfig, SuiteConfig, TrackConfig, TrainConfig)

__all__ = ["BACKBONE_MODES", "DEFAULT_METHODS", "METHODS", "REMOVED_KEYS", "RESOLVED", "SETTINGS", "CacheConfig",
           "Config", "DataConfig", "E2EConfig", "LossConfig", "ModelConfig", "RunConfig", "SuiteConfig", "TrackConfig",
           "TrainConfig", "dump_config", "key_reference", "load_config", "parse_overrides", "resolved_losses",
           "setting_loss", "train_loss"]
