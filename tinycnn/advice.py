"""The warning a run prints when its first epoch shows no learning, and what it advises."""

from __future__ import annotations

import math

from tinycnn.config import RunConfig
from tinycnn.metrics import clearly_below_chance
from tinycnn.models import model_options


def learning(row: dict, counts: dict[str, int], num_classes: int) -> bool:
    """True when an epoch shows learning: its training error, or an evaluation's error at its
    end, is clearly below chance (metrics.clearly_below_chance).

    Not the loss: a healthy first epoch behind warm-up and label smoothing can end with a
    training loss within 1% of ln(classes) and a val loss above it, while its errors are far
    below chance. counts: images behind each error, by split name ("train", "val", "tune").
    """
    return any(
        clearly_below_chance(row[f"{name}_top1_error"], count, num_classes)
        for name, count in counts.items()
    )


def not_learning_advice(row: dict, counts: dict[str, int], cfg: RunConfig, classes: int) -> str:
    """The warning for an epoch that shows no learning: its errors against chance, and what to
    try among what the config does not already set."""
    chance = 1 - 1 / classes
    errors = ", ".join(
        f"{name} top-1 error {row[f'{name}_top1_error']:.1%} ({count:,} images)"
        for name, count in counts.items()
    )
    tries = []
    if {**model_options(cfg.model.name), **cfg.model.options}.get("batch_norm") is False:
        tries.append("batch norm (--set model.batch_norm=true)")
    if cfg.model.init != "kaiming":
        tries.append("kaiming init (--set model.init=kaiming)")
    if not cfg.schedule.warmup_epochs:
        tries.append("warm-up (--set schedule.warmup_epochs=1)")
    val_loss = row.get("val_loss", math.nan)
    if val_loss > 2 * math.log(classes):  # confidently wrong, not guessing: steps too large
        tries.append(
            f"a lower optim.lr (it is {cfg.optim.lr:g}; val loss {val_loss:.3g}, far above "
            f"ln {classes} = {math.log(classes):.3f})"
        )
    else:
        tries.append(f"a higher optim.lr (it is {cfg.optim.lr:g})")
    return (
        f"warning: after an epoch the model is not learning yet: {errors}; none clearly below "
        f"the {chance:.1%} of guessing among {classes} classes. Try {', '.join(tries)}"
    )
