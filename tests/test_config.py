"""Run configuration: TOML and --set overrides in, resolved TOML out, clear errors (the number of
classes comes from the data, not model.num_classes), the quick preset."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tomllib

import tinycnn
from tests.helpers import Small, assert_one_line_error, run_cli
from tinycnn.config import RunConfig, config_to_dict, load_config, to_toml
from tinycnn.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]

PRESETS = sorted((Path(__file__).resolve().parents[1] / "configs").rglob("*.toml"))


def test_defaults_are_the_papers() -> None:
    cfg = load_config()
    assert (cfg.model.name, cfg.model.init, cfg.optim.name) == ("paper8", "xavier", "sgd")
    assert (cfg.optim.lr, cfg.optim.momentum, cfg.optim.weight_decay) == (1e-3, 0.9, 5e-4)
    assert (cfg.schedule.name, cfg.schedule.step_epochs, cfg.schedule.gamma) == ("step", 10, 0.1)
    assert cfg.data.normalization == "mean_image" and cfg.augment.crop is None  # unset:
    assert cfg.augment.output_size(64, 64) == (56, 56)  # the paper's 56 on 64x64 images


def test_overrides_and_model_options(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[model]\nname = "cnn5"\ndropout = 0.3\n[train]\nepochs = 7\n')
    cfg = load_config(
        path,
        [
            "train.epochs=3",
            "model.name=paper8",
            "optim.lr=5e-6",
            "model.fc_widths=[100, 100]",
            "augment.flip=false",
        ],
    )
    assert cfg.train.epochs == 3 and cfg.model.name == "paper8" and cfg.optim.lr == 5e-6
    assert cfg.model.options == {"dropout": 0.3, "fc_widths": [100, 100]}
    assert cfg.augment.flip is False


@pytest.mark.parametrize("preset", PRESETS, ids=lambda p: p.stem)
def test_presets_load_and_round_trip(preset: Path, tmp_path: Path) -> None:
    cfg = load_config(preset)
    resolved = tmp_path / "config.toml"
    resolved.write_text(to_toml(cfg))
    assert config_to_dict(load_config(resolved)) == config_to_dict(cfg)


def test_paper_presets_cover_the_results_table() -> None:
    names = {p.stem for p in PRESETS}
    assert {
        "shallow",
        "cnn5",
        "paper8_nodropout",
        "paper8_l2_1e-4",
        "paper8_l2_3e-4",
        "paper8_l2_5e-4",
        "finetune",
    } <= names
    decays = {load_config(p).optim.weight_decay for p in PRESETS if p.stem.startswith("paper8_l2")}
    assert decays == {1e-4, 3e-4, 5e-4}


@pytest.mark.parametrize(
    ("text", "overrides", "message"),
    [
        ("[trainer]\nepochs = 3\n", [], "unknown config section [trainer]"),
        ("[train]\nepoch = 3\n", [], "unknown key train.epoch"),
        ("train = 3\n", [], "[train] must be a table of keys, got 3"),
        ("[train]\nepochs = 'ten'\n", [], "train.epochs = 'ten': expected int, got str"),
        ("[train]\nepochs = 2.5\n", [], "train.epochs = 2.5: expected int"),
        ("[augment]\nflip = 1\n", [], "augment.flip = 1: expected bool"),
        ("", ["optim.lr=-1"], "optim.lr = -1.0: must be a positive number"),
        ("", ["optim.momentum=1.5"], "optim.momentum = 1.5: must be in [0, 1)"),
        ("", ["data.scale=0"], "data.scale = 0.0: must be a positive number"),
        ("", ["data.scale=-0.5"], "data.scale = -0.5: must be a positive number"),
        (
            "",
            ["model.classifier_init_scale=-0.1"],
            "model.classifier_init_scale = -0.1: must be a number >= 0",
        ),
        ("", ["optim.bias_lr_multiplier=0"], "optim.bias_lr_multiplier = 0.0: must be a positive"),
        ("", ["optim.clip_grad_norm=-1"], "optim.clip_grad_norm = -1.0: must be a number >= 0"),
        ("", ["optim.name=rmsprop"], "optim.name = 'rmsprop': expected one of"),
        ("", ["train.epochs=0"], "train.epochs = 0: must be a number >= 1"),
        ("", ["train.ema_bn_images=1"], "train.ema_bn_images = 1: expected 0 (copy"),
        ("", ["train.ema_bn_images=-5"], "train.ema_bn_images = -5: expected 0 (copy"),
        ("", ["schedule.name=exp"], "schedule.name = 'exp'"),
        ("", ["train.precision=fp16"], "train.precision = 'fp16'"),
        ("", ["augment.contrast=1.5"], "contrast must be < 1"),
        ("", ["epochs=3"], "expected section.key=value"),
        ("", ["train.epochs"], "expected section.key=value"),
        ("[train\n", [], "not valid TOML"),
        ("epochs = 1\n", [], "epochs = 1 is outside any [section]"),  # was: section [epochs]
    ],
)
def test_bad_configs(tmp_path: Path, text: str, overrides: list[str], message: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path, overrides)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_a_config_files_errors_name_the_file(tmp_path: Path) -> None:
    # An unknown key had been named without its file: in a study of many presets, which one?
    path = tmp_path / "typo.toml"
    path.write_text("[train]\nepochz = 1\n")
    with pytest.raises(ConfigError, match=rf"^{path}: unknown key train.epochz"):
        load_config(path)
    (tmp_path / "utf16.toml").write_text("[train]\nepochs = 1\n", encoding="utf-16")
    (tmp_path / "folder.toml").mkdir()
    for name in ("utf16.toml", "folder.toml"):  # had been tracebacks
        with pytest.raises(ConfigError, match=rf"^{tmp_path / name}: cannot read it"):
            load_config(tmp_path / name)


def test_a_config_files_relative_paths_are_relative_to_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # They had been taken from the folder the command ran in: another folder's excl.txt was
    # used without a word, or the cache was not found.
    project = tmp_path / "project" / "configs"
    project.mkdir(parents=True)
    path = project / "rel.toml"
    path.write_text(
        '[data]\ncache = "../data/mini"\nexclude = "excl.txt"\n'
        '[train]\ninit_from = "/abs/best.pt"\n'
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    cfg = load_config(Path("..") / "project" / "configs" / "rel.toml")
    assert Path(cfg.data.cache).resolve() == tmp_path / "project" / "data" / "mini"
    assert Path(cfg.data.exclude).resolve() == project / "excl.txt"
    assert cfg.train.init_from == "/abs/best.pt"
    # --set values are the user's, typed here: relative to the current folder.
    cfg = load_config(path, ['data.cache="here"'])
    assert cfg.data.cache == "here"


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such config file"):
        load_config(tmp_path / "nope.toml")


def test_resolved_toml_writes_every_key() -> None:
    text = to_toml(RunConfig())
    for key in (
        "normalization",
        "scale",
        "holdout_per_class",
        "init",
        "weight_decay",
        "warmup_epochs",
        "classifier_init_scale",
        "bias_lr_multiplier",
        "clip_grad_norm",
        "noise_std",
        "snapshot_every",
        "keep_snapshots",
        "max_minutes",
    ):
        assert f"\n{key} = " in text


# A base config as a checkpoint holds one: every value set, some away from the defaults.
BASE = [
    "train.epochs=7",
    "optim.lr=0.02",
    "model.dropout=0.25",
    "augment.crop=48",
    'data.cache="base-cache"',
]


@pytest.mark.parametrize(
    ("text", "overrides", "expected"),
    [
        # Nothing laid over: base's values, and the defaults base kept.
        (
            None,
            [],
            {
                "train.epochs": 7,
                "optim.lr": 0.02,
                "model.options": {"dropout": 0.25},
                "augment.crop": 48,
                "data.cache": "base-cache",
                "optim.momentum": 0.9,
                "train.batch_size": 128,
            },
        ),
        (None, ["train.epochs=3"], {"train.epochs": 3, "optim.lr": 0.02}),
        # A file replaces the keys it sets; the rest of its section stays base's.
        ("[train]\nbatch_size = 64\n", [], {"train.batch_size": 64, "train.epochs": 7}),
        ("[train]\nepochs = 5\n", ["train.epochs=2"], {"train.epochs": 2}),  # --set comes last
        ("[model]\ndropout = 0.5\n", [], {"model.options": {"dropout": 0.5}}),
        (
            "[model]\noptions = {dropout = 0.1, fc_widths = [10]}\n",
            [],
            {"model.options": {"dropout": 0.1, "fc_widths": [10]}},
        ),
        (None, ["model.name=cnn5"], {"model.name": "cnn5", "model.options": {"dropout": 0.25}}),
        ("[augment]\nflip = false\n", [], {"augment.flip": False, "augment.crop": 48}),
    ],
)
def test_load_config_on_a_base(
    tmp_path: Path, text: str | None, overrides: list[str], expected: dict
) -> None:
    base = load_config(None, BASE)
    path = None
    if text is not None:
        path = tmp_path / "c.toml"
        path.write_text(text)
    cfg = load_config(path, overrides, base=base)
    got = {key: getattr(getattr(cfg, key.split(".")[0]), key.split(".")[1]) for key in expected}
    assert got == expected
    assert (base.train.epochs, base.model.options) == (7, {"dropout": 0.25})  # base untouched


@pytest.mark.parametrize("preset", PRESETS, ids=lambda p: p.stem)
def test_a_config_on_itself_as_base_is_itself(preset: Path) -> None:
    cfg = load_config(preset)
    assert config_to_dict(load_config(base=cfg)) == config_to_dict(cfg)
    assert load_config(base=RunConfig()) == RunConfig()  # unset keys (augment.crop) stay unset


@pytest.mark.parametrize(
    ("text", "overrides", "message"),
    [
        ("[trainer]\nepochs = 3\n", [], "unknown config section [trainer]"),
        ("[train]\nepoch = 3\n", [], "unknown key train.epoch"),
        ("train = 3\n", [], "[train] must be a table"),
        ("", ["optim.lr=-1"], "optim.lr = -1.0: must be a positive number"),
    ],
)
def test_bad_configs_on_a_base(tmp_path: Path, text: str, overrides: list[str], message: str):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path, overrides, base=load_config(None, BASE))
    assert message in str(info.value)


def test_labels_of_the_quick_preset_learn_on_the_mini_data() -> None:
    text = (ROOT / "configs" / "quick.toml").read_text(encoding="utf-8")
    assert "mini" in text and "minutes" in text
    assert np.isfinite(tinycnn.load_config(ROOT / "configs" / "quick.toml").optim.lr)


CLASS_COUNT_CONFIGS = [  # (TOML text or None, --set overrides)
    (None, ["model.num_classes=5"]),
    ("[model]\nname = 'cnn5'\nnum_classes = 10\n", []),
    (None, ["model.options={num_classes = 5}"]),
]


@pytest.mark.parametrize(("toml", "overrides"), CLASS_COUNT_CONFIGS)
def test_num_classes_in_a_config_is_a_config_error(
    tmp_path: Path, toml: str | None, overrides: list[str]
) -> None:
    path = None
    if toml is not None:
        path = tmp_path / "run.toml"
        path.write_text(toml)
    with pytest.raises(ConfigError, match=r"model.num_classes = \d+: the number of classes comes "):
        load_config(path, overrides)


def test_cli_train_with_num_classes_is_one_line(
    small: Small, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    argv = ["train", "--data", small.cache, "--out", tmp_path / "run"]
    code, _, err = run_cli(capsys, [*argv, "--set", "model.num_classes=5"])
    assert_one_line_error(code, err, "model.num_classes = 5", "comes from the data")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("path", ["/data/a\nb", "/data/tab\there", "/data/del\x7fx", 'q"\\u'])
def test_any_path_round_trips_through_a_run_folders_toml(path: str) -> None:
    # A newline in an --exclude path had made a run whose config.toml could not be read back
    # (its --resume failed); \x7f in a path had made a --set the user never typed fail.
    from tinycnn.config import config_from_dict, set_string

    cfg = load_config(None, [set_string("data.exclude", path)])
    assert cfg.data.exclude == path
    again = config_from_dict(tomllib.loads(to_toml(cfg)))
    assert again.data.exclude == path
