"""Conv3x3: the convolution and its gradients as nine matmuls equal the plain convolution's,
taken where meant."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import tinycnn.models.conv as conv_module
from tinycnn.models import create_model
from tinycnn.models.conv import (
    Conv3x3,
    tap_convolution,
    tap_input_gradient,
    tap_weight_gradient,
    uses_tap_conv,
    uses_tap_gradient,
)


@pytest.fixture(autouse=True)
def static_rules():
    """These tests pin the static rules (train.autotune = false); the timed choices are
    tests/test_kernel_choice.py's."""
    conv_module.CHOICES.reset(enabled=False)
    yield
    conv_module.CHOICES.reset(enabled=True)


# One 2x2 image and the weights 1..9 (row by row): the cases worked by hand below.
X = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])
W = torch.arange(1.0, 10.0).view(1, 1, 3, 3)
CORNER = torch.tensor([[[[1.0, 0.0], [0.0, 0.0]]]])  # a gradient of 1 at output (0, 0) only


def test_the_forward_by_hand() -> None:
    # out[p] = sum of w[1 + dy, 1 + dx] x[p + (dy, dx)] over the taps that stay on the map:
    # (0, 0): 5*1 + 6*2 + 8*3 + 9*4 = 77; (0, 1): 4*1 + 5*2 + 7*3 + 8*4 = 67;
    # (1, 0): 2*1 + 3*2 + 5*3 + 6*4 = 47; (1, 1): 1*1 + 2*2 + 4*3 + 5*4 = 37.
    expected = torch.tensor([[[[77.0, 67.0], [47.0, 37.0]]]])
    assert torch.equal(tap_convolution(X, W), expected)
    assert torch.equal(tap_convolution(X, W, torch.tensor([0.5])), expected + 0.5)


def test_the_input_gradient_of_one_output_pixel_by_hand() -> None:
    # Output (0, 0) took input (dy, dx) through w[1 + dy, 1 + dx]: its gradient is those weights.
    expected = torch.tensor([[[[5.0, 6.0], [8.0, 9.0]]]])
    assert torch.equal(tap_input_gradient(CORNER, W), expected)


def test_the_weight_gradient_of_one_output_pixel_by_hand() -> None:
    # That output saw the input through taps (dy, dx) in {0, 1}^2 (the others fell on padding):
    # grad_w[1 + dy, 1 + dx] = x[dy, dx].
    expected = torch.tensor([[0.0, 0.0, 0.0], [0.0, 1.0, 2.0], [0.0, 3.0, 4.0]])
    assert torch.equal(tap_weight_gradient(X, CORNER)[0, 0], expected)


@pytest.mark.parametrize(("taps_conv", "taps_grad"), [(True, True), (True, False), (False, True)])
@pytest.mark.parametrize(
    ("c_in", "c_out", "height", "width", "bias"),
    [(3, 4, 2, 2, False), (5, 6, 1, 1, True), (4, 3, 2, 3, True), (2, 5, 5, 4, False)],
)
def test_gradients_equal_the_plain_convolutions(
    c_in: int, c_out: int, height: int, width: int, bias: bool, taps_conv, taps_grad, monkeypatch
) -> None:
    monkeypatch.setattr(conv_module, "uses_tap_conv", lambda *shape: taps_conv)
    monkeypatch.setattr(conv_module, "uses_tap_gradient", lambda *shape: taps_grad)
    torch.manual_seed(0)
    conv = Conv3x3(c_in, c_out, bias=bias).double()
    x = torch.randn(3, c_in, height, width, dtype=torch.float64, requires_grad=True)
    grad_out = torch.randn(3, c_out, height, width, dtype=torch.float64)
    out = conv(x)
    assert type(out.grad_fn).__name__ == "_TapConvBackward"
    params = [x, conv.weight, *([conv.bias] if bias else [])]
    got = torch.autograd.grad(out, params, grad_out)
    reference = F.conv2d(x, conv.weight, conv.bias, 1, 1)  # autograd of the plain convolution
    want = torch.autograd.grad(reference, params, grad_out)
    torch.testing.assert_close(out, reference, rtol=0, atol=1e-12)
    for name, have, expected in zip(["input", "weight", "bias"], got, want, strict=False):
        torch.testing.assert_close(have, expected, rtol=0, atol=1e-12, msg=name)


FP32, BF16 = torch.float32, torch.bfloat16


@pytest.mark.parametrize(
    ("c_in", "c_out", "height", "width", "dtype", "taps"),
    [
        (512, 512, 2, 2, FP32, True),  # fastnet's last stage at 32x32 input
        (128, 128, 4, 4, FP32, True),
        (64, 64, 4, 4, FP32, False),  # few channels: oneDNN's kernel is faster
        (128, 128, 5, 4, FP32, False),  # 20 positions with < 256 channels
        (256, 512, 8, 8, FP32, True),
        (256, 512, 8, 9, FP32, False),  # 72 positions
        (128, 256, 8, 8, FP32, False),
        (768, 768, 2, 2, BF16, True),  # bf16: oneDNN's weight gradient is slow up to 8x8
        (384, 768, 4, 4, BF16, True),
        (384, 768, 4, 5, BF16, False),  # 20 positions with < 512 channels
        (512, 1024, 8, 8, BF16, True),
        (256, 512, 8, 8, BF16, False),  # faster on oneDNN in bf16, unlike fp32
        (128, 128, 4, 4, BF16, False),
    ],
)
def test_which_shapes_take_the_matmul_weight_gradient(
    c_in: int, c_out: int, height: int, width: int, dtype: torch.dtype, taps: bool
) -> None:
    assert uses_tap_gradient(c_in, c_out, height, width, dtype) is taps


@pytest.mark.parametrize(
    ("c_in", "c_out", "height", "width", "dtype", "taps"),
    [
        (512, 512, 2, 2, FP32, True),  # fastnet width 64's last stage at 32x32 input
        (1024, 1024, 4, 4, FP32, True),  # width 128's at 64x64
        (512, 1024, 6, 6, FP32, True),  # 36 positions
        (512, 1024, 6, 7, FP32, False),  # 42
        (512, 1024, 8, 8, FP32, False),
        (256, 512, 4, 4, FP32, False),  # 256 channels in: oneDNN's kernel is faster
        (384, 768, 4, 4, FP32, False),
        (768, 768, 2, 2, BF16, True),  # bf16: only 2x2 maps, or 4x4 with 1024 channels
        (512, 1024, 4, 4, BF16, False),
        (1024, 1024, 4, 4, BF16, True),
        (1024, 1024, 6, 6, BF16, False),
        (384, 768, 2, 2, BF16, False),
    ],
)
def test_which_shapes_take_the_matmul_convolution(
    c_in: int, c_out: int, height: int, width: int, dtype: torch.dtype, taps: bool
) -> None:
    assert uses_tap_conv(c_in, c_out, height, width, dtype) is taps


def test_bf16_products_add_up_in_fp32_rounded_once() -> None:
    # At the centre of a 3x3 map of ones every tap counts: 256 + 8 x 0.5 = 260, a bf16 value.
    # Added tap by tap in bf16 (spacing 2 at 256) each 0.5 would round away, leaving 256.
    x = torch.ones(1, 1, 3, 3, dtype=torch.bfloat16)
    w = torch.full((1, 1, 3, 3), 0.5, dtype=torch.bfloat16)
    w[0, 0, 1, 1] = 256.0
    out = tap_convolution(x, w)
    assert out.dtype == torch.bfloat16
    assert out[0, 0, 1, 1].item() == 260.0
    assert tap_input_gradient(x, w)[0, 0, 1, 1].item() == 260.0


def test_only_cpu_fp32_or_bf16_without_a_trace_takes_the_matmuls() -> None:
    small, wide = Conv3x3(128, 128), Conv3x3(512, 512)
    x, x_wide = torch.randn(2, 128, 2, 2), torch.randn(2, 512, 2, 2)
    # (forward, input gradient, weight gradient); x needs no gradient of its own
    assert small.tap_paths(x) == (False, False, True)  # 128 channels: only the weight gradient
    assert wide.tap_paths(x_wide) == (True, False, True)
    assert wide.tap_paths(x_wide.requires_grad_()) == (True, True, True)
    x_wide = x_wide.detach()
    assert type(small(x).grad_fn).__name__ == "_TapConvBackward"
    with torch.no_grad():  # evaluation: the matmul forward where it is the faster, no gradients
        assert small.tap_paths(x) == (False, False, False)
        assert wide.tap_paths(x_wide) == (True, False, False)
        assert wide(x_wide).grad_fn is None
    wide.weight.requires_grad_(False)
    assert wide.tap_paths(x_wide) == (True, False, False)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # bf16's own rules
        assert wide.tap_paths(x_wide) == (True, False, False)
        assert small.tap_paths(x) == (False, False, False)
        assert type(small(x).grad_fn).__name__ != "_TapConvBackward"
    with torch.autocast("cpu", dtype=torch.float16):
        assert wide.tap_paths(x_wide) == (False, False, False)
    assert Conv3x3(512, 512, stride=2).tap_paths(x_wide) == (False, False, False)
    assert wide.bfloat16().tap_paths(x_wide.bfloat16()) == (True, False, False)
    assert wide.half().tap_paths(x_wide.half()) == (False, False, False)
    assert wide.float().tap_paths(x_wide.double()) == (False, False, False)  # mixed dtypes
    assert list(small.state_dict()) == list(torch.nn.Conv2d(128, 128, 3, bias=False).state_dict())


def test_traces_and_exports_keep_the_one_convolution_operator() -> None:
    conv = Conv3x3(512, 512).eval()
    x = torch.randn(2, 512, 2, 2)
    with torch.no_grad():
        graph = str(torch.jit.trace(conv, x).graph)
        program = torch.export.export(conv, (x,))
    assert "aten::_convolution" in graph and "aten::mm" not in graph
    ops = {str(node.target) for node in program.graph.nodes if node.op == "call_function"}
    assert any("conv2d" in op or "convolution" in op for op in ops), ops
    assert not any("mm" in op.split(".")[1] for op in ops), ops


def test_a_fastnet_step_has_the_plain_convolutions_gradients(monkeypatch) -> None:
    torch.manual_seed(0)
    model = create_model("fastnet", num_classes=10, width=64).double()  # 512 channels at 2x2
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    labels = torch.tensor([0, 3])

    def step() -> list[torch.Tensor]:
        model.zero_grad()
        out = model(x)
        F.cross_entropy(out, labels).backward()
        return [out.detach().clone()] + [p.grad.clone() for p in model.parameters()]

    calls = []
    monkeypatch.setattr(conv_module._TapConv, "apply", _counting(conv_module._TapConv.apply, calls))
    fast = step()
    # The matmul forward: the residual block's two 512-channel convs at 2x2; the matmul weight
    # gradient: those and the 256 -> 512 conv at 4x4.
    assert sorted(calls) == [(False, False, True), (True, True, True), (True, True, True)]
    monkeypatch.setattr(conv_module, "uses_tap_conv", lambda *shape: False)
    monkeypatch.setattr(conv_module, "uses_tap_gradient", lambda *shape: False)
    plain = step()
    assert len(calls) == 3
    for have, want in zip(fast, plain, strict=True):
        torch.testing.assert_close(have, want, rtol=1e-10, atol=1e-12)


def _counting(apply, calls: list):
    def counted(*args):
        calls.append(args[-3:])  # (taps_forward, taps_input, taps_grad)
        return apply(*args)

    return counted


@pytest.mark.slow
@pytest.mark.parametrize("bf16", [False, True])
def test_torch_compile_traces_the_matmuls(bf16: bool) -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(Conv3x3(512, 512), torch.nn.ReLU(), Conv3x3(512, 512))
    x = torch.randn(4, 512, 2, 2, requires_grad=True)
    params = [x, *model.parameters()]

    def grads(step) -> tuple:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            assert model[0].tap_paths(x) == (True, True, True)
            out = step(x)
        return torch.autograd.grad(out.float().square().sum(), params)

    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        assert torch._dynamo.explain(model)(x).graph_break_count == 0
    want, got = grads(model), grads(torch.compile(model))
    tolerance = 2e-2 if bf16 else 1e-4  # compiled bf16 steps may round elsewhere
    for have, expected in zip(got, want, strict=True):
        assert have.dtype == torch.float32
        torch.testing.assert_close(have, expected, rtol=tolerance, atol=tolerance)


@pytest.mark.parametrize(("c_in", "c_out", "side"), [(128, 256, 4), (512, 1024, 2)])
def test_the_training_layout_channels_last_fp32(c_in: int, c_out: int, side: int) -> None:
    torch.manual_seed(0)
    conv = Conv3x3(c_in, c_out).to(memory_format=torch.channels_last)
    x = torch.randn(8, c_in, side, side).contiguous(memory_format=torch.channels_last)
    x.requires_grad_(c_in == 512)  # the input gradient too where the forward is the matmuls
    out = conv(x)
    assert type(out.grad_fn).__name__ == "_TapConvBackward"
    assert out.is_contiguous(memory_format=torch.channels_last)
    grad_out = torch.randn_like(out)
    params = [conv.weight] + ([x] if x.requires_grad else [])
    got = torch.autograd.grad(out, params, grad_out)
    x64 = x.detach().double().requires_grad_(x.requires_grad)
    w64 = conv.weight.detach().double().requires_grad_()
    reference = F.conv2d(x64, w64, None, 1, 1)
    want = torch.autograd.grad(
        reference, [w64] + ([x64] if x.requires_grad else []), grad_out.double()
    )
    torch.testing.assert_close(out.double(), reference, rtol=1e-4, atol=1e-4)
    for have, expected in zip(got, want, strict=True):
        assert have.dtype == torch.float32
        assert have.is_contiguous(memory_format=torch.channels_last)
        torch.testing.assert_close(have.double(), expected, rtol=1e-4, atol=1e-3)


def test_double_backward_is_refused_clearly() -> None:
    conv = Conv3x3(128, 128)
    out = conv(torch.randn(2, 128, 2, 2, requires_grad=True))
    (grad_w,) = torch.autograd.grad(out.square().sum(), [conv.weight], create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable"):
        grad_w.sum().backward()


@pytest.mark.parametrize(("c_in", "c_out", "side"), [(768, 768, 2), (512, 1024, 4)])
def test_bf16_autocast_is_as_close_to_the_exact_result_as_onednn(
    c_in: int, c_out: int, side: int
) -> None:
    # The training path on bf16 machines: fp32 weights and input under bf16 autocast. Against
    # the float64 result, the matmuls' error is within a quarter more than oneDNN's own bf16
    # convolution's (products rounded to bf16 once each, summed in fp32); gradients reach the
    # fp32 weights and input in fp32.
    torch.manual_seed(0)
    cl = torch.channels_last
    conv = Conv3x3(c_in, c_out).to(memory_format=cl)
    x = torch.randn(16, c_in, side, side).contiguous(memory_format=cl).requires_grad_()
    grad_out = torch.randn(16, c_out, side, side)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        taps = conv.tap_paths(x)
        assert taps[2] and taps[0] is taps[1] is (side == 2)  # 512 -> 1024 at 4x4: weights only
        out = conv(x)
        plain = F.conv2d(x, conv.weight, None, 1, 1)
    assert type(out.grad_fn).__name__ == "_TapConvBackward"
    assert out.dtype == torch.bfloat16 and out.is_contiguous(memory_format=cl)
    got = torch.autograd.grad(out, [x, conv.weight], grad_out)
    onednn = torch.autograd.grad(plain, [x, conv.weight], grad_out)
    x64 = x.detach().double().requires_grad_()
    w64 = conv.weight.detach().double().requires_grad_()
    exact = F.conv2d(x64, w64, None, 1, 1)
    want = torch.autograd.grad(exact, [x64, w64], grad_out.double())
    for have, theirs, truth in zip([out, *got], [plain, *onednn], [exact, *want], strict=True):
        assert have.dtype == theirs.dtype
        error = (have.double() - truth).norm() / truth.norm()
        bound = (theirs.double() - truth).norm() / truth.norm()
        assert 0 < error < 1.25 * bound, (error, bound)
