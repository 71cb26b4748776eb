"""Conv3x3's kernels chosen by timing on the machine (tinycnn/models/kernel_choice.py): the
faster kept, remembered per machine, never read from a damaged file, pinned by a resume, the
results equal to the plain convolution's whichever is chosen."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import tinycnn.models.conv as conv_module
from tinycnn.models.conv import Conv3x3
from tinycnn.models.kernel_choice import KernelChoices, machine_file, measure_pass, shape_key

KEY = shape_key(512, 512, 2, 2, torch.float32)


def _timer(seconds: dict[str, tuple[float, float]], calls: list[str]):
    def measure(name: str) -> tuple[float, float]:
        calls.append(name)
        return seconds[name]

    return measure


@pytest.mark.parametrize(
    ("onednn", "taps", "chosen"),
    [
        (1.0, 0.5, True),  # the matmuls twice as fast
        (1.0, 0.94, True),  # 6% faster: past the margin
        (1.0, 0.96, False),  # 4% faster: a near-tie stays on oneDNN
        (1.0, 1.5, False),
    ],
)
def test_the_faster_kernel_is_kept_near_ties_stay_on_onednn(onednn, taps, chosen) -> None:
    choices = KernelChoices(path=None)
    calls: list[str] = []
    got = choices.choose(KEY, ("forward",), _timer({"forward": (onednn, taps)}, calls))
    assert got == {"forward": chosen} and calls == ["forward"]


def test_each_pass_is_timed_once_and_remembered_on_disk(tmp_path: Path) -> None:
    path = tmp_path / "kernels" / "this-machine.json"
    seconds = {"forward": (1.0, 2.0), "input_grad": (1.0, 0.5), "weight_grad": (2.0, 1.0)}
    calls: list[str] = []
    first = KernelChoices(path)
    assert first.choose(KEY, ("forward",), _timer(seconds, calls)) == {"forward": False}
    passes = ("forward", "input_grad", "weight_grad")
    expected = {"forward": False, "input_grad": True, "weight_grad": True}
    assert first.choose(KEY, passes, _timer(seconds, calls)) == expected
    assert calls == ["forward", "input_grad", "weight_grad"]  # the forward not timed again
    assert json.loads(path.read_text()) == {KEY: expected}
    assert "1 layer shape" in first.take_report() and first.take_report() is None
    # Another process on this machine: the file's choices, no timing.
    second = KernelChoices(path)
    assert second.choose(KEY, passes, _timer(seconds, calls)) == expected
    assert len(calls) == 3 and second.take_report() is None


def test_two_processes_keep_each_others_shapes(tmp_path: Path) -> None:
    path = tmp_path / "m.json"
    one, two = KernelChoices(path), KernelChoices(path)
    other = shape_key(768, 768, 4, 4, torch.bfloat16)
    one.choose(KEY, ("forward",), _timer({"forward": (1.0, 0.1)}, []))
    two.choose(other, ("forward",), _timer({"forward": (0.1, 1.0)}, []))  # read before one wrote
    assert json.loads(path.read_text()) == {KEY: {"forward": True}, other: {"forward": False}}


@pytest.mark.parametrize(
    "text",
    [
        "{not json",
        '["a list"]',
        '{"k": {"forward": "yes"}}',
        "",
        # Damage under the very shape being timed (a TypeError had stopped every run here).
        json.dumps({KEY: None}),
        json.dumps({KEY: ["forward"]}),
        json.dumps({KEY: "x"}),
    ],
)
def test_a_damaged_file_is_timed_again_and_rewritten(tmp_path: Path, text: str) -> None:
    path = tmp_path / "m.json"
    path.write_text(text)
    calls: list[str] = []
    choices = KernelChoices(path)
    assert choices.choose(KEY, ("forward",), _timer({"forward": (1.0, 0.2)}, calls)) == {
        "forward": True
    }
    assert calls == ["forward"]
    assert json.loads(path.read_text())[KEY] == {"forward": True}


def test_off_means_the_rules_and_a_resume_pins_its_own_choices(tmp_path: Path) -> None:
    choices = KernelChoices(tmp_path / "m.json", enabled=False)
    calls: list[str] = []
    assert choices.choose(KEY, ("forward",), _timer({"forward": (1.0, 0.1)}, calls)) is None
    choices.pin({KEY: {"forward": False, "weight_grad": True}})
    assert choices.choose(KEY, ("forward",), _timer({"forward": (1.0, 0.1)}, calls)) == {
        "forward": False,
        "weight_grad": True,
    }
    assert calls == [] and choices.used() == {
        "512x512@2x2:float32": {"forward": False, "weight_grad": True}
    }
    choices.reset(enabled=True)
    assert choices.choose(KEY, ("forward",), _timer({"forward": (1.0, 0.1)}, calls)) == {
        "forward": True
    }


def test_the_file_is_per_cpu_model_and_torch_version(tmp_path: Path) -> None:
    path = machine_file(tmp_path)
    assert path.parent == tmp_path and path.suffix == ".json"
    assert torch.__version__.replace(".", "-").replace("+", "-") in path.name
    assert torch.backends.cpu.get_cpu_capability() in path.name


def test_the_timing_leaves_the_runs_random_streams_alone() -> None:
    kernels = {"forward": (lambda x, w, g: x + 1, lambda x, w, g: x * 2)}
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    onednn, taps = measure_pass("forward", 4, 4, 2, 2, torch.float32, 8, kernels)
    assert onednn > 0 and taps > 0
    assert torch.equal(torch.rand(3), expected)


def test_one_thread_and_two_are_timed_apart_and_old_checkpoints_still_pin(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # One thread and two rank the kernels differently (measured: a Zen 5's 128 -> 128 weight
    # gradient at 12x12, oneDNN/matmuls 0.71 on one thread, 0.37 on two): keyed apart.
    one, two = (shape_key(512, 512, 2, 2, torch.float32, threads=t) for t in (1, 2))
    assert one == "512x512@2x2:float32:t1" and two == "512x512@2x2:float32:t2"
    monkeypatch.setattr(torch, "get_num_threads", lambda: 3)
    assert shape_key(512, 512, 2, 2, torch.float32) == "512x512@2x2:float32:t3"
    choices = KernelChoices(path=None)
    calls: list[str] = []
    choices.choose(one, ("forward",), _timer({"forward": (1.0, 0.5)}, calls))
    assert choices.choose(two, ("forward",), _timer({"forward": (1.0, 2.0)}, calls)) == {
        "forward": False
    }
    assert calls == ["forward", "forward"] and choices.known(one) == {"forward": True}
    # A checkpoint from before the thread count: its choices still pin the shape, any threads.
    choices.pin({"512x512@2x2:float32": {"forward": True}})
    assert choices.choose(two, ("forward",), _timer({}, calls)) == {"forward": True}
    assert choices.known(one) == {"forward": True} and len(calls) == 2
    # A run resumed on another thread count computes as it did: its own choices, not re-timed.
    choices.pin({one: {"forward": False}})
    assert choices.choose(two, ("forward",), _timer({}, calls)) == {"forward": False}
    assert len(calls) == 2


class _LoadedClock:
    """A fake perf_counter that the fake kernels advance: each call costs its kernel's time,
    ten times that when it starts inside the load window."""

    def __init__(self, load: tuple[float, float]) -> None:
        self.now, self.load, self.calls = 0.0, load, []

    def perf_counter(self) -> float:
        return self.now

    def kernel(self, name: str, seconds: float):
        def run(x, w, g) -> None:
            self.calls.append(name)
            loaded = self.load[0] <= self.now < self.load[1]
            self.now += seconds * (10 if loaded else 1)

        return run


def test_the_two_kernels_are_timed_in_turns_so_a_burst_of_load_hits_both(monkeypatch) -> None:
    import tinycnn.models.kernel_choice as kernel_choice

    # The matmuls take half oneDNN's time, but other work starts on the machine just after
    # oneDNN's first calls and lasts a while: timed one after the other, every matmul call
    # would fall in the burst (and lose); in turns, both kernels are timed inside and outside.
    clock = _LoadedClock(load=(0.085, 0.6))
    monkeypatch.setattr(kernel_choice, "time", clock)
    kernels = {"forward": (clock.kernel("onednn", 0.02), clock.kernel("taps", 0.01))}
    onednn, taps = measure_pass("forward", 4, 4, 2, 2, torch.float32, 8, kernels)
    assert (onednn, taps) == pytest.approx((0.02, 0.01))
    assert clock.calls[:6] == ["onednn", "taps"] * 3  # warm-ups, then rounds in turn
    rounds = len(clock.calls) // 2 - 1
    assert clock.calls == ["onednn", "taps"] * (rounds + 1)
    assert kernel_choice.MIN_CALLS <= rounds <= kernel_choice.MAX_CALLS


@pytest.mark.parametrize("forward", [False, True])
@pytest.mark.parametrize("input_grad", [False, True])
@pytest.mark.parametrize("weight_grad", [False, True])
@pytest.mark.parametrize("channels_last", [False, True])
def test_every_timed_choice_gives_the_plain_convolutions_results(
    forward: bool, input_grad: bool, weight_grad: bool, channels_last: bool, monkeypatch
) -> None:
    choices = KernelChoices(path=None)
    choices.pin(
        {
            shape_key(64, 96, 4, 4, torch.float32, channels_last=channels_last): {
                "forward": forward,
                "input_grad": input_grad,
                "weight_grad": weight_grad,
            }
        }
    )
    monkeypatch.setattr(conv_module, "CHOICES", choices)
    torch.manual_seed(0)
    conv = Conv3x3(64, 96)
    x = torch.randn(8, 64, 4, 4)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_()
    assert conv.tap_paths(x) == (forward, input_grad, weight_grad)
    out = conv(x)
    grad_out = torch.randn_like(out)
    got = torch.autograd.grad(out, [x, conv.weight], grad_out)
    x64 = x.detach().double().requires_grad_()
    w64 = conv.weight.detach().double().requires_grad_()
    exact = F.conv2d(x64, w64, None, 1, 1)
    want = torch.autograd.grad(exact, [x64, w64], grad_out.double())
    torch.testing.assert_close(out.double(), exact, rtol=1e-4, atol=1e-4)
    for have, truth in zip(got, want, strict=True):
        torch.testing.assert_close(have.double(), truth, rtol=1e-4, atol=1e-3)


def test_a_large_map_or_float64_keeps_the_rules_untimed(monkeypatch) -> None:
    choices = KernelChoices(path=None)
    monkeypatch.setattr(conv_module, "CHOICES", choices)
    conv = Conv3x3(16, 16)
    with torch.no_grad():
        conv(torch.randn(2, 16, 32, 32))  # 1,024 positions: over the timed maps
        conv.double()(torch.randn(2, 16, 4, 4, dtype=torch.float64))
    assert choices.used() == {}
    with torch.no_grad():
        conv.float()(torch.randn(2, 16, 4, 4))
    assert list(choices.used()) == ["16x16@4x4:float32/nchw"]  # by shape, dtype and layout


def _run_cfg(cache: Path, *extra: str):
    from tinycnn.config import load_config

    return load_config(
        None,
        [
            f"data.cache={json.dumps(str(cache))}",
            "model.name=cnn5",
            "model.conv_channels=[8, 8, 8]",  # maps of 56, 28 and 14: the last is timed
            "model.fc_widths=[16]",
            'data.normalization="channel"',
            "train.batch_size=16",
            "train.threads=1",
            "train.epochs=2",
            *extra,
        ],
    )


def test_a_run_keeps_its_choices_and_a_resume_computes_with_them(
    synth_sources: dict[str, Path], tmp_path: Path, monkeypatch
) -> None:
    from tinycnn.checkpoint import load_checkpoint
    from tinycnn.data.prepare import prepare
    from tinycnn.training import train

    choices = conv_module.CHOICES
    monkeypatch.setattr(choices, "path", tmp_path / "kernels.json")
    monkeypatch.setattr(choices, "table", {})
    monkeypatch.setattr(choices, "_loaded", False)
    cache = prepare(synth_sources["folder"], tmp_path / "cache", progress=False).path
    run = tmp_path / "run"
    train(_run_cfg(cache), run, progress=False, stop_at_iteration=2)
    saved = load_checkpoint(run / "checkpoints" / "last.pt")["conv_kernels"]
    key = next(k for k in saved if k.startswith("8x8@14x14:"))  # fp32 or bf16, by the machine
    assert set(saved[key]) == {"forward", "input_grad", "weight_grad"}
    assert json.loads((tmp_path / "kernels.json").read_text())[key + ":t1"] == saved[key]
    # The machine's file changes (another timing, another process): the resume keeps its own.
    flipped = {key + ":t1": {name: not chosen for name, chosen in saved[key].items()}}
    (tmp_path / "kernels.json").write_text(json.dumps(flipped))
    monkeypatch.setattr(choices, "table", {})
    monkeypatch.setattr(choices, "_loaded", False)
    train(None, run, resume=True, progress=False)
    assert choices.known(key + ":t1") == saved[key]
    assert load_checkpoint(run / "checkpoints" / "last.pt")["conv_kernels"][key] == saved[key]
    # Off: the static rules, nothing timed or saved.
    off = tmp_path / "off"
    train(_run_cfg(cache, "train.autotune=false"), off, progress=False, stop_at_iteration=1)
    assert not choices.enabled
    assert load_checkpoint(off / "checkpoints" / "last.pt")["conv_kernels"] == {}
    # Loaded for evaluation: each its own run's setting and choices.
    from tinycnn.inference import load_model

    loaded = load_model(run / "checkpoints" / "last.pt").kernels
    assert loaded.enabled and loaded.by_layout and loaded.choices[key] == saved[key]
    assert load_model(off / "checkpoints" / "last.pt").kernels.enabled is False
    choices.reset(enabled=True)


def test_known_choices_need_no_timing_or_file(tmp_path: Path) -> None:
    path = tmp_path / "m.json"
    path.write_text(json.dumps({KEY: {"forward": True}}))
    choices = KernelChoices(path)
    assert choices.known(KEY) is None  # the file is not read: a trace must not do I/O
    choices.choose(KEY, ("forward",), _timer({}, []))  # read from the file, nothing timed
    assert choices.known(KEY) == {"forward": True}
    choices.pin({KEY: {"forward": False}})
    assert choices.known(KEY) == {"forward": False}
    choices.reset(enabled=False)
    assert choices.known(KEY) is None


@pytest.mark.slow
def test_a_compiled_model_neither_times_nor_reads_in_its_trace(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "m.json"
    everything = {"forward": True, "input_grad": True, "weight_grad": True}
    path.write_text(json.dumps({shape_key(512, 512, 2, 2, torch.float32): everything}))
    choices = KernelChoices(path)  # nothing read or timed yet
    monkeypatch.setattr(conv_module, "CHOICES", choices)
    model = torch.nn.Sequential(Conv3x3(512, 512), torch.nn.ReLU(), Conv3x3(512, 512))
    x = torch.randn(4, 512, 2, 2, requires_grad=True)
    assert torch._dynamo.explain(model)(x).graph_break_count == 0
    assert choices.used() == {} and not choices.timed_keys  # the static rules, in the trace
    model(x)  # an eager call reads the file: later traces take its choices
    assert choices.known(shape_key(512, 512, 2, 2, torch.float32)) == everything


def test_the_suite_keeps_its_choices_out_of_the_users_cache() -> None:
    # conftest sets TINYCNN_CACHE to a temporary folder before tinycnn is imported.
    import os

    from tinycnn.paths import KERNEL_CACHE

    root = Path(os.environ["TINYCNN_CACHE"])
    assert (
        root.name.startswith("tinycnn-test-cache-") and root != Path.home() / ".cache" / "tinycnn"
    )
    assert KERNEL_CACHE.is_relative_to(root) and conv_module.CHOICES.path.is_relative_to(root)


def test_a_machine_file_that_cannot_be_written_costs_the_timing_not_the_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A full disk reaches here as tinycnn's OutputError (atomic.py), not an OSError: it escaped
    # into a TorchScript export's trace once, when a shape was first timed there.
    import tinycnn.compile_choice as compile_choice
    from tinycnn import atomic
    from tinycnn.errors import OutputError

    def full_disk(path, obj):
        raise OutputError(f"{path}: cannot write (disk full)")

    monkeypatch.setattr(atomic, "write_json", full_disk)  # what both files are written by
    choices = KernelChoices(tmp_path / "kernels.json")
    chosen = choices.choose("8x8@4x4:float32:t1", ("forward",), lambda name: (1.0, 0.5))
    assert chosen == {"forward": True}
    assert "not kept" in choices.take_report()  # not "kept in" a file that was not written
    compile_choice._save(tmp_path / "compile.json", "key", True)  # no error either
    assert not (tmp_path / "kernels.json").exists() and not (tmp_path / "compile.json").exists()


def _recording(monkeypatch, choices: KernelChoices) -> list[dict]:
    """Conv3x3's timing calls, recorded (each returns: the matmuls twice as fast)."""
    calls: list[dict] = []

    def measure(name, c_in, c_out, height, width, dtype, batch, kernels, channels_last=True):
        calls.append({"pass": name, "batch": batch, "channels_last": channels_last})
        return 1.0, 0.5

    monkeypatch.setattr(conv_module, "CHOICES", choices)
    monkeypatch.setattr(conv_module, "_measure_pass", measure)
    return calls


def test_a_shape_is_timed_at_a_training_batch_whatever_batch_meets_it_first(monkeypatch) -> None:
    # A one-image prediction had timed a shape at batch 1 and every later training run on the
    # machine took that choice (512 at 2x2, fp32: oneDNN at batch 1, the matmuls 1.7x at 128).
    from tinycnn.models.kernel_choice import TIMED_BATCH

    calls = _recording(monkeypatch, KernelChoices(path=None))
    with torch.no_grad():
        Conv3x3(8, 8)(torch.randn(1, 8, 2, 2).contiguous(memory_format=torch.channels_last))
    assert calls == [{"pass": "forward", "batch": TIMED_BATCH, "channels_last": True}]


def test_the_inputs_layout_is_timed_and_keyed_apart(monkeypatch) -> None:
    # The two layouts rank the kernels differently (512 at 2x2, fp32 forward: the matmuls
    # 0.57x oneDNN's time on channels_last, 1.08x on NCHW): an NCHW run had taken choices
    # timed on channels_last tensors.
    choices = KernelChoices(path=None)
    calls = _recording(monkeypatch, choices)
    conv, x = Conv3x3(8, 8), torch.randn(4, 8, 2, 2)
    with torch.no_grad():
        conv(x)  # NCHW
        conv(x.contiguous(memory_format=torch.channels_last))
    assert [c["channels_last"] for c in calls] == [False, True]
    assert sorted(choices.used()) == ["8x8@2x2:float32", "8x8@2x2:float32/nchw"]
    # A checkpoint saved before the layout was keyed pins its choice for either layout.
    choices.pin({"8x8@2x2:float32": {"forward": False}}, by_layout=False)
    assert choices.choose(shape_key(8, 8, 2, 2, torch.float32, channels_last=False),
                          ("forward",), _timer({}, [])) == {"forward": False}  # fmt: skip
    # Its next checkpoint keys them by layout, so a second resume still finds them.
    assert choices.used()["8x8@2x2:float32/nchw"] == {"forward": False}
    again = KernelChoices(path=None)
    again.pin(choices.used(), by_layout=True)
    assert again.choose(shape_key(8, 8, 2, 2, torch.float32, channels_last=False),
                        ("forward",), _timer({}, [])) == {"forward": False}  # fmt: skip


def test_a_resume_times_the_passes_its_run_had_not_met_and_keeps_them(tmp_path: Path) -> None:
    choices = KernelChoices(path=None)
    choices.pin({KEY: {"forward": False}})  # met only without gradients before the checkpoint
    calls: list[str] = []
    seconds = {"input_grad": (1.0, 0.5), "weight_grad": (1.0, 2.0)}
    passes = ("forward", "input_grad", "weight_grad")
    expected = {"forward": False, "input_grad": True, "weight_grad": False}
    assert choices.choose(KEY, passes, _timer(seconds, calls)) == expected
    assert calls == ["input_grad", "weight_grad"]  # the pinned forward kept, not re-timed
    assert choices.used()["512x512@2x2:float32"] == expected  # the next checkpoint has them


def test_a_loaded_model_computes_with_its_runs_setting_and_choices(monkeypatch) -> None:
    # evaluate / predict had timed shapes for a run trained with train.autotune = false, and
    # ignored the choices a run saved, whatever the kernels its own evaluations had used.
    from tinycnn.models.kernel_choice import SavedChoices

    choices = KernelChoices(path=None)
    calls = _recording(monkeypatch, choices)
    conv = Conv3x3(8, 8)
    x = torch.randn(4, 8, 2, 2).contiguous(memory_format=torch.channels_last)
    off = SavedChoices.from_payload({"conv_kernels": {}, "config": {"train": {"autotune": False}}})
    with torch.no_grad(), choices.running(off):
        conv(x)
    assert calls == [] and choices.used() == {} and choices.enabled  # restored after
    saved = {"conv_kernels": {"8x8@2x2:float32": {"forward": False}}, "conv_kernels_by_layout": 1}
    pinned = SavedChoices.from_payload({**saved, "config": {"train": {"autotune": True}}})
    with torch.no_grad(), choices.running(pinned):
        assert conv.tap_paths(x) == (False, False, False)  # its own choice, not the timing's
    assert calls == [] and choices.pinned == {}
    with torch.no_grad():
        assert conv.tap_paths(x) == (True, False, False)  # outside: timed here
    assert len(calls) == 1
    assert SavedChoices.from_payload({"config": {}}).enabled is False  # before autotuning
