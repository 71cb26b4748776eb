"""Models by name, in the timm style: factories register themselves; checkpoints rebuild by name.

A factory is ``def factory(num_classes: int = 200, **options) -> nn.Module`` whose keyword
arguments are the model's options. ``create_model`` checks the options against the factory's
signature, resolves the defaults, and stamps the result on the model as ``model.tinycnn_name``
and ``model.tinycnn_options`` (JSON-serialisable, ``num_classes`` included), so that
``create_model(model.tinycnn_name, **model.tinycnn_options)`` rebuilds the same architecture.
"""

from __future__ import annotations

import difflib
import inspect
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
from torch import nn

from tinycnn.errors import ConfigError

Factory = TypeVar("Factory", bound=Callable[..., nn.Module])


@dataclass(frozen=True)
class ModelInfo:
    """What ``list_models`` says about one registered model."""

    name: str
    description: str
    default_input: int  # side of the square input in pixels the defaults are built for
    params: int  # parameter count with 200 classes and default options


@dataclass
class _Entry:
    factory: Callable[..., nn.Module]
    description: str
    default_input: int
    params: int | None = None  # counted on first request, then cached


_REGISTRY: dict[str, _Entry] = {}


def register_model(
    name: str, *, default_input: int = 56, description: str = ""
) -> Callable[[Factory], Factory]:
    """Decorator that registers a model factory under ``name``; returns the factory unchanged.

    Args:
        name: the lookup name, unique across tinycnn.
        default_input: side in pixels of the square images the default options expect.
        description: one line for ``list_models`` and the CLI.
    """

    def decorate(factory: Factory) -> Factory:
        if not isinstance(name, str) or not name:
            raise ConfigError(f"model name {name!r} must be a non-empty string")
        if name in _REGISTRY:
            raise ConfigError(f"model name {name!r} is already registered; pick another name")
        _check_factory(name, factory)
        _REGISTRY[name] = _Entry(factory, description, default_input)
        return factory

    return decorate


def _check_factory(name: str, factory: Callable[..., nn.Module]) -> None:
    """A ConfigError unless ``factory`` takes num_classes and has a default for every option."""
    params = inspect.signature(factory).parameters
    if "num_classes" not in params:
        raise ConfigError(f"factory {factory.__name__!r} of model {name!r} must accept num_classes")
    # list_models counts parameters, and create_model(name) builds, with the defaults alone.
    for option, param in params.items():
        if param.default is param.empty and param.kind in (
            param.KEYWORD_ONLY,
            param.POSITIONAL_OR_KEYWORD,
        ):
            raise ConfigError(f"option {option!r} of model {name!r} needs a default value")


def _entry(name: str) -> _Entry:
    if name not in _REGISTRY:
        raise ConfigError(f"unknown model {name!r}; known models: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


def _resolve_options(
    name: str, factory: Callable[..., nn.Module], num_classes: int, options: dict[str, Any]
) -> dict[str, Any]:
    """The factory's full keyword arguments: given options over defaults, checked by name."""
    signature = inspect.signature(factory)
    params = signature.parameters
    takes_any = any(p.kind is p.VAR_KEYWORD for p in params.values())
    accepted = sorted(
        n
        for n, p in params.items()
        if n != "num_classes" and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)
    )
    for option in options:
        if option not in params and not takes_any:
            close = difflib.get_close_matches(option, accepted, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(
                f"model {name!r} has no option {option!r}{hint}; its options: "
                f"{', '.join(accepted) or 'none'}"
            )
    try:
        bound = signature.bind(num_classes=num_classes, **options)
    except TypeError as error:  # e.g. a positional-only parameter
        raise ConfigError(f"model {name!r}: {error}") from None
    bound.apply_defaults()
    resolved: dict[str, Any] = {}
    for arg, value in bound.arguments.items():
        if params[arg].kind is params[arg].VAR_KEYWORD:
            resolved.update(value)
        elif params[arg].kind is not params[arg].VAR_POSITIONAL:
            resolved[arg] = value
    try:
        # The JSON round trip turns tuples into lists, so that what the model is built from is
        # exactly what a checkpoint will hand back.
        return json.loads(json.dumps(resolved))
    except (TypeError, ValueError) as error:
        raise ConfigError(f"model {name!r}: options must be JSON values ({error})") from None


def create_model(name: str, num_classes: int = 200, **options: Any) -> nn.Module:
    """Returns the registered model ``name``, built on the default device, in float32.

    Args:
        name: a name from ``list_models()``.
        num_classes: width of the output layer; logits are (N, num_classes).
        **options: the factory's keyword arguments; the rest take their defaults.
    """
    entry = _entry(name)
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ConfigError(f"num_classes {num_classes!r} must be a positive integer")
    resolved = _resolve_options(name, entry.factory, num_classes, options)
    model = entry.factory(**resolved)
    model.tinycnn_name = name
    model.tinycnn_options = resolved
    return model


def _count_params(entry: _Entry) -> int:
    if entry.params is None:
        # On the meta device nothing is allocated or initialised: counting paper8 costs ~nothing.
        with torch.device("meta"):
            model = entry.factory(num_classes=200)
        entry.params = sum(p.numel() for p in model.parameters())
    return entry.params


def list_models() -> list[ModelInfo]:
    """Returns every registered model (a ModelInfo each, by name), params for 200 classes."""
    return [
        ModelInfo(name, entry.description, entry.default_input, _count_params(entry))
        for name, entry in sorted(_REGISTRY.items())
    ]


def format_models(models: list[ModelInfo]) -> str:
    """A table for ``tinycnn models``: name, params, input side, description; a row each."""
    # Columns as wide as their widest entry, so that no name or count pushes the rest along.
    name_width = max(len("name"), *(len(info.name) for info in models))
    params_width = max(len("params"), *(len(f"{info.params:,}") for info in models))
    lines = [f"{'name':<{name_width}} {'params':>{params_width}}  {'input':>5}  description"]
    lines.extend(
        f"{info.name:<{name_width}} {info.params:>{params_width},}  "
        f"{info.default_input:>5}  {info.description}"
        for info in models
    )
    return "\n".join(lines)


def model_options(name: str) -> dict[str, Any]:
    """The options of model ``name`` with their default values (num_classes excluded)."""
    params = inspect.signature(_entry(name).factory).parameters
    return {
        n: p.default
        for n, p in params.items()
        if n != "num_classes" and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)
    }
