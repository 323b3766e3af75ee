"""Tests of the typed configuration (smec_dist.config): YAML files, overrides, round trip, errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from smec_dist.config import (
    DEFAULT_METHODS,
    SETTINGS,
    CacheConfig,
    Config,
    DataConfig,
    ModelConfig,
    RunConfig,
    TrainConfig,
    dump_config,
    load_config,
    parse_overrides,
)
from smec_dist.errors import SmecError

ROOT = Path(__file__).resolve().parents[1]
CONFIG_FILES = sorted((ROOT / "configs").glob("*.yaml")) + sorted((ROOT / "configs").glob("*.yml"))


@pytest.fixture(autouse=True)
def _no_data_dir_env(monkeypatch):
    """DataConfig swaps in $SMEC_DATA_DIR for the default data_dir; keep the defaults fixed."""
    monkeypatch.delenv("SMEC_DATA_DIR", raising=False)


def write(tmp_path: Path, text: str, name: str = "cfg.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def error_of(path=None, overrides=None) -> str:
    """The message of the SmecError that load_config raises; it must be a single line."""
    with pytest.raises(SmecError) as info:
        load_config(path, overrides)
    msg = str(info.value)
    assert msg and "\n" not in msg and "\r" not in msg, repr(msg)
    assert "Traceback" not in msg
    return msg


# --------------------------------------------------------------------------- shipped configs


def test_configs_folder_is_not_empty():
    assert CONFIG_FILES, f"no YAML files in {ROOT / 'configs'}"


@pytest.mark.parametrize("path", CONFIG_FILES, ids=lambda p: p.name)
def test_shipped_config_loads(path: Path):
    cfg = load_config(path)
    assert isinstance(cfg, Config)
    # the values the file sets are the values loaded (no key silently dropped)
    import yaml

    raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    for section, values in raw.items():
        for key, value in values.items():
            loaded = getattr(getattr(cfg, section), key)
            assert loaded == value, f"{path.name}: {section}.{key} loaded as {loaded!r}, file says {value!r}"


@pytest.mark.parametrize("path", CONFIG_FILES, ids=lambda p: p.name)
def test_shipped_config_states_its_launch_command(path: Path):
    head = path.read_text(encoding="utf-8").splitlines()[:6]
    comments = [line for line in head if line.lstrip().startswith("#")]
    assert comments, f"{path.name}: no header comment"
    text = "\n".join(comments)
    assert any(c in text for c in ("smec run", "smec suite", "launch/")), f"{path.name}: header does not say how to launch it:\n{text}"
    assert path.name in text, f"{path.name}: the launch command in the header does not name the file itself"


# --------------------------------------------------------------------------- defaults


def test_defaults_are_valid_and_complete():
    cfg = load_config()
    assert cfg == Config()
    assert cfg.run.settings == list(SETTINGS) and cfg.run.methods == list(DEFAULT_METHODS)
    assert cfg.run.dims == sorted(cfg.run.dims, reverse=True)
    assert set(cfg.to_dict()) == {"data", "model", "cache", "run", "train", "e2e", "track", "suite"}
    assert isinstance(cfg.data, DataConfig) and isinstance(cfg.model, ModelConfig)
    assert isinstance(cfg.cache, CacheConfig) and isinstance(cfg.run, RunConfig)
    assert isinstance(cfg.train, TrainConfig)


def test_empty_file_gives_defaults(tmp_path):
    assert load_config(write(tmp_path, "# only a comment\n")) == Config()


# --------------------------------------------------------------------------- overrides


def test_parse_overrides_nests_dotted_keys_and_parses_yaml_values():
    got = parse_overrides(["train.epochs=5", "run.dims=[96, 48]", "train.lr=1.0e-4", "model.pooling=cls",
                           "run.progress=false", "cache.dir=", "data.data_dir=/a=b"])
    assert got == {
        "train": {"epochs": 5, "lr": 1e-4},
        "run": {"dims": [96, 48], "progress": False},
        "model": {"pooling": "cls"},
        "cache": {"dir": ""},
        "data": {"data_dir": "/a=b"},  # only the first '=' splits
    }


def test_overrides_merge_on_top_of_file(tmp_path):
    path = write(tmp_path, "train:\n  epochs: 7\n  lr: 0.01\nrun:\n  dims: [64, 32]\n  search_k: 50\n  k_values: [10, 50]\n")
    cfg = load_config(path, ["train.epochs=3", "run.dims=[48,24,12]", "model.max_length=128"])
    assert cfg.train.epochs == 3  # override wins
    assert cfg.train.lr == 0.01  # sibling key from the file survives the nested merge
    assert cfg.run.dims == [48, 24, 12]  # lists are replaced, not merged
    assert cfg.run.search_k == 50
    assert cfg.model.max_length == 128
    assert cfg.data == DataConfig()  # untouched sections keep their defaults


def test_int_is_accepted_where_float_is_expected(tmp_path):
    cfg = load_config(write(tmp_path, "train:\n  lr: 1\n"), ["train.temperature=2", "run.supervised_infonce_weight=0"])
    assert cfg.train.lr == 1.0 and isinstance(cfg.train.lr, float)
    assert cfg.train.temperature == 2.0 and isinstance(cfg.train.temperature, float)
    assert isinstance(cfg.run.supervised_infonce_weight, float)


def test_exponent_float_without_dot_is_accepted(tmp_path):
    assert load_config(None, ["train.lr=1e-4"]).train.lr == pytest.approx(1e-4)
    assert load_config(write(tmp_path, "train:\n  lr: 3e-4\n")).train.lr == pytest.approx(3e-4)


def test_optional_value_accepts_null(tmp_path):
    assert load_config(write(tmp_path, "model:\n  pooling: null\n")).model.pooling is None
    assert load_config(None, ["model.pooling=last"]).model.pooling == "last"


# --------------------------------------------------------------------------- round trip


@pytest.mark.parametrize("overrides", [
    [],
    ["run.dims=[96,48,24]", "train.lr=1", "model.pooling=cls", "run.settings=[supervised]",
     "run.methods=[full,smec]", "cache.dir=/tmp/x", "run.progress=false", "train.hidden=64"],
], ids=["defaults", "overridden"])
def test_dump_then_load_round_trips(tmp_path, overrides):
    cfg = load_config(None, overrides)
    path = tmp_path / "sub" / "config.yaml"
    path.parent.mkdir()
    dump_config(cfg, path)
    assert load_config(path) == cfg
    assert [p.name for p in path.parent.iterdir()] == ["config.yaml"]  # no temp file left


@pytest.mark.parametrize("path", CONFIG_FILES, ids=lambda p: p.name)
def test_shipped_config_round_trips(tmp_path, path):
    cfg = load_config(path)
    dump_config(cfg, tmp_path / "config.yaml")
    assert load_config(tmp_path / "config.yaml") == cfg


# --------------------------------------------------------------------------- errors in files


def test_unknown_key_in_file(tmp_path):
    path = write(tmp_path, "train: {epoch: 3}\n")
    msg = error_of(path)
    assert str(path) in msg and "train.epoch" in msg
    assert "epochs" in msg  # the allowed keys are listed, so the typo is easy to spot


def test_unknown_section_in_file(tmp_path):
    path = write(tmp_path, "data:\n  dataset: scifact\ntraining:\n  epochs: 3\n")
    msg = error_of(path)
    assert str(path) in msg and "'training'" in msg


def test_section_that_is_not_a_mapping(tmp_path):
    path = write(tmp_path, "train: 5\n")
    msg = error_of(path)
    assert str(path) in msg and "train" in msg


def test_top_level_that_is_not_a_mapping(tmp_path):
    path = write(tmp_path, "- train\n- run\n")
    assert str(path) in error_of(path)


@pytest.mark.parametrize("text, key", [
    ('train:\n  epochs: "five"\n', "train.epochs"),
    ("train:\n  epochs: 2.5\n", "train.epochs"),
    ("train:\n  lr: fast\n", "train.lr"),
    ("run:\n  progress: 1\n", "run.progress"),
    ("run:\n  dims: 32\n", "run.dims"),
    ("run:\n  dims: [32, 16.5]\n", "run.dims[1]"),
    ("run:\n  dims: [32, true]\n", "run.dims[1]"),
    ("data:\n  dataset: 7\n", "data.dataset"),
], ids=["str-for-int", "float-for-int", "str-for-float", "int-for-bool", "scalar-for-list",
        "float-in-int-list", "bool-in-int-list", "int-for-str"])
def test_wrong_type_in_file(tmp_path, text, key):
    path = write(tmp_path, text)
    msg = error_of(path)
    assert str(path) in msg and key in msg


@pytest.mark.parametrize("text, key, fragment", [
    ("run:\n  dims: [16, 32]\n", "run.dims", "decreasing"),
    ("run:\n  dims: [32, 32]\n", "run.dims", "decreasing"),
    ("run:\n  dims: [32, 0]\n", "run.dims", "0"),
    ("run:\n  dims: []\n", "run.dims", "dim"),
    ("model:\n  pooling: max\n", "model.pooling", "max"),
    ("run:\n  settings: [semi-supervised]\n", "run.settings", "semi-supervised"),
    ("train:\n  epochs: 0\n", "train.epochs", "0"),
], ids=["increasing", "repeated", "zero", "empty", "pooling", "setting", "zero-epochs"])
def test_invalid_value_in_file_names_the_key(tmp_path, text, key, fragment):
    msg = error_of(write(tmp_path, text))
    assert key in msg and fragment in msg


@pytest.mark.parametrize("text", ["run:\n  dims: [16, 32]\n", "run:\n  dims: [32, 0]\n",
                                  "model:\n  pooling: max\n"], ids=["increasing", "zero", "pooling"])
def test_invalid_value_in_file_names_the_file(tmp_path, text):
    path = write(tmp_path, text)
    assert str(path) in error_of(path)


@pytest.mark.parametrize("text, line", [
    ("data:\n  dataset: scifact\nrun:\n  output_dir: a: b\n", 4),
    ("train:\n\tepochs: 3\n", 2),
    ("run:\n  dims: [32, 16\ntrain:\n  epochs: 3\n", None),  # an unclosed list is noticed later
], ids=["mapping-in-scalar", "tab", "unclosed-list"])
def test_malformed_yaml_names_file_and_line(tmp_path, text, line):
    path = write(tmp_path, text)
    msg = error_of(path)
    assert "not valid YAML" in msg
    if line is not None:
        assert f"{path}:{line}:" in msg
    else:
        prefix = f"{path}:"
        assert msg.startswith(prefix) and msg[len(prefix)].isdigit(), msg


def test_missing_config_file(tmp_path):
    path = tmp_path / "nope.yaml"
    msg = error_of(path)
    assert str(path) in msg and "not found" in msg


@pytest.mark.parametrize("kind", ["not-utf8", "folder"])
def test_unreadable_config_file_is_a_smec_error(tmp_path, kind):
    path = tmp_path / "cfg.yaml"
    if kind == "folder":
        path.mkdir()
    else:
        path.write_bytes(b"train:\n  epochs: \xff\xfe\n")
    assert str(path) in error_of(path)


# --------------------------------------------------------------------------- errors in overrides


def test_override_without_equals():
    msg = error_of(None, ["train.epochs"])
    assert "'train.epochs'" in msg and "=" in msg


def test_override_parse_error_is_a_smec_error():
    with pytest.raises(SmecError, match="train.epochs"):
        parse_overrides(["train.epochs"])


def test_unknown_override_key():
    msg = error_of(None, ["train.epoch=3"])
    assert "train.epoch" in msg and "command line" in msg


def test_unknown_override_section():
    assert "'bogus'" in error_of(None, ["bogus.x=1"])


def test_override_with_wrong_type():
    msg = error_of(None, ["train.epochs=many"])
    assert "train.epochs" in msg and "many" in msg


def test_override_with_malformed_yaml_value():
    msg = error_of(None, ["run.dims=[32"])
    assert "run.dims=[32" in msg and "YAML" in msg


@pytest.mark.parametrize("items, key", [
    (["run.dims=[16,32]"], "run.dims"),
    (["run.dims=[32,0]"], "run.dims"),
    (["model.pooling=max"], "model.pooling"),
    (["cache.dtype=int8"], "cache.dtype"),
    (["train.lr_schedule=linear"], "train.lr_schedule"),
    (["run.methods=[smec,magic]"], "run.methods"),
    (["run.search_k=0"], "run.search_k"),
])
def test_invalid_override_value_names_the_key(items, key):
    assert key in error_of(None, items)


def test_conflicting_overrides():
    msg = error_of(None, ["train=5", "train.epochs=3"])
    assert "train.epochs=3" in msg


def test_override_of_a_whole_section_needs_a_mapping():
    assert "'train'" in error_of(None, ["train=5"])


def test_each_setting_takes_its_loss_from_one_key():
    """setting_loss is the one place a setting's temperature and InfoNCE weight are decided:
    each value comes from its own key, and changing one key moves one setting only."""
    from smec_dist.config import setting_loss

    cfg = load_config(None, ["train.temperature=0.02", "run.corpus_only_temperature=0.04",
                             "run.supervised_temperature=0.06", "run.supervised_infonce_weight=0.5",
                             "train.kl_weight=0.7", "train.infonce_temperature=0.1"])
    got = {s: setting_loss(cfg, s) for s in SETTINGS}
    assert {s: (v.temperature, v.infonce_weight) for s, v in got.items()} == {
        "unsupervised-queries": (0.02, 0.0), "corpus-only": (0.04, 0.0), "supervised": (0.06, 0.5)}
    assert {(v.kl_weight, v.infonce_temperature) for v in got.values()} == {(0.7, 0.1)}
    moved = load_config(None, ["run.corpus_only_temperature=0.09"])
    base = load_config(None, [])
    assert [setting_loss(moved, s) == setting_loss(base, s) for s in SETTINGS] == [True, False, True]
    with pytest.raises(SmecError, match="setting"):
        setting_loss(base, "no-such-setting")


def test_supervised_train_set_keeps_judged_queries_only():
    from types import SimpleNamespace

    import torch

    from smec_dist.recipes.adapter import Job

    from smec_dist.data import IdenticalIds

    job = Job(load_config(None, []))
    job.identical = IdenticalIds(False, "auto", 0, 0, 3)
    job.corpus = torch.nn.functional.normalize(torch.randn(6, 8), dim=-1)
    job.doc_ids = [f"d{i}" for i in range(6)]
    job.query_ids = ["q0", "q1", "q2"]
    job.queries = torch.nn.functional.normalize(torch.randn(3, 8), dim=-1)
    job.anchor_emb = job.queries
    job.ds = SimpleNamespace(qrels={"train": {"q0": {"d1": 1}, "q2": {"d4": 1, "d5": 0}}})
    data = job.train_set("supervised")
    assert torch.equal(data.anchors, job.queries[[0, 2]]) and data.positives == [[1], [4]]
    data = job.train_set("corpus-only")
    assert len(data.anchors) == 6 and data.anchor_doc.tolist() == list(range(6)) and data.positives is None


@pytest.mark.parametrize("key", ["run.corpus_only_temperature", "run.supervised_temperature"])
@pytest.mark.parametrize("value", [0, -0.05])
def test_setting_temperatures_must_be_positive(key, value):
    """No "0 = use train.temperature" fallback: each setting's temperature is its own key."""
    with pytest.raises(SmecError, match=key):
        load_config(None, [f"{key}={value}"])


def test_setting_overrides_must_not_be_negative():
    with pytest.raises(SmecError, match="run.supervised_infonce_weight"):
        load_config(None, ["run.supervised_infonce_weight=-1"])


@pytest.mark.parametrize("key, replacement", [("train.infonce_weight", "run.supervised_infonce_weight"),
                                              ("e2e.infonce_weight", "run.supervised_infonce_weight")])
def test_removed_keys_name_the_key_that_replaced_them(key, replacement):
    msg = error_of(None, [f"{key}=1.0"])
    assert key in msg and replacement in msg and "removed" in msg


def test_config_yaml_with_resolved_section_loads_back(tmp_path):
    from smec_dist.config import dump_config, resolved_losses

    cfg = load_config(None, ["run.supervised_temperature=0.07"])
    path = tmp_path / "config.yaml"
    dump_config(cfg, path, resolved={"loss": resolved_losses(cfg, SETTINGS)})
    text = path.read_text()
    assert "resolved:" in text and "temperature: 0.07" in text
    assert load_config(path) == cfg


@pytest.mark.parametrize("override, key", [("train.anchor_copies=-1", "train.anchor_copies"),
                                           ("train.anchor_noise=-0.5", "train.anchor_noise")])
def test_anchor_augmentation_must_not_be_negative(override, key):
    with pytest.raises(SmecError, match=key):
        load_config(None, [override])


@pytest.mark.parametrize("value, fraction", [("", 0.0), ("holdout:0.2", 0.2), ("holdout: 0.5", 0.5)])
def test_validation_spec(value, fraction):
    assert load_config(None, [f"run.validation='{value}'"]).run.validation_fraction() == fraction


@pytest.mark.parametrize("value", ["holdout:0", "holdout:1", "holdout:abc", "holdout:nan", "split:dev", "'0.2'"])
def test_bad_validation_spec_names_the_key(value):
    with pytest.raises(SmecError, match=r"run\.validation: .*holdout:<fraction in \(0, 1\)>"):
        load_config(None, [f"run.validation={value}"])


def test_every_key_is_documented_with_its_type_and_default(capsys):
    """``smec config --keys``: every key of every section, with its type, default and meaning."""
    from smec_dist.cli import main
    from smec_dist.config import key_reference

    rows = key_reference()
    keys = {f"{section}.{key}" for section, values in load_config().to_dict().items() for key in values}
    assert {r[0] for r in rows} == keys
    assert [r[0] for r in rows if not r[3]] == []  # a docstring for every key
    assert ("train.temperature", "float", "0.03") == rows[[r[0] for r in rows].index("train.temperature")][:3]
    assert main(["config", "--keys"]) == 0
    out = capsys.readouterr().out
    assert "run.doc_anchors (int, default 0)" in out and "data.ignore_identical_ids (bool | str, default 'auto')" in out
