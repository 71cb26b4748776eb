"""What a training step calls (Session.step_model): the model, wrapped in DDP under torchrun,
compiled when asked (train.compile; "auto": at the input sides where it is timed faster,
compile_choice.py). Built after the weights are in place (DDP starts from rank 0's anyway).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from tinycnn.compile_choice import SizeDispatch, agree_kernels, choose, compiled_per_side
from tinycnn.config import RunConfig
from tinycnn.distributed import Dist, broadcast_int
from tinycnn.runtime import Runtime
from tinycnn.schedule import Schedule


@dataclass
class StepModel:
    module: nn.Module  # what a training step calls
    compile_choices: dict[int, bool]  # {input side: compiled}, train.compile = "auto"
    compile_report: str | None  # the line on that timing, when it was timed


def build_step_model(
    model: nn.Module,
    cfg: RunConfig,
    schedule: Schedule,
    eval_size: int,
    runtime: Runtime,
    dist: Dist,
    pinned: dict[int, bool],
) -> StepModel:
    """The step's module for ``model``; ``pinned``: a resumed run's own compile choices."""
    if dist.active and cfg.train.autotune:
        sides = [side for steps, side in schedule.phases() if steps > 0]
        agree_kernels(model, sides, eval_size, cfg.train.batch_size // dist.world, runtime)
    choose_sides = cfg.train.compile == "auto"
    choices, report = pinned, None
    compiled = compiled_per_side(model) if choose_sides else None
    if choose_sides:  # timed on the bare model: DDP's hooks must see only real steps
        choices, report = _compile_choices(model, compiled, cfg, schedule, runtime, dist, pinned)
    step_model = model
    if dist.active:
        from torch.nn.parallel import DistributedDataParallel

        cuda = runtime.device.type == "cuda"
        step_model = DistributedDataParallel(model, device_ids=[runtime.device] if cuda else None)
        compiled = None  # compile the DDP wrapper instead
    if cfg.train.compile is True:  # compiled once per input side; evaluation runs it eager
        return StepModel(compiled_per_side(step_model), choices, report)
    sides = {side for side, chosen in choices.items() if chosen}
    if not choose_sides or not sides:
        return StepModel(step_model, choices, report)
    # (not `compiled or ...`: a compiled module's truth asks the model for a len() it lacks)
    compiled = compiled if compiled is not None else compiled_per_side(step_model)
    return StepModel(SizeDispatch(step_model, compiled, sides), choices, report)


def _compile_choices(
    model: nn.Module,
    compiled: nn.Module,
    cfg: RunConfig,
    schedule: Schedule,
    runtime: Runtime,
    dist: Dist,
    pinned: dict[int, bool],
) -> tuple[dict[int, bool], str | None]:
    """{input side: compile it} for the sides the schedule trains at: a resumed run's own, else
    read from this machine's file of choices or timed (rank 0's, under torchrun); the report."""
    train = cfg.train
    sides = sorted({side for steps, side in schedule.phases() if steps > 0})
    setting = (
        f"autotune={train.autotune} deterministic={train.deterministic} "
        f"sync_batch_norm={train.sync_batch_norm and dist.active}"
    )
    return choose(
        model,
        compiled,
        sides,
        train.batch_size // dist.world,
        runtime,
        setting=setting,
        pinned=pinned,
        agree=broadcast_int,
        main=dist.main,
    )
