"""Typed run configuration: TOML in (with ``--set section.key=value`` overrides), resolved TOML out.

A run folder keeps the fully resolved ``config.toml``, so a run can be repeated or resumed from it
alone. Every key is checked before any work: unknown keys, wrong types and impossible values are
one-line ConfigErrors that quote the key and the value.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_type_hints

from tinycnn.choices import PRECISIONS
from tinycnn.data.augment import AugmentConfig
from tinycnn.errors import ConfigError
from tinycnn.toml_text import toml_string, toml_value

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

NORMALIZATIONS = ("mean_image", "channel", "none")
OPTIMIZERS = ("sgd", "nesterov", "adagrad", "adamw")
SCHEDULES = ("step", "cosine", "onecycle", "constant", "cyclic")
INITS = ("xavier", "caffe_xavier", "gaussian", "kaiming", "default")


@dataclass
class DataConfig:
    cache: str = ""  # prepared cache folder (tinycnn prepare); --data sets it
    normalization: str = "mean_image"  # the paper's mean-image subtraction, or per-channel
    scale: float = 1.0  # factor after centring (Caffe's transform_param scale; 1/255: 0-1 scale)
    holdout_per_class: int = 0  # train images per class held out as the tuning split
    holdout_seed: int = 0  # which ones: fixed apart from train.seed, so runs share one split
    exclude: str = ""  # file of training images to leave out, a name a line (ambiguous.txt)

    def validate(self) -> None:
        _choice("data.normalization", self.normalization, NORMALIZATIONS)
        _positive("data.scale", self.scale)
        _at_least("data.holdout_per_class", self.holdout_per_class, 0)
        _at_least("data.holdout_seed", self.holdout_seed, 0)


@dataclass
class ModelConfig:
    name: str = "paper8"
    init: str = "xavier"  # the paper's normalised initialisation; "default" keeps PyTorch's
    options: dict[str, Any] = field(default_factory=dict)  # passed to the model factory
    # Output layer's initial weights times this after init (0 = zeros): the initial logits' scale.
    classifier_init_scale: float = 1.0

    def validate(self) -> None:
        _choice("model.init", self.init, INITS)
        _at_least("model.classifier_init_scale", self.classifier_init_scale, 0)


@dataclass
class OptimConfig:
    name: str = "sgd"  # sgd = classical momentum as in the paper/Caffe: v = mu v - lr g; w += v
    lr: float = 1e-3  # peak learning rate, per batch of train.batch_size
    momentum: float = 0.9
    weight_decay: float = 5e-4  # L2 lambda (coupled, as in the paper); decoupled for adamw
    decay_bias_and_norm: bool = True  # the paper decays every weight; False spares bias/BN
    bias_lr_multiplier: float = 1.0  # biases learn at lr times this (Caffe's lr_mult: 2 is usual)
    clip_grad_norm: float = 0.0  # rescale the gradient to at most this global L2 norm; 0 = off
    label_smoothing: float = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])  # adamw
    eps: float = 1e-8  # adamw / adagrad

    def validate(self) -> None:
        _choice("optim.name", self.name, OPTIMIZERS)
        _positive("optim.lr", self.lr)
        _fraction("optim.momentum", self.momentum)
        if self.name == "nesterov" and self.momentum == 0:
            raise ConfigError('optim.momentum = 0: optim.name = "nesterov" needs a momentum > 0')
        _positive("optim.eps", self.eps)
        _at_least("optim.weight_decay", self.weight_decay, 0)
        _positive("optim.bias_lr_multiplier", self.bias_lr_multiplier)
        _at_least("optim.clip_grad_norm", self.clip_grad_norm, 0)
        _fraction("optim.label_smoothing", self.label_smoothing)
        if len(self.betas) != 2 or not all(_is_number(b) and 0 <= b < 1 for b in self.betas):
            raise ConfigError(f"optim.betas = {self.betas}: expected two numbers in [0, 1)")


@dataclass
class ScheduleConfig:
    name: str = "step"  # step: lr * gamma every step_epochs (the paper: /10 every 10 epochs)
    step_epochs: float = 10.0
    gamma: float = 0.1
    warmup_epochs: float = 0.0  # linear warm-up from 0, then the schedule
    final_lr_fraction: float = 0.0  # cosine, onecycle and each cyclic cycle end at lr * this
    # cyclic: the schedule after warm-up in this many equal cosine cycles, each restarting at lr
    # and snapshotted at its end (checkpoints/cycle-NN.pt, member spec RUN@cycles): Huang et
    # al.'s "Snapshot Ensembles: Train 1, get M for free".
    cycles: int = 1

    def validate(self) -> None:
        _choice("schedule.name", self.name, SCHEDULES)
        _positive("schedule.step_epochs", self.step_epochs)
        _positive("schedule.gamma", self.gamma)
        _at_least("schedule.warmup_epochs", self.warmup_epochs, 0)
        _fraction("schedule.final_lr_fraction", self.final_lr_fraction)
        _at_least("schedule.cycles", self.cycles, 1)
        if self.cycles > 1 and self.name != "cyclic":
            raise ConfigError(
                f'schedule.cycles = {self.cycles} needs schedule.name = "cyclic" '
                f"(it is {self.name!r})"
            )


@dataclass
class TrainConfig:
    epochs: int = 30
    batch_size: int = 128
    seed: int = 0
    device: str = "auto"  # auto: the GPU if there is one, else the CPU
    precision: str = "auto"  # auto: bf16 autocast where measured faster (runtime.py), else fp32
    channels_last: bool = True
    deterministic: bool = False  # deterministic kernels: exact resume, some speed cost
    threads: int = 0  # intra-op threads; 0 = every core
    eval_batch_size: int = 500
    snapshot_every: int = 0  # iterations between snapshots (the paper: 10,000); 0 = epochs only
    log_every: int = 0  # iterations per steps.jsonl line (training loss, error, lr); 0 = none
    keep_snapshots: int = 0  # iteration snapshots to keep (oldest go first; epoch ones stay)
    max_minutes: float = 0.0  # wall-clock budget of the whole run, evaluations included; 0 = none
    max_pflop: float = 0.0  # training compute budget (PFLOP); the LR schedule ends on it; 0 = none
    fit_to_time: bool = False  # fit the schedule's length to max_minutes (measured at the start)
    sync_batch_norm: bool = False  # under torchrun: batch norm over the global batch, not a share
    # torch.compile the training step's model: true, false, or "auto": where it is timed faster
    # on this machine, per input side (compile_choice.py)
    compile: bool | str = False
    # Time Conv3x3's two kernels (oneDNN's, nine matmuls) per small layer shape on this machine
    # and keep the faster (models/kernel_choice.py); false: the static rules of models/conv.py.
    autotune: bool = True
    ema_decay: float = 0.0  # EMA of the weights (e.g. 0.999), evaluated and saved; 0 = off
    # Training images whose centre views recompute the EMA's batch-norm statistics for its own
    # weights before it is evaluated or saved; 0 = copy the raw weights' (measured worse)
    ema_bn_images: int = 7680
    tensorboard: bool = False  # also write TensorBoard logs (needs the tensorboard package)
    init_from: str = ""  # the checkpoint whose weights the run started from ("": initialised)

    def validate(self) -> None:
        _at_least("train.epochs", self.epochs, 1)
        _at_least("train.batch_size", self.batch_size, 1)
        _at_least("train.eval_batch_size", self.eval_batch_size, 1)
        _choice("train.precision", self.precision, PRECISIONS)
        if not isinstance(self.compile, bool) and self.compile != "auto":
            raise ConfigError(f'train.compile = {self.compile!r}: expected true, false or "auto"')
        for name in ("threads", "snapshot_every", "keep_snapshots", "log_every"):
            _at_least(f"train.{name}", getattr(self, name), 0)
        if self.threads > MAX_THREADS:
            raise ConfigError(f"train.threads = {self.threads}: at most {MAX_THREADS}")
        if not 0 <= self.seed < 2**63:
            raise ConfigError(f"train.seed = {self.seed!r}: must be in [0, 2**63 - 1]")
        _at_least("train.max_minutes", self.max_minutes, 0)
        _at_least("train.max_pflop", self.max_pflop, 0)
        if self.fit_to_time and not self.max_minutes:
            raise ConfigError("train.fit_to_time = true needs a time budget: set train.max_minutes")
        if not 0 <= self.ema_decay < 1:
            raise ConfigError(f"train.ema_decay = {self.ema_decay!r}: expected 0 <= d < 1")
        if self.ema_bn_images == 1 or not self.ema_bn_images >= 0:
            raise ConfigError(
                f"train.ema_bn_images = {self.ema_bn_images!r}: expected 0 (copy the trained "
                "model's batch-norm statistics) or a number of images >= 2"
            )


@dataclass
class RunConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def validate(self) -> RunConfig:
        """Check every value, section by section; returns self so calls chain."""
        if "num_classes" in self.model.options:  # create_model gets it from the cache
            raise ConfigError(
                f"model.num_classes = {self.model.options['num_classes']!r}: the number of "
                "classes comes from the data (the cache's class list); remove this key, or "
                "prepare a cache that holds only the classes you want"
            )
        self.data.validate()
        self.model.validate()
        self.optim.validate()
        self.schedule.validate()
        self.augment.validate()
        cyclic_sizes = self.schedule.name == "cyclic" and self.augment.sizes
        if self.augment.sizes_per_cycle and not cyclic_sizes:
            raise ConfigError(
                "augment.sizes_per_cycle = true needs augment.sizes and schedule.name = "
                f'"cyclic" (sizes = {self.augment.sizes}, schedule.name = {self.schedule.name!r})'
            )
        self.train.validate()
        return self


MAX_THREADS = 1024  # train.threads beyond it: a typo (torch crashed at 100,000)


def _choice(key: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"{key} = {value!r}: expected one of {', '.join(allowed)}")


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _at_least(key: str, value: float, low: float) -> None:
    if not value >= low or math.isinf(value):
        raise ConfigError(f"{key} = {value!r}: must be a number >= {low}")


def _positive(key: str, value: float) -> None:
    if not value > 0 or math.isinf(value):
        raise ConfigError(f"{key} = {value!r}: must be a positive number")


def _fraction(key: str, value: float) -> None:
    if not 0 <= value < 1:
        raise ConfigError(f"{key} = {value!r}: must be in [0, 1)")


def load_config(
    path: str | Path | None = None, overrides: list[str] = (), *, base: RunConfig | None = None
) -> RunConfig:
    """Returns the RunConfig of a TOML file with section.key=value overrides.

    Args:
        path: a TOML config; None: no file.
        overrides: "section.key=value" strings (TOML values; a bare word is a string), applied
            after the file.
        base: the config the file and overrides change (e.g. a checkpoint's, for --init-from);
            None: the defaults. A key the file or an override sets replaces base's value.
    """
    # Unset keys (None, e.g. augment.crop) stay unset, as in a resolved config.toml.
    raw: dict[str, Any] = {
        section: {key: value for key, value in values.items() if value is not None}
        for section, values in (config_to_dict(base) if base is not None else {}).items()
    }
    if path is not None:
        path = Path(path)
        try:
            loaded = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"{path}: no such config file") from None
        except (OSError, UnicodeDecodeError) as exc:  # a folder, unreadable, not UTF-8
            raise ConfigError(f"{path}: cannot read it as a TOML config ({exc})") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML ({exc})") from None
        _beside(loaded, path.parent)
        _lay_over(raw, loaded)
        try:  # the file's own sections, keys and types: their errors name it
            config_from_dict(raw)
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}") from None
    for item in overrides:
        _apply_override(raw, item)
    return config_from_dict(raw).validate()


# The keys that name files: relative in a config file, they are relative to the file's folder.
PATH_KEYS = (("data", "cache"), ("data", "exclude"), ("train", "init_from"))


def _beside(loaded: dict[str, Any], folder: Path) -> None:
    """A config file's relative paths made relative to its own folder (as it was written),
    not to wherever the command runs; --set values stay relative to the current folder."""
    for section, key in PATH_KEYS:
        values = loaded.get(section)
        value = values.get(key) if isinstance(values, dict) else None
        if isinstance(value, str) and value and not Path(value).expanduser().is_absolute():
            values[key] = str(folder / value)


def _lay_over(raw: dict[str, Any], loaded: dict[str, Any]) -> None:
    """Lay a TOML file's sections over raw (a base config's), key by key."""
    for section, values in loaded.items():
        if not isinstance(values, dict) or not isinstance(raw.get(section), dict):
            raw[section] = values  # nothing to merge with; config_from_dict checks it
            continue
        if section == "model" and isinstance(values.get("options"), dict):
            # Base's options are flat [model] keys, which config_from_dict ranks above an
            # options table: flatten the file's too, so that the file wins.
            values = {**values["options"], **{k: v for k, v in values.items() if k != "options"}}
        raw[section] = {**raw[section], **values}


def _apply_override(raw: dict[str, Any], item: str) -> None:
    key, sep, text = item.partition("=")
    parts = key.strip().split(".")
    if not sep or len(parts) != 2 or not all(parts):
        raise ConfigError(f"--set {item!r}: expected section.key=value, e.g. train.epochs=10")
    try:
        value = tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError as exc:
        if text.strip()[:1] in "\"'[{":  # meant as TOML, and not valid TOML: say so
            raise ConfigError(f"--set {item!r}: not a valid TOML value ({exc})") from None
        value = text  # a bare word: a string, as a user would mean it (model.name=paper8)
    raw.setdefault(parts[0], {})[parts[1]] = value


def set_string(key: str, value: str | Path) -> str:
    """A --set override giving key the string value exactly (a path with quotes, backslashes,
    or characters outside the BMP, which json.dumps would escape as surrogate pairs TOML
    refuses)."""
    return f"{key}={toml_string(str(value))}"


def config_from_dict(raw: dict[str, Any]) -> RunConfig:
    """Build a RunConfig from nested dicts, checking section names, keys and types."""
    sections = {f.name: f for f in dataclasses.fields(RunConfig)}
    for name in raw:
        if name not in sections and not isinstance(raw[name], dict):
            raise ConfigError(
                f"{name} = {raw[name]!r} is outside any [section]; put it under its section "
                f"({', '.join(sections)})"
            )
        if name not in sections:
            raise ConfigError(f"unknown config section [{name}]; sections: {', '.join(sections)}")
    built = {}
    for name, f in sections.items():
        values = raw.get(name, {})
        if not isinstance(values, dict):
            raise ConfigError(f"[{name}] must be a table of keys, got {values!r}")
        values = dict(values)
        if name == "model":  # every key that is not a ModelConfig field is a model option
            if not isinstance(values.get("options", {}), dict):
                raise ConfigError(
                    f"model.options = {values['options']!r}: expected a table of model options "
                    "(or set each as model.KEY)"
                )
            known = {field.name for field in dataclasses.fields(ModelConfig)}
            options = {
                **values.pop("options", {}),
                **{k: values.pop(k) for k in list(values) if k not in known},
            }
            values["options"] = options
        built[name] = _section(name, f.default_factory, values)
    return RunConfig(**built)


def _section(section: str, cls: type, values: dict[str, Any]) -> Any:
    hints = get_type_hints(cls)
    kwargs = {}
    for key, value in values.items():
        if key not in hints:
            raise ConfigError(f"unknown key {section}.{key}; [{section}] keys: {', '.join(hints)}")
        kwargs[key] = _coerce(f"{section}.{key}", value, hints[key])
    return cls(**kwargs)


def _coerce(key: str, value: Any, hint: Any) -> Any:
    optional = [a for a in typing.get_args(hint) if a is not type(None)]
    if type(None) in typing.get_args(hint) and len(optional) == 1:  # int | None: unset = None
        hint = optional[0]
    origin = getattr(hint, "__origin__", hint)
    if origin is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    expected = {float: float, int: int, bool: bool, str: str, list: list, dict: dict}.get(origin)
    wrong = expected is not None and (
        not isinstance(value, expected) or (expected is int and isinstance(value, bool))
    )
    if wrong:
        raise ConfigError(
            f"{key} = {value!r}: expected {expected.__name__}, got {type(value).__name__}"
        )
    return value


def config_to_dict(cfg: RunConfig) -> dict[str, Any]:
    """Nested plain dicts (TOML- and JSON-serialisable); model options flattened into [model]."""
    out = dataclasses.asdict(cfg)
    options = out["model"].pop("options")
    out["model"].update(options)
    return out


def to_toml(cfg: RunConfig) -> str:
    """The resolved config as TOML, every key written out."""
    lines = ["# Resolved tinycnn run configuration: every setting this run used."]
    for section, values in config_to_dict(cfg).items():
        lines.append(f"\n[{section}]")
        # None is a key left unset (TOML has no null): a run's config has it resolved.
        lines.extend(
            f"{key} = {toml_value(value)}" for key, value in values.items() if value is not None
        )
    return "\n".join(lines) + "\n"
