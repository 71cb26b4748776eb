"""Weight initialisation schemes of the paper (section 4) plus Kaiming's, for any model."""

from __future__ import annotations

import torch
from torch import nn

from tinycnn.errors import ConfigError

SCHEMES = ("gaussian", "xavier", "caffe_xavier", "kaiming")
GAUSSIAN_STD = 0.01  # the paper's N(0, 0.01): fine for the small models, fails for paper8


def _init_weight(module: nn.Conv2d | nn.Linear, scheme: str) -> None:
    if scheme == "gaussian":
        nn.init.normal_(module.weight, mean=0.0, std=GAUSSIAN_STD)
    elif scheme == "xavier":
        # Glorot's normalised init, U[-a, a] with a = sqrt(6 / (n_in + n_out)); for a conv
        # n_in = in_ch*k*k and n_out = out_ch*k*k, as the paper (and Caffe) count them.
        nn.init.xavier_uniform_(module.weight)
    elif scheme == "caffe_xavier":
        # Caffe's "xavier" filler as the paper's runs used it (its default variance_norm
        # FAN_IN): U[-a, a] with a = sqrt(3 / n_in), n_in = in_ch*k*k. Variance 1/n_in, which is
        # larger than Glorot's 2/(n_in + n_out) wherever n_out > n_in (the 3 -> 128 first conv).
        fan_in = module.weight[0].numel()
        bound = (3.0 / fan_in) ** 0.5
        nn.init.uniform_(module.weight, -bound, bound)
    else:
        # fan_out for convs keeps the backward signal's variance, as torchvision's ResNets do.
        mode = "fan_out" if isinstance(module, nn.Conv2d) else "fan_in"
        nn.init.kaiming_normal_(module.weight, mode=mode, nonlinearity="relu")
    if module.bias is not None:
        nn.init.zeros_(module.bias)


def init_weights(model: nn.Module, scheme: str) -> nn.Module:
    """Re-initialise every conv and linear layer of ``model`` in place; returns ``model``.

    Biases become 0 and batch norm layers the identity (weight 1, bias 0); PReLU slopes and
    other layers keep their values. Draws from torch's global generator: seed it to repeat.

    Args:
        model: any module; its parameters stay on their device and dtype.
        scheme: "gaussian" (N(0, 0.01^2)), "xavier" (Glorot's normalised uniform),
            "caffe_xavier" (Caffe's filler: uniform, +-sqrt(3 / fan_in)) or "kaiming" (normal).
    """
    if scheme not in SCHEMES:
        raise ConfigError(f"init scheme {scheme!r} is not one of {', '.join(SCHEMES)}")
    for module in model.modules():
        if isinstance(module, nn.Conv2d | nn.Linear):
            _init_weight(module, scheme)
        elif isinstance(module, nn.modules.batchnorm._BatchNorm) and module.affine:
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
    return model


def output_layer(model: nn.Module) -> nn.Linear:
    """The layer that produces the logits: ``model.classifier`` where the model names one (every
    registered family does), else its last Linear layer."""
    layer = getattr(model, "classifier", None)
    if isinstance(layer, nn.Linear):
        return layer
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ConfigError(f"{type(model).__name__} has no Linear output layer to scale")
    return linears[-1]


@torch.no_grad()
def scale_classifier(model: nn.Module, scale: float) -> nn.Module:
    """Multiply the output layer's weights by ``scale`` (0: zeros) and zero its bias; returns
    ``model``.

    Why: the initial logits' spread sets the first loss. Under the paper's Xavier init on the
    0-255 scale the logits start with std ~7 (loss ~19 against ln 200 = 5.3) and the first steps
    cancel the signal of every layer to shrink them (results/paper8-diagnosis.md); a small output
    layer starts at ln C with the signal intact. A zero output layer still learns: its gradient
    is the hidden codes times (softmax - onehot), and the layers below get theirs from step 2 on.
    """
    layer = output_layer(model)
    layer.weight.mul_(scale)
    if layer.bias is not None:
        layer.bias.zero_()
    return model
