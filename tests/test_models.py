"""Tests of the model registry, the paper's CNN family and weight initialisation."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tinycnn.errors import ConfigError
from tinycnn.models import (
    ModelInfo,
    PaperCNN,
    create_model,
    format_models,
    init_weights,
    list_models,
    register_model,
    registry,
    scale_classifier,
)

MODEL_NAMES = [info.name for info in list_models()]
BATCH = 2
PAPER8_PARAMS = 3_343_720
# A tiny paper-family network for the option tests: 16x16 input, two pools -> 4x4.
SMALL = {"conv_channels": [4, 8], "pool_after": [0, 1], "fc_widths": [16], "input_size": 16}


def _images(size: int = 56, batch: int = BATCH, seed: int = 0) -> torch.Tensor:
    """(batch, 3, size, size) float32 standard normal images, the same for a given seed."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, size, size, generator=generator)


def _layers(model: nn.Module, kind: type[nn.Module]) -> list[nn.Module]:
    return [module for module in model.modules() if isinstance(module, kind)]


def _forward_order(model: nn.Module, images: torch.Tensor) -> list[str]:
    """Type names of the leaf modules in the order the forward pass calls them."""
    order: list[str] = []
    leaves = [m for m in model.modules() if not list(m.children())]
    hooks = [
        m.register_forward_hook(lambda m, i, o: order.append(type(m).__name__)) for m in leaves
    ]
    try:
        with torch.no_grad():
            model(images)
    finally:
        for hook in hooks:
            hook.remove()
    return order


# --- every registered model -------------------------------------------------------------------


def test_registry_lists_the_paper_family() -> None:
    assert {"paper8", "cnn5", "shallow"} <= set(MODEL_NAMES)
    assert sorted(MODEL_NAMES) == MODEL_NAMES
    for info in list_models():
        assert isinstance(info, ModelInfo)
        # fastnet is built for whole 64x64 images; the others for the paper's 56x56 crops.
        expected = 64 if info.name == "fastnet" else 56
        assert info.description and info.default_input == expected and info.params > 0


@pytest.mark.parametrize("num_classes", [200, 10])
@pytest.mark.parametrize("name", MODEL_NAMES)
def test_output_shape(name: str, num_classes: int) -> None:
    model = create_model(name, num_classes=num_classes).eval()
    with torch.no_grad():
        logits = model(_images())
    assert logits.shape == (BATCH, num_classes)
    assert logits.dtype == torch.float32 and torch.isfinite(logits).all()


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_backward_gives_finite_grads(name: str) -> None:
    torch.manual_seed(0)
    model = create_model(name).train()
    loss = F.cross_entropy(model(_images()), torch.tensor([3, 199]))
    loss.backward()
    assert torch.isfinite(loss)
    for param_name, param in model.named_parameters():
        assert param.grad is not None, param_name
        assert torch.isfinite(param.grad).all(), param_name


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_eval_is_deterministic_and_channels_last_agrees(name: str) -> None:
    model = create_model(name).eval()
    images = _images()
    with torch.no_grad():
        first, second = model(images), model(images)
        model = model.to(memory_format=torch.channels_last)
        last = model(images.contiguous(memory_format=torch.channels_last))
    assert torch.equal(first, second)
    torch.testing.assert_close(last, first, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_bf16_autocast_forward(name: str) -> None:
    model = create_model(name).eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(_images(batch=1))
    assert logits.shape == (1, 200) and logits.dtype == torch.bfloat16
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_listed_params_match_the_built_model(name: str) -> None:
    (info,) = [info for info in list_models() if info.name == name]
    assert info.params == sum(p.numel() for p in create_model(name).parameters())


@pytest.mark.parametrize("options", [{}, {"num_classes": 10, "activation": "prelu"}])
@pytest.mark.parametrize("name", MODEL_NAMES)
def test_stamped_options_rebuild_the_model(name: str, options: dict[str, Any]) -> None:
    model = create_model(name, **options)
    assert model.tinycnn_name == name
    stamped = json.loads(json.dumps(model.tinycnn_options))  # a checkpoint's round trip
    assert stamped == model.tinycnn_options and stamped["num_classes"] == options.get(
        "num_classes", 200
    )
    rebuilt = create_model(model.tinycnn_name, **stamped)
    shapes = {key: value.shape for key, value in model.state_dict().items()}
    assert {key: value.shape for key, value in rebuilt.state_dict().items()} == shapes
    assert rebuilt.tinycnn_options == stamped


# --- paper8: the paper's final model ------------------------------------------------------------


@pytest.fixture(scope="module")
def paper8() -> PaperCNN:
    return create_model("paper8").eval()


def test_paper8_parameter_count(paper8: PaperCNN) -> None:
    assert sum(p.numel() for p in paper8.parameters()) == PAPER8_PARAMS
    (info,) = [info for info in list_models() if info.name == "paper8"]
    assert info.params == PAPER8_PARAMS


def test_paper8_layer_order(paper8: PaperCNN) -> None:
    conv_relu = ["Conv3x3", "ReLU"]  # nn.Conv2d(c_in, c_out, 3, padding=1): models/conv.py
    fc_relu_drop = ["Linear", "ReLU", "Dropout"]
    expected = (
        conv_relu * 2 + ["MaxPool2d"] + conv_relu * 2 + ["MaxPool2d"] + conv_relu + ["MaxPool2d"]
    )
    expected += ["Flatten", *fc_relu_drop, *fc_relu_drop, "Linear"]
    assert _forward_order(paper8, _images(batch=1)) == expected


def test_paper8_pools_halve_to_7x7_and_feed_6272_inputs(paper8: PaperCNN) -> None:
    pools = _layers(paper8, nn.MaxPool2d)
    assert [(pool.kernel_size, pool.stride) for pool in pools] == [(2, 2)] * 3
    convs = _layers(paper8, nn.Conv2d)
    assert all(
        c.kernel_size == (3, 3) and c.stride == (1, 1) and c.padding == (1, 1) for c in convs
    )
    assert [c.out_channels for c in convs] == [128] * 5
    linears = _layers(paper8, nn.Linear)
    assert [(fc.in_features, fc.out_features) for fc in linears] == [
        (6272, 400),
        (400, 400),
        (400, 200),
    ]
    with torch.no_grad():
        images = _images(batch=1)
        assert paper8.forward_features(images).shape == (1, 128, 7, 7)
        codes = paper8.forward_head(paper8.forward_features(images), pre_logits=True)
    assert codes.shape == (1, 400) == (1, paper8.num_features)
    assert [d.p for d in _layers(paper8, nn.Dropout)] == [0.5, 0.5]


def test_paper8_input_size_64_widens_the_first_fc() -> None:
    model = create_model("paper8", input_size=64).eval()
    assert _layers(model, nn.Linear)[0].in_features == 128 * 8 * 8
    with torch.no_grad():
        assert model(_images(size=64, batch=1)).shape == (1, 200)


def test_wrong_image_size_is_a_clear_error(paper8: PaperCNN) -> None:
    with pytest.raises(ConfigError, match=r"image size \(64, 64\) does not match input_size 56"):
        paper8(_images(size=64, batch=1))


# --- options --------------------------------------------------------------------------------------


def test_prelu_learns_a_slope_per_channel() -> None:
    model = create_model("paper8", activation="prelu", **SMALL)
    assert not _layers(model, nn.ReLU)
    assert [p.weight.numel() for p in _layers(model, nn.PReLU)] == [4, 8, 16]
    assert model(_images(size=16)).shape == (BATCH, 200)


def test_batch_norm_adds_bn_before_each_activation() -> None:
    model = create_model("paper8", batch_norm=True, **SMALL).train()
    assert [bn.num_features for bn in _layers(model, nn.BatchNorm2d)] == [4, 8]
    assert [bn.num_features for bn in _layers(model, nn.BatchNorm1d)] == [16]
    order = _forward_order(model, _images(size=16))
    assert order[:4] == ["Conv3x3", "BatchNorm2d", "ReLU", "MaxPool2d"]
    assert order[-5:] == ["Linear", "BatchNorm1d", "ReLU", "Dropout", "Linear"]
    # BN's shift replaces the biases of the layers it follows; the output layer keeps its own.
    assert all(layer.bias is None for layer in _layers(model, nn.Conv2d))
    assert [fc.bias is None for fc in _layers(model, nn.Linear)] == [True, False]


@pytest.mark.parametrize(
    "options", [{"batch_norm": True}, {"activation": "prelu"}, {"batch_norm": True, "dropout": 0}]
)
def test_variants_train_under_bf16_autocast_and_channels_last(options: dict[str, Any]) -> None:
    model = create_model("paper8", **SMALL, **options).train()
    model = model.to(memory_format=torch.channels_last)
    images = _images(size=16).contiguous(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = F.cross_entropy(model(images), torch.tensor([0, 1]))
    loss.backward()
    assert torch.isfinite(loss)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.parametrize(
    ("options", "convs", "fcs"),
    [
        ({}, [4, 8], [(8 * 4 * 4, 16), (16, 200)]),
        ({"conv_channels": [6, 10]}, [6, 10], [(10 * 4 * 4, 16), (16, 200)]),
        ({"fc_widths": [32, 24, 12]}, [4, 8], [(128, 32), (32, 24), (24, 12), (12, 200)]),
        ({"fc_widths": []}, [4, 8], [(128, 200)]),
        ({"pool_after": [1]}, [4, 8], [(8 * 8 * 8, 16), (16, 200)]),
        ({"input_size": 32}, [4, 8], [(8 * 8 * 8, 16), (16, 200)]),
    ],
)
def test_options_shape_the_network(
    options: dict[str, Any], convs: list[int], fcs: list[tuple[int, int]]
) -> None:
    model = create_model("paper8", **{**SMALL, **options}).eval()
    assert [c.out_channels for c in _layers(model, nn.Conv2d)] == convs
    assert [(fc.in_features, fc.out_features) for fc in _layers(model, nn.Linear)] == fcs
    with torch.no_grad():
        assert model(_images(size=model.input_size)).shape == (BATCH, 200)


@pytest.mark.parametrize("p", [0.0, 0.3, 0.7])
def test_dropout_reaches_the_fc_layers_only(p: float) -> None:
    model = create_model("paper8", dropout=p, **{**SMALL, "fc_widths": [16, 16]})
    assert [d.p for d in _layers(model, nn.Dropout)] == [p, p]
    assert not any(isinstance(module, nn.Dropout) for module in model.features)


@pytest.mark.parametrize(
    ("name", "options", "message"),
    [
        ("nope", {}, r"unknown model 'nope'; known models: .*paper8"),
        ("paper8", {"dropuot": 0.5}, r"no option 'dropuot' \(did you mean 'dropout'\?\).*fc_w"),
        ("paper8", {"input_size": 4}, r"input_size 4 is too small: 3 max-pools"),
        ("paper8", {"input_size": 60}, r"input_size 60 must be divisible by 8"),
        ("paper8", {"input_size": 0}, r"input_size 0 must be a positive integer"),
        ("paper8", {"dropout": -0.1}, r"dropout -0.1 must be a probability"),
        ("paper8", {"dropout": 1.0}, r"dropout 1.0 must be a probability"),
        ("paper8", {"activation": "tanh"}, r"activation 'tanh' is not one of relu, prelu"),
        ("paper8", {"conv_channels": []}, r"conv_channels \[\] must not be empty"),
        ("paper8", {"conv_channels": [128, 0]}, r"conv_channels \[128, 0\] .* not 0"),
        ("paper8", {"conv_channels": 128}, r"conv_channels 128 must be a list"),
        ("paper8", {"fc_widths": [400, -1]}, r"fc_widths \[400, -1\]"),
        ("paper8", {"pool_after": [1, 5]}, r"after conv layer 5, but conv_channels .* \(0..4\)"),
        (
            "paper8",  # pool_after keeps paper8's default [1, 3, 4], for 5 conv layers
            {"conv_channels": [32, 64]},
            r"pool_after \[1, 3, 4\] pools after conv layer 3, but conv_channels \[32, 64\] has "
            r"2 conv layers \(0..1\): pool_after counts positions in conv_channels, so a new "
            r"channel list needs its own pool_after, with indices 0..1$",
        ),
        ("paper8", {"pool_after": [1, "2"]}, r"pool_after index '2' is not a conv layer index"),
        ("paper8", {"pool_after": [1, 1]}, r"pool_after \[1, 1\] repeats an index"),
        ("paper8", {"batch_norm": "yes"}, r"batch_norm 'yes' must be true or false"),
        ("paper8", {"num_classes": 0}, r"num_classes 0 must be a positive integer"),
        ("paper8", {"conv_channels": {1, 2}}, r"options must be JSON values"),
    ],
)
def test_bad_options_raise_config_error(name: str, options: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        create_model(name, **options)


# --- the registry itself ------------------------------------------------------------------------


@pytest.fixture
def scratch_registry(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """An empty registry for this test only, so test models never leak into list_models()."""
    scratch: dict[str, Any] = {}
    monkeypatch.setattr(registry, "_REGISTRY", scratch)
    return scratch


def test_register_model_and_its_errors(scratch_registry: dict[str, Any]) -> None:
    @register_model("tiny", default_input=8, description="a linear probe")
    def tiny(num_classes: int = 200, *, width: int = 4, scale: float = 1.0) -> nn.Module:
        return nn.Sequential(
            nn.Flatten(), nn.Linear(3 * 8 * 8, width), nn.Linear(width, num_classes)
        )

    assert tiny(num_classes=5, width=2)[2].out_features == 5  # the decorator returns the factory
    assert list_models() == [ModelInfo("tiny", "a linear probe", 8, 192 * 4 + 4 + 4 * 200 + 200)]
    model = create_model("tiny", width=4, scale=(2, 3))
    assert model.tinycnn_options == {"num_classes": 200, "width": 4, "scale": [2, 3]}
    assert create_model("tiny").tinycnn_options == {"num_classes": 200, "width": 4, "scale": 1.0}
    with pytest.raises(ConfigError, match=r"no option 'layers'; its options: scale, width$"):
        create_model("tiny", width=4, layers=3)
    with pytest.raises(ConfigError, match=r"model name 'tiny' is already registered"):
        register_model("tiny")(tiny)
    with pytest.raises(ConfigError, match=r"factory 'no_classes' of model 'x' must accept"):

        @register_model("x")
        def no_classes(width: int = 3) -> nn.Module:
            return nn.Identity()

    with pytest.raises(ConfigError, match=r"option 'width' of model 'y' needs a default value"):

        @register_model("y")
        def no_default(num_classes: int = 200, *, width: int) -> nn.Module:
            return nn.Identity()


def test_factories_with_free_options_keep_them(scratch_registry: dict[str, Any]) -> None:
    @register_model("free")
    def free(num_classes: int = 200, **options: Any) -> nn.Module:
        return nn.Linear(4, num_classes)

    assert create_model("free", num_classes=3, depth=2).tinycnn_options == {
        "num_classes": 3,
        "depth": 2,
    }


def _assert_models_columns_line_up(capsys: pytest.CaptureFixture) -> list[str]:
    """Run ``tinycnn models``; each column starts where its header does on every line."""
    from tinycnn.cli import main

    assert main(["models"]) == 0
    header, *rows = capsys.readouterr().out.splitlines()
    for info, row in zip(list_models(), rows, strict=True):
        assert row.startswith(f"{info.name} ")
        assert row.index(f"{info.params:,}  ") + len(f"{info.params:,}") == header.index("  input")
        assert row.index(info.description) == header.index("description"), row
    return rows


def test_models_command_fits_every_name_and_count(capsys: pytest.CaptureFixture) -> None:
    rows = _assert_models_columns_line_up(capsys)  # preact_resnet18 overran a 10-wide column
    assert any(row.startswith("preact_resnet18 ") for row in rows)


def test_models_command_fits_a_long_name_and_a_huge_count(
    scratch_registry: dict[str, Any], capsys: pytest.CaptureFixture
) -> None:
    @register_model("a_very_long_model_name_indeed", description="huge")
    def huge(num_classes: int = 200) -> nn.Module:
        return nn.Linear(100_000, 20_000)  # 2,000,020,000 parameters, counted on the meta device

    @register_model("s", description="small")
    def small(num_classes: int = 200) -> nn.Module:
        return nn.Linear(2, num_classes)

    _assert_models_columns_line_up(capsys)


@pytest.mark.parametrize(
    ("models", "expected"),
    [
        (
            [ModelInfo("a", "one", 56, 1234)],
            ["name params  input  description", "a     1,234     56  one"],
        ),
        (
            [ModelInfo("a_long_name", "x", 64, 5), ModelInfo("b", "y z", 8, 2_000_020_000)],
            [
                "name               params  input  description",
                "a_long_name             5     64  x",
                "b           2,000,020,000      8  y z",
            ],
        ),
    ],
)
def test_format_models_lines_up_the_columns(models: list[ModelInfo], expected: list[str]) -> None:
    assert format_models(models).splitlines() == expected


# --- initialisation ------------------------------------------------------------------------------


@pytest.fixture
def cnn5_bn() -> nn.Module:
    """cnn5 with batch norm on; its first fc holds 1568*400 weights, enough for tight stats."""
    torch.manual_seed(0)
    model = create_model("cnn5", batch_norm=True, fc_widths=[400])
    for bn in _layers(model, nn.BatchNorm2d) + _layers(model, nn.BatchNorm1d):
        # Away from 1 and 0, so that a reset shows.
        nn.init.uniform_(bn.weight, 2.0, 3.0)
        nn.init.uniform_(bn.bias, 2.0, 3.0)
    return model


def _fans(layer: nn.Module) -> tuple[int, int]:
    """Fan in and fan out as the paper counts them: a conv's n_in = in_ch * k * k."""
    receptive = math.prod(layer.weight.shape[2:])
    return layer.weight.shape[1] * receptive, layer.weight.shape[0] * receptive


def _weighted(model: nn.Module) -> list[nn.Module]:
    return _layers(model, nn.Conv2d) + _layers(model, nn.Linear)


def _check_biases_and_bn(model: nn.Module) -> None:
    assert all(layer.bias is None or not layer.bias.any() for layer in _weighted(model))
    for bn in _layers(model, nn.BatchNorm2d) + _layers(model, nn.BatchNorm1d):
        assert (bn.weight == 1).all() and (bn.bias == 0).all()


def test_gaussian_init_has_std_0_01(cnn5_bn: nn.Module) -> None:
    assert init_weights(cnn5_bn, "gaussian") is cnn5_bn
    big = _layers(cnn5_bn, nn.Linear)[0].weight
    assert big.numel() == 1568 * 400
    assert abs(big.std().item() - 0.01) < 0.01 * 0.01 and abs(big.mean().item()) < 1e-4
    assert all(layer.weight.std().item() < 0.02 for layer in _weighted(cnn5_bn))
    _check_biases_and_bn(cnn5_bn)


def test_xavier_init_respects_the_normalised_bound(cnn5_bn: nn.Module) -> None:
    init_weights(cnn5_bn, "xavier")
    for layer in _weighted(cnn5_bn):
        fan_in, fan_out = _fans(layer)
        bound = math.sqrt(6 / (fan_in + fan_out))
        assert layer.weight.abs().max().item() <= bound
    big = _layers(cnn5_bn, nn.Linear)[0].weight
    bound = math.sqrt(6 / (1568 + 400))
    assert abs(big.std().item() - bound / math.sqrt(3)) < 0.01 * bound / math.sqrt(3)
    _check_biases_and_bn(cnn5_bn)


def test_caffe_xavier_init_is_uniform_in_sqrt_3_over_fan_in(cnn5_bn: nn.Module) -> None:
    # Caffe's XavierFiller with its default variance_norm (FAN_IN): U(-sqrt(3/n), sqrt(3/n)).
    init_weights(cnn5_bn, "caffe_xavier")
    first = _layers(cnn5_bn, nn.Conv2d)[0].weight  # 3 -> 32 channels, 3x3: fan_in 27
    assert first.abs().max().item() <= math.sqrt(3 / 27)
    assert first.abs().max().item() > 0.95 * math.sqrt(3 / 27)  # not Glorot's tighter bound
    big = _layers(cnn5_bn, nn.Linear)[0].weight  # fan_in 1568: std sqrt(1 / 1568)
    assert abs(big.std().item() - math.sqrt(1 / 1568)) < 0.01 * math.sqrt(1 / 1568)
    _check_biases_and_bn(cnn5_bn)


def test_kaiming_init_uses_fan_out_for_convs_and_fan_in_for_fcs(cnn5_bn: nn.Module) -> None:
    init_weights(cnn5_bn, "kaiming")
    conv = _layers(cnn5_bn, nn.Conv2d)[1].weight  # 32*32*9 weights
    assert abs(conv.std().item() - math.sqrt(2 / (32 * 9))) < 0.05 * math.sqrt(2 / (32 * 9))
    big = _layers(cnn5_bn, nn.Linear)[0].weight
    assert abs(big.std().item() - math.sqrt(2 / 1568)) < 0.01 * math.sqrt(2 / 1568)
    _check_biases_and_bn(cnn5_bn)


def test_unknown_init_scheme_is_an_error(cnn5_bn: nn.Module) -> None:
    with pytest.raises(ConfigError, match=r"init scheme 'he' is not one of gaussian, xavier"):
        init_weights(cnn5_bn, "he")


# --- the ResNets -------------------------------------------------------------------------------


def test_resnet18_matches_the_cifar_resnet18_counts() -> None:
    # The well-known CIFAR-style ResNet-18 (3x3 stem, no max-pool) has 11,173,962 parameters
    # with 10 classes; its 512 -> C classifier then adds 513 per extra class.
    from tinycnn.compute import training_flops_per_image

    model = create_model("resnet18")
    assert sum(p.numel() for p in model.parameters()) == 11_173_962 + 513 * 190
    # ../shared/MEASUREMENTS.md: 3.33 GFLOP per training image at 32x32 (forward 1.11).
    assert training_flops_per_image(model, 32) == pytest.approx(3.33e9, rel=2e-3)


def test_resnet_blocks_start_as_the_identity_and_preact_normalises_first() -> None:
    from tinycnn.models.resnet import BasicBlock, PreActBlock

    plain = create_model("resnet18")
    blocks = [m for m in plain.modules() if isinstance(m, BasicBlock)]
    assert len(blocks) == 8 and all((b.bn2.weight == 0).all() for b in blocks)
    preact = create_model("preact_resnet18")
    first = next(m for m in preact.modules() if isinstance(m, PreActBlock))
    assert isinstance(first.bn1, nn.BatchNorm2d) and not isinstance(preact.stem[-1], nn.ReLU)
    with pytest.raises(ConfigError, match="activation 'gelu'"):
        create_model("resnet18", activation="gelu")


# --- fastnet -----------------------------------------------------------------------------------


def _fastnet_macs(side: int, classes: int = 200) -> tuple[int, int]:
    """(forward multiply-adds, of which the stem's) of fastnet at its defaults, by hand."""
    s = side // 2  # the stride-2 stem
    stem = 3 * 9 * 64 * s * s
    convs = 64 * 9 * 128 * s * s  # stage 1 at s, then pooled
    convs += 2 * 128 * 9 * 128 * (s // 2) ** 2  # its residual block
    convs += 128 * 9 * 256 * (s // 2) ** 2  # stage 2
    convs += 256 * 9 * 512 * (s // 4) ** 2  # stage 3
    convs += 2 * 512 * 9 * 512 * (s // 8) ** 2  # its residual block
    return stem + convs + 1024 * classes, stem


@pytest.mark.parametrize("side", [64, 32])
def test_fastnet_counts_by_hand(side: int) -> None:
    from tinycnn.compute import training_flops_per_image

    model = create_model("fastnet")
    # Weights (3x3 convs without bias) + batch norms (2 per channel) + fc with bias.
    convs = 3 * 64 + 64 * 128 + 2 * 128 * 128 + 128 * 256 + 256 * 512 + 2 * 512 * 512
    norms = 2 * (64 + 128 + 2 * 128 + 256 + 512 + 2 * 512)
    assert sum(p.numel() for p in model.parameters()) == 9 * convs + norms + 1024 * 200 + 200
    macs, stem = _fastnet_macs(side)
    # Training: forward, then input and weight gradients (twice the forward), less the stem's
    # input gradient: the image needs none. A multiply-add is 2 FLOPs.
    assert training_flops_per_image(model, side) == 2 * (3 * macs - stem)
    assert training_flops_per_image(model, 64) == pytest.approx(2.27e9, rel=2e-3)


def test_fastnet_layout() -> None:
    from tinycnn.models.fast import Residual

    model = create_model("fastnet", width=16, residual=[2])
    blocks = [m for m in model.modules() if isinstance(m, Residual)]
    assert len(blocks) == 1 and blocks[0].body[0][0].in_channels == 64  # after stage 2: 4 x 16
    assert (blocks[0].body[1][1].weight == 0).all()  # the block starts as the identity
    x = _images(40)
    with torch.no_grad():
        assert blocks[0](torch.ones(1, 64, 5, 5)).eq(1).all()
        out = model.eval()(x)
    assert out.shape == (BATCH, 200)
    # Max- and average-pooled features side by side, then the scaled classifier.
    assert model.classifier.in_features == 2 * 128
    with pytest.raises(ConfigError, match="too small for fastnet"):
        model(_images(12))
    for options, message in [
        ({"width": 0}, "width 0"),
        ({"residual": [4]}, "residual \\[4\\]"),
        ({"head_scale": 0.0}, "head_scale 0.0"),
    ]:
        with pytest.raises(ConfigError, match=message):
            create_model("fastnet", **options)


def _paper8_built(scale: float) -> nn.Module:
    from tinycnn.config import load_config
    from tinycnn.run_plan import build_model

    cfg = load_config(None, [f"model.classifier_init_scale={scale}", "train.seed=3"])
    return build_model(cfg, num_classes=200, input_size=56)


@pytest.mark.parametrize("scale", [0.01, 0.0])
def test_classifier_init_scale_shrinks_the_output_layer_alone(scale: float) -> None:
    plain, scaled = _paper8_built(1.0), _paper8_built(scale)
    plain_state, scaled_state = plain.state_dict(), scaled.state_dict()
    for name, value in plain_state.items():
        if name.startswith("classifier."):
            continue
        assert torch.equal(scaled_state[name], value), name  # the same draw, untouched
    weight = scaled.classifier.weight
    assert torch.allclose(weight, scale * plain.classifier.weight, rtol=0, atol=1e-12)
    # Glorot's bound for 400 -> 200, times the scale
    assert weight.abs().max().item() <= scale * math.sqrt(6 / (400 + 200)) + 1e-12
    assert not scaled.classifier.bias.any()
    if scale:
        assert weight.abs().max().item() > 0.9 * scale * math.sqrt(6 / 600)


def test_a_zero_output_layer_starts_at_ln_c_and_the_layers_below_learn_from_step_two() -> None:
    # Chain rule: d loss / d hidden = W_out^T (softmax - onehot) = 0 while W_out = 0, so only the
    # output layer gets a gradient at first; once it has moved, the layers below get theirs.
    model = _paper8_built(0.0).eval()  # no dropout: the same network both times
    images, labels = _images(), torch.arange(BATCH) % 200
    loss = F.cross_entropy(model(images), labels)
    assert loss.item() == pytest.approx(math.log(200), rel=1e-6)
    loss.backward()
    hidden = [p for n, p in model.named_parameters() if not n.startswith("classifier.")]
    assert all(not p.grad.any() for p in hidden)
    assert model.classifier.weight.grad.abs().sum() > 0
    with torch.no_grad():
        for p in model.parameters():
            p -= 0.1 * p.grad
    model.zero_grad()
    F.cross_entropy(model(images), labels).backward()
    assert all(p.grad.abs().sum() > 0 for p in hidden if p.ndim > 1)


def test_scale_classifier_finds_the_last_linear_layer_without_a_classifier_name() -> None:
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    first = model[0].weight.detach().clone()
    last = model[2].weight.detach().clone()
    assert scale_classifier(model, 0.5) is model
    assert torch.equal(model[0].weight, first)
    assert torch.allclose(model[2].weight, 0.5 * last)
    assert not model[2].bias.any()
    with pytest.raises(ConfigError, match="no Linear output layer"):
        scale_classifier(nn.Sequential(nn.Conv2d(3, 3, 1)), 0.5)
