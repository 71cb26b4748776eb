"""Conv3x3: the weight gradient as nine matmuls equals the convolution's, taken where meant."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import tinycnn.models.conv as conv_module
from tinycnn.models import create_model
from tinycnn.models.conv import Conv3x3, tap_weight_gradient, uses_tap_gradient


def test_the_weight_gradient_of_one_output_pixel_by_hand() -> None:
    # One 2x2 image, gradient 1 at output (0, 0) only: that output saw the input through taps
    # (dy, dx) in {0, 1}^2 (the others fell on padding): grad_w[1 + dy, 1 + dx] = x[dy, dx].
    x = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])
    grad_out = torch.tensor([[[[1.0, 0.0], [0.0, 0.0]]]])
    expected = torch.tensor([[0.0, 0.0, 0.0], [0.0, 1.0, 2.0], [0.0, 3.0, 4.0]])
    assert torch.equal(tap_weight_gradient(x, grad_out)[0, 0], expected)


@pytest.mark.parametrize(
    ("c_in", "c_out", "height", "width", "bias"),
    [(3, 4, 2, 2, False), (5, 6, 1, 1, True), (4, 3, 2, 3, True), (2, 5, 5, 4, False)],
)
def test_gradients_equal_the_plain_convolutions(
    c_in: int, c_out: int, height: int, width: int, bias: bool, monkeypatch
) -> None:
    monkeypatch.setattr(conv_module, "uses_tap_gradient", lambda *shape: True)
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
    assert torch.equal(out, reference)
    for name, have, expected in zip(["input", "weight", "bias"], got, want, strict=False):
        torch.testing.assert_close(have, expected, rtol=0, atol=1e-12, msg=name)


@pytest.mark.parametrize(
    ("c_in", "c_out", "height", "width", "taps"),
    [
        (512, 512, 2, 2, True),  # fastnet's last stage at 32x32 input
        (128, 128, 4, 4, True),
        (64, 64, 4, 4, False),  # few channels: oneDNN's kernel is faster
        (128, 128, 5, 4, False),  # 20 positions with < 256 channels
        (256, 512, 8, 8, True),
        (256, 512, 8, 9, False),  # 72 positions
        (128, 256, 8, 8, False),
    ],
)
def test_which_shapes_take_the_matmuls(
    c_in: int, c_out: int, height: int, width: int, taps: bool
) -> None:
    assert uses_tap_gradient(c_in, c_out, height, width) is taps


def test_only_cpu_fp32_training_with_gradients_takes_the_matmuls() -> None:
    conv = Conv3x3(128, 128)
    x = torch.randn(2, 128, 2, 2)
    assert type(conv(x).grad_fn).__name__ == "_TapConvBackward"
    with torch.no_grad():
        assert conv(x).grad_fn is None
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert type(conv(x).grad_fn).__name__ != "_TapConvBackward"
    assert type(Conv3x3(128, 128, stride=2)(x).grad_fn).__name__ != "_TapConvBackward"
    conv.eval()  # evaluation and export trace the plain convolution
    assert type(conv(x).grad_fn).__name__ != "_TapConvBackward"
    assert list(conv.state_dict()) == list(torch.nn.Conv2d(128, 128, 3, bias=False).state_dict())


def test_a_fastnet_step_has_the_plain_convolutions_gradients(monkeypatch) -> None:
    torch.manual_seed(0)
    model = create_model("fastnet", num_classes=10, width=16).double()  # 128 channels at 2x2
    x = torch.randn(4, 3, 32, 32, dtype=torch.float64)
    labels = torch.tensor([0, 3, 5, 9])

    def gradients() -> list[torch.Tensor]:
        model.zero_grad()
        F.cross_entropy(model(x), labels).backward()
        return [p.grad.clone() for p in model.parameters()]

    taps = []
    monkeypatch.setattr(conv_module._TapConv, "apply", _counting(conv_module._TapConv.apply, taps))
    fast = gradients()
    assert len(taps) == 2  # the residual block's two 128-channel convs at 2x2
    monkeypatch.setattr(conv_module, "uses_tap_gradient", lambda *shape: False)
    plain = gradients()
    assert len(taps) == 2
    for have, want in zip(fast, plain, strict=True):
        torch.testing.assert_close(have, want, rtol=1e-10, atol=1e-12)


def _counting(apply, calls: list):
    def counted(*args):
        calls.append(args[0].shape)
        return apply(*args)

    return counted


def test_torch_compile_traces_the_matmul_gradient() -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(Conv3x3(128, 128), torch.nn.ReLU(), Conv3x3(128, 128))
    x = torch.randn(4, 128, 2, 2)
    assert torch._dynamo.explain(model)(x).graph_break_count == 0
    want = torch.autograd.grad(model(x).square().sum(), list(model.parameters()))
    got = torch.autograd.grad(torch.compile(model)(x).square().sum(), list(model.parameters()))
    for have, expected in zip(got, want, strict=True):
        torch.testing.assert_close(have, expected, rtol=1e-4, atol=1e-4)


def test_the_training_layout_channels_last_fp32_and_an_input_without_gradient() -> None:
    torch.manual_seed(0)
    conv = Conv3x3(128, 256).to(memory_format=torch.channels_last)
    x = torch.randn(8, 128, 4, 4).contiguous(memory_format=torch.channels_last)
    out = conv(x)  # x needs no gradient: only the weight's is computed
    assert type(out.grad_fn).__name__ == "_TapConvBackward"
    grad_out = torch.randn_like(out)
    (got,) = torch.autograd.grad(out, [conv.weight], grad_out)
    (want,) = torch.autograd.grad(F.conv2d(x.double(), conv.weight.double(), None, 1, 1),
                                  [conv.weight], grad_out.double())  # fmt: skip
    assert got.dtype == torch.float32
    assert got.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-3)


def test_double_backward_is_refused_clearly() -> None:
    conv = Conv3x3(128, 128)
    out = conv(torch.randn(2, 128, 2, 2, requires_grad=True))
    (grad_w,) = torch.autograd.grad(out.square().sum(), [conv.weight], create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable"):
        grad_w.sum().backward()
