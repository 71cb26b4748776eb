"""The training crop fitted to the cache's image side and the model (issue 27 item 20)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tinycnn.config import load_config
from tinycnn.crops import fit_crop
from tinycnn.data.augment import AugmentConfig
from tinycnn.data.prepare import prepare
from tinycnn.data.synthetic import make_synthetic
from tinycnn.errors import ConfigError
from tinycnn.training import train

CNN5 = ["model.name=cnn5"]  # 3 max-pools and an fc layer: sides divisible by 8 only


@pytest.mark.parametrize(
    ("settings", "side", "expected"),
    [
        (CNN5, 64, 56),  # the paper's 56x56 crops of 64x64 images
        (CNN5, 32, 24),  # 7/8 of 32 = 28, which cnn5 does not take: the next lower side
        (CNN5, 48, 40),  # 42 -> 40
        (["model.name=paper8"], 32, 24),
        (["model.name=resnet18"], 32, 28),  # global pooling: any side
        (["model.name=paper8", "model.input_size=32"], 32, 32),  # fixed by the config
        ([*CNN5, "augment.crop=56"], 64, 56),  # set and fitting: kept
        ([*CNN5, "augment.crop=0"], 32, 0),  # the whole image: kept
        ([*CNN5, "augment.crop=32", "augment.pad=4"], 32, 32),  # padding shifts the crop
        ([*CNN5, "augment.pad=4"], 32, 24),  # unset: 7/8 of the image, padding or not
    ],
)
def test_the_crop_is_fitted_to_the_images_and_the_model(
    settings: list[str], side: int, expected: int
) -> None:
    assert fit_crop(load_config(None, settings), side, 10).augment.crop == expected


@pytest.mark.parametrize(
    ("crop", "why"),
    [
        (56, "a crop is at most the image side, 32 (augment.pad only shifts it)"),
        (28, "model 'cnn5' does not take 28x28 inputs: input_size 28 must be divisible by 8"),
    ],
)
def test_a_set_crop_that_does_not_fit_is_one_error_naming_the_key(crop: int, why: str) -> None:
    cfg = load_config(None, [*CNN5, f"augment.crop={crop}"])
    with pytest.raises(ConfigError) as caught:
        fit_crop(cfg, 32, 10)
    text = str(caught.value)
    assert text.startswith(f"augment.crop = {crop} does not fit this cache's 32x32 images: ")
    assert why in text
    assert "Crops that fit the images and the model: 8, 16, 24, 32. Set one (e.g. --set " in text
    assert "augment.crop=24), or remove augment.crop from the config" in text


def test_a_crop_larger_than_the_image_is_refused_even_within_the_padding() -> None:
    # Training could crop 40 of a 32 + 2 * 4 padded image, but evaluation's centre crop comes
    # from the unpadded image: such a run trained an epoch, then died unsaved.
    cfg = load_config(None, [*CNN5, "augment.crop=40", "augment.pad=4"])
    with pytest.raises(ConfigError, match=r"^augment.crop = 40 does not fit .* at most the image"):
        fit_crop(cfg, 32, 10)


def test_a_model_error_that_is_not_about_the_size_stays_the_models() -> None:
    cfg = load_config(None, [*CNN5, "model.dropout=2.0", "augment.crop=56"])
    with pytest.raises(ConfigError, match="dropout") as caught:
        fit_crop(cfg, 32, 10)
    assert "augment.crop" not in str(caught.value)


def test_an_unset_crop_follows_the_images_without_a_model() -> None:
    assert AugmentConfig().output_size(64, 64) == (56, 56)
    assert AugmentConfig().output_size(32, 32) == (28, 28)


@pytest.fixture(scope="module")
def cache32(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("c32")
    counts = {"classes": 3, "train_per_class": 8, "val_per_class": 2, "test_count": 2}
    data = make_synthetic(root, image_size=32, **counts)
    return prepare(data, root / "cache", size=32, progress=False).path


SMALL = [
    "model.conv_channels=[8, 8, 8]",
    "model.fc_widths=[16]",
    "train.batch_size=8",
    "train.epochs=1",
    "train.threads=1",
]
QUICK = Path(__file__).resolve().parents[1] / "configs" / "quick.toml"


def test_the_quick_preset_trains_on_a_32_pixel_cache(cache32: Path, tmp_path: Path) -> None:
    cfg = load_config(QUICK, [f"data.cache={json.dumps(str(cache32))}", *SMALL])
    result = train(cfg, tmp_path / "run", progress=False)
    assert result.metrics[-1]["input_size"] == 24
    assert "\ncrop = 24\n" in (tmp_path / "run" / "config.toml").read_text()
    resumed = train(None, tmp_path / "run", resume=True, progress=False)  # reads the number back
    assert resumed.iteration == result.iteration


def test_a_crop_too_big_for_the_cache_stops_before_the_run_folder(
    cache32: Path, tmp_path: Path
) -> None:
    settings = [f"data.cache={json.dumps(str(cache32))}", *SMALL, "augment.crop=56"]
    with pytest.raises(ConfigError, match=r"^augment.crop = 56 does not fit"):
        train(load_config(QUICK, settings), tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


def test_a_crop_that_is_not_a_whole_number_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"augment\.crop = '56': expected int, got str"):
        load_config(None, ['augment.crop="56"'])


def test_a_model_of_32_pixel_images_predicts_exports_and_refuses_at_its_side(
    cache32: Path, tmp_path: Path
) -> None:
    # Image files are read at the side the model was trained on (its crop of 24 takes 75% of a
    # 32-pixel image, as in training, not 37% of one squashed to 64); the export takes that side;
    # images of another side are refused, naming both.
    import numpy as np
    import torch
    from PIL import Image

    from tinycnn.data.cache import load_cache
    from tinycnn.export import export_model
    from tinycnn.inference import load_model
    from tinycnn.prediction import predict_files
    from tinycnn.runtime import make_runtime

    cfg = load_config(QUICK, [f"data.cache={json.dumps(str(cache32))}", *SMALL])
    train(cfg, tmp_path / "run", progress=False)
    checkpoint = tmp_path / "run" / "checkpoints" / "last.pt"
    fp32 = make_runtime(precision="fp32", channels_last=False, threads=1)
    loaded = load_model(checkpoint, fp32)
    assert loaded.image_size == 32
    images = np.array(load_cache(cache32).split("val").images[:2])
    for i, image in enumerate(images):  # lossless files of the cache's own pixels
        Image.fromarray(image).save(tmp_path / f"val_{i}.png")
    report = predict_files(loaded, [tmp_path / "val_0.png", tmp_path / "val_1.png"], top=3)
    expected = loaded.probabilities(torch.from_numpy(images))
    for row, probs in zip(report.rows, expected, strict=True):
        values, indices = probs.topk(3)
        assert [t["wnid"] for t in row["top"]] == [loaded.classes[k] for k in indices]
        assert [t["probability"] for t in row["top"]] == pytest.approx(values.tolist(), abs=1e-6)
    with pytest.raises(ConfigError, match=r"trained on 32x32 images, given 64x64 ones"):
        loaded.logits(torch.zeros(1, 64, 64, 3, dtype=torch.uint8))
    exported = export_model(checkpoint, "torchscript", tmp_path / "m.pt", check_images=images)
    assert "uint8[N, 32, 32, 3]" in exported.input_spec
    assert export_model(checkpoint, "torchscript", tmp_path / "r.pt").images_checked > 0


def test_init_from_without_a_config_names_the_inherited_crop_and_the_fix(
    run, cache32: Path, tmp_path: Path, capsys
) -> None:
    # Without --config a run takes the checkpoint's settings, crop 56 resolved for 64-pixel
    # images: on a 32-pixel cache the fix is a --set, not removing a line from a config.
    import tinycnn.cli

    checkpoint = run[1] / "checkpoints" / "best.pt"
    argv = ["train", "--data", str(cache32), "--init-from", str(checkpoint), "-q"]
    assert tinycnn.cli.main([*argv, "--out", str(tmp_path / "run")]) == 1
    err = capsys.readouterr().err.strip()
    inherited = f"tinycnn: error: augment.crop = 56 ({checkpoint}'s: without --config its"
    assert err.startswith(inherited), err
    assert err.endswith("give one that does: --set augment.crop=24") and "\n" not in err, err
    assert "from the config" not in err and not (tmp_path / "run").exists()
    # A crop of the user's own (spaces around = too) is named as theirs, with the same fix.
    own = [*argv, "--out", str(tmp_path / "r2"), "--set", "augment.crop = 30"]
    assert tinycnn.cli.main(own) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("tinycnn: error: augment.crop = 30 does not fit this cache's 32x32"), err
    assert err.endswith("give one that does: --set augment.crop=24") and "config" not in err, err
