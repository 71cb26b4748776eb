"""Weight initialisation schemes of the paper (section 4) plus Kaiming's, for any model."""

from __future__ import annotations

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
