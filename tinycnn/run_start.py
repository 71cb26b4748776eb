"""A run's start, before its loop: the config made absolute, a new run folder made (or the
run in it planned again for a resume, its config.toml read back and checked), the session
opened in its process group; a start refused on the way in removes what it made (Fresh).
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path

from tinycnn import distributed
from tinycnn.atomic import remove_stale_temporaries, write_text
from tinycnn.config import RunConfig, config_from_dict, load_config, to_toml
from tinycnn.errors import ConfigError, CropError
from tinycnn.resume import RESUME_SET_KEYS
from tinycnn.run_folder import LOCK, METRICS, read_resolved_config
from tinycnn.run_plan import RunPlan, plan_run
from tinycnn.runtime import agree_precision
from tinycnn.session import Session, load_session

# Settings added to tinycnn after a run may have started, whose default changes what a run
# computes: a run folder whose config.toml lacks one resumes with the value it trained with.
AS_TRAINED_BEFORE = {("train", "ema_bn_images"): 0}  # the EMA copied batch norm's statistics


class Fresh:
    """A new run's folder as it was before the start (``new``: rank 0 starting a new run)."""

    def __init__(self, out: Path, new: bool) -> None:
        self.out, self.new = out, new
        self.made, self.lock_made = not out.exists(), not (out / LOCK).exists()

    @contextlib.contextmanager
    def removed_if_refused(self) -> Iterator[None]:
        """Around the start: where it fails (a setting refused on the way in), the folder it
        made, or the files it wrote in one that was there, are removed, so nothing half-made
        is left for a later --resume or study to pick up."""
        try:
            yield
        except Exception:
            if self.new:
                if self.made:
                    shutil.rmtree(self.out, ignore_errors=True)
                else:
                    (self.out / "config.toml").unlink(missing_ok=True)
                    if self.lock_made:
                        (self.out / LOCK).unlink(missing_ok=True)
            raise


def resume_plan(
    out: Path, data: str | Path | None, changes: Sequence[str] = ()
) -> tuple[RunPlan, bool]:
    """The plan of resuming the run in ``out``, and whether it has a checkpoint to resume from
    (a run with none yet starts afresh: from its init checkpoint, if any)."""
    cfg = resumed_config(out, data, changes)
    resume = (out / "checkpoints" / "last.pt").is_file()
    if not resume:
        _check_nothing_trained(out)
    try:
        return plan_run(cfg, None if resume else cfg.train.init_from or None), resume
    except CropError as exc:  # its advice (--set augment.crop) is not a resume's
        side = exc.image_side
        raise ConfigError(
            f"{cfg.data.cache}: its images are {side}x{side}, and {out} trained on "
            f"crops of {cfg.augment.crop} ({exc.why}); resume it with a cache of the "
            "images it trained on, or train afresh on this one"
        ) from None


def absolute(cfg: RunConfig, init_from: str | Path | None) -> tuple[RunConfig, Path | None]:
    """cfg with the paths a run depends on (its cache, excluded images, initial weights) made
    absolute, so that --resume, evaluate... work from any folder; the init checkpoint, if any."""
    if cfg.data.cache:
        cache = Path(cfg.data.cache).expanduser().resolve()
        cfg = replace(cfg, data=replace(cfg.data, cache=str(cache)))
    if cfg.data.exclude:  # read again by a resume, from wherever it runs
        exclude = Path(cfg.data.exclude).expanduser().resolve()
        cfg = replace(cfg, data=replace(cfg.data, exclude=str(exclude)))
    init_from = init_from or cfg.train.init_from or None  # part of the run's config
    if init_from is not None:
        init_from = Path(init_from).expanduser().resolve()
        cfg = replace(cfg, train=replace(cfg.train, init_from=str(init_from)))
    return cfg, init_from


def open_session(plan: RunPlan, out: Path, resume: bool, main: bool) -> Session:
    """The run's session, in its process group, its folder swept of a killed run's temporaries."""
    if main:  # half-written files of a killed run (kill -9 runs no cleanup): 26 MB in 8 kills
        for folder in (out, out / "checkpoints"):
            remove_stale_temporaries(folder)
    dist = distributed.init(plan.runtime.device)
    plan = plan.with_runtime(agree_precision(plan.runtime))
    distributed.barrier()  # the run folder is ready before any rank reads it
    return load_session(plan, out, resume=resume, dist=dist)  # a spent budget: refused there


def new_run_dir(out: Path, cfg: RunConfig, flops: dict[int, float]) -> None:
    if (out / "checkpoints" / "last.pt").exists() or (out / "metrics.jsonl").exists():
        raise ConfigError(
            f"{out}: already holds a run; continue it with --resume {out}, or choose a new --out"
        )
    write_config(out, cfg, flops)


def write_config(out: Path, cfg: RunConfig, flops: dict[int, float]) -> None:
    sizes = cfg.augment.sizes or [cfg.augment.crop or max(flops)]
    per_size = ", ".join(f"{flops[side] / 1e9:.3f} at {side}x{side}" for side in sizes)
    compute = (
        f"\n# Training compute: GFLOP per image (forward + backward, torch's FlopCounterMode): "
        f"{per_size}; metrics.jsonl has train_pflop.\n"
    )
    write_text(out / "config.toml", to_toml(cfg) + compute)


def resumed_config(out: Path, data: str | Path | None, changes: Sequence[str] = ()) -> RunConfig:
    """The run's own config, its cache replaced by ``data`` when given and ``changes``
    ("section.key=value", RESUME_SET_KEYS only: a time budget, threads, what the run writes)
    applied; a ConfigError saying how to point at the cache when the one it names is gone."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out}: exists and is a file; --out must be a run folder")
    try:
        raw = read_resolved_config(out)
        for (section, key), value in AS_TRAINED_BEFORE.items():
            if isinstance(raw.get(section), dict) and key not in raw[section]:
                raw[section][key] = value
        cfg = config_from_dict(raw).validate()
    except ConfigError as exc:  # an edited config.toml: say which file
        where = out / "config.toml"
        raise ConfigError(exc if str(exc).startswith(str(where)) else f"{where}: {exc}") from None
    cfg = _changed(cfg, changes)
    if data is not None:
        cache = Path(data).expanduser().resolve()
        return replace(cfg, data=replace(cfg.data, cache=str(cache)))
    if cfg.data.cache and not Path(cfg.data.cache).exists():
        raise ConfigError(
            f"{out / 'config.toml'}: the run's cache {cfg.data.cache} is gone (moved or "
            f"deleted); if it moved, point at it with: tinycnn train --resume {out} --data "
            "CACHE"
        )
    return cfg


def _changed(cfg: RunConfig, changes: Sequence[str]) -> RunConfig:
    """cfg with a resume's --set changes, each of a key a resumed run may change."""
    for item in changes:
        key = item.partition("=")[0].strip()
        if key not in RESUME_SET_KEYS:
            raise ConfigError(
                f"--set {item}: a resumed run trains on as it began, so --resume takes --set "
                f"only for {', '.join(RESUME_SET_KEYS)} (--data where its cache moved)"
            )
    return load_config(None, list(changes), base=cfg) if changes else cfg


def _check_nothing_trained(out: Path) -> None:
    """A run folder without last.pt starts afresh only if it never trained: with its resume
    point gone but epochs logged or snapshots kept, starting over would mix a new run's files
    with the old one's."""
    logged = out / METRICS
    rows = len(logged.read_text(encoding="utf-8").splitlines()) if logged.is_file() else 0
    kept = sorted(p.name for p in (out / "checkpoints").glob("*.pt"))
    if rows or kept:
        what = [f"{rows} evaluation{'s' * (rows != 1)} logged"] if rows else []
        what += [f"checkpoints {', '.join(kept[:3])}{' ...' if len(kept) > 3 else ''}"] * bool(kept)
        raise ConfigError(
            f"{out / 'checkpoints' / 'last.pt'}: missing, but the run has trained "
            f"({'; '.join(what)}); put last.pt back to resume, or train afresh in a new folder"
        )
