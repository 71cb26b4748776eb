"""prediction.py: submission files, image files of any kind (over the pixel limit: refused before
decoding), reports and exit codes, the predict command with an ensemble."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.helpers import SMALL as TRAIN_SMALL
from tests.helpers import Small, run_cli
from tinycnn.cli import build_parser, main
from tinycnn.config import load_config
from tinycnn.data.cache import load_cache
from tinycnn.data.prepare import prepare
from tinycnn.data.synthetic import make_synthetic
from tinycnn.data.tiny_imagenet import natural_key
from tinycnn.errors import ConfigError
from tinycnn.inference import load_model
from tinycnn.prediction import (
    MAX_PIXELS,
    PredictionReport,
    exit_code,
    format_report,
    load_images,
    model_predictor,
    predict_batches,
    predict_files,
    report_json,
    write_submission,
)
from tinycnn.runtime import make_runtime

# One epoch of the small model (tests/helpers.py): these tests check plumbing, not accuracy.
SMALL = [*TRAIN_SMALL, "train.epochs=1"]


@dataclass
class Trained:
    dataset: Path  # the generated dataset folder (original JPEG files)
    cache: Path
    checkpoint: Path


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Trained:
    """One tiny model trained once; 12 test images, so that test_10 must follow test_9."""
    from tinycnn.training import train

    root = tmp_path_factory.mktemp("predict")
    dataset = make_synthetic(
        root / "data",
        classes=5,
        train_per_class=12,
        val_per_class=4,
        test_count=12,
        seed=3,
        grayscale_fraction=0.1,
    )
    cache = prepare(dataset, root / "cache", workers=1, progress=False).path
    cfg = load_config(None, [f"data.cache={json.dumps(str(cache))}", *SMALL])
    train(cfg, root / "run", progress=False)
    return Trained(dataset, cache, root / "run" / "checkpoints" / "last.pt")


@pytest.fixture(scope="module")
def predictor(trained: Trained):
    return model_predictor(load_model(trained.checkpoint, make_runtime(threads=1)))


def test_submission_lists_every_test_image_in_natural_order(
    trained: Trained, predictor, tmp_path: Path
) -> None:
    out = tmp_path / "sub" / "submission.txt"
    out.parent.mkdir()
    out.write_text("old contents\n")  # replaced whole, never appended to
    count = write_submission(predictor, trained.cache, out, batch_size=5)
    lines = out.read_text().splitlines()
    assert count == len(lines) == 12
    names = [line.split("\t")[0] for line in lines]
    assert names == [f"test_{k}.JPEG" for k in range(12)]  # test_10 after test_9, not test_1
    assert names == sorted(names, key=natural_key)
    pattern = re.compile(r"^test_\d+\.JPEG\t(n\d{8})$")
    assert all(pattern.match(line) for line in lines)
    assert {pattern.match(line)[1] for line in lines} <= set(predictor.classes)
    test = load_cache(trained.cache).split("test")
    top1 = predict_batches(predictor, test.images).argmax(dim=1).tolist()
    assert [line.split("\t")[1] for line in lines] == [predictor.classes[k] for k in top1]
    assert [p.name for p in out.parent.iterdir()] == ["submission.txt"]  # no temporary left


@dataclass
class FakePredictor:
    classes: list[str]
    names: list[str]

    def __call__(self, images_u8: torch.Tensor) -> torch.Tensor:
        return torch.full((len(images_u8), len(self.classes)), 1 / len(self.classes))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda c: c[::-1], "same classes, different order"),
        (lambda c: c[:-1], "4 classes vs 5"),
        (lambda c: [*c[:-1], "n99999999"], "1 classes differ, e.g. n"),
    ],
)
def test_submission_refuses_a_different_class_list(
    trained: Trained, tmp_path: Path, change, message: str
) -> None:
    classes = change(load_cache(trained.cache).classes)
    fake = FakePredictor(classes, classes)
    with pytest.raises(ConfigError, match=f"{re.escape(str(trained.cache))}.*{message}"):
        write_submission(fake, trained.cache, tmp_path / "submission.txt")
    assert not list(tmp_path.iterdir())


def _save(path: Path, image: Image.Image, **options) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, **options)
    return path


def _noise(mode: str, size: tuple[int, int], seed: int = 0) -> Image.Image:
    shape = (size[1], size[0], len(mode)) if len(mode) > 1 else (size[1], size[0])
    array = np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)
    return Image.fromarray(array, mode)


@pytest.fixture
def mixed_inputs(tmp_path: Path) -> dict[str, Path]:
    """Every kind of input predict_files meets, with a corrupt file and a missing path."""
    palette = _noise("L", (64, 64)).convert("P")
    folder = tmp_path / "folder"
    paths = {
        "png": _save(tmp_path / "rgb.png", _noise("RGB", (64, 64))),
        "jpeg": _save(tmp_path / "rgb.jpg", _noise("RGB", (64, 64), 1)),
        "gray": _save(tmp_path / "gray.jpeg", _noise("L", (64, 64), 2)),
        "rgba": _save(tmp_path / "rgba.png", _noise("RGBA", (64, 64), 3)),
        "gif": _save(tmp_path / "palette.gif", palette, transparency=0),
        "odd": _save(tmp_path / "odd.png", _noise("RGB", (100, 37), 4)),
        "corrupt": tmp_path / "corrupt.jpg",
        "empty": tmp_path / "empty.png",
        "missing": tmp_path / "missing.jpg",
        "folder": folder,
    }
    paths["corrupt"].write_bytes(b"\xff\xd8 this is not a JPEG" * 20)
    paths["empty"].write_bytes(b"")
    _save(folder / "nested" / "deeper" / "inside.webp", _noise("RGB", (80, 80), 5))
    _save(folder / ".hidden.jpg", _noise("RGB", (64, 64), 6))  # left out, like notes.txt
    (folder / "notes.txt").write_text("not an image")
    return paths


def test_predict_files_reads_every_kind_and_reports_the_bad_ones(
    mixed_inputs: dict[str, Path], predictor
) -> None:
    report = predict_files(predictor, list(mixed_inputs.values()))
    failed = {Path(f["file"]).name: f["reason"] for f in report.failures}
    assert set(failed) == {"corrupt.jpg", "empty.png", "missing.jpg"}
    assert "not an image" in failed["corrupt.jpg"] and "no such file" in failed["missing.jpg"]
    assert failed["empty.png"] == "empty file (0 bytes)"
    predicted = [Path(row["file"]).name for row in report.rows]
    assert predicted == [
        "rgb.png",
        "rgb.jpg",
        "gray.jpeg",
        "rgba.png",
        "palette.gif",
        "odd.png",
        "inside.webp",
    ]
    name_of = dict(zip(predictor.classes, predictor.names, strict=True))
    for row in report.rows:
        probs = [t["probability"] for t in row["top"]]
        assert len(row["top"]) == 5 and len({t["wnid"] for t in row["top"]}) == 5
        assert all(t["name"] == name_of[t["wnid"]] for t in row["top"])
        assert probs == sorted(probs, reverse=True) and sum(probs) <= 1 + 1e-5
        assert all(0 <= p <= 1 for p in probs)
    assert exit_code(report) == 2


def test_top_keeps_the_most_probable_classes(mixed_inputs: dict[str, Path], predictor) -> None:
    full = predict_files(predictor, [mixed_inputs["png"]])
    top2 = predict_files(predictor, [mixed_inputs["png"]], top=2)
    assert top2.rows[0]["top"] == full.rows[0]["top"][:2]
    with pytest.raises(ConfigError, match="--top 0"):
        predict_files(predictor, [mixed_inputs["png"]], top=0)


def test_load_images_converts_to_64x64_rgb(tmp_path: Path) -> None:
    gray = np.tile(np.arange(64, dtype=np.uint8) * 4, (64, 1))
    clear = np.zeros((64, 64, 4), np.uint8)  # fully transparent black
    wide = np.full((64, 64), 0x8000, np.uint16)  # 16-bit mid-grey
    odd = _noise("RGB", (100, 37))
    upright = np.zeros((64, 64, 3), np.uint8)
    upright[:, 32:] = 255  # right half white; saved rotated 180 degrees by its EXIF tag
    exif = Image.Exif()
    exif[0x0112] = 3
    files = [
        _save(tmp_path / "gray.png", Image.fromarray(gray, "L")),
        _save(tmp_path / "clear.png", Image.fromarray(clear, "RGBA")),
        _save(tmp_path / "wide.png", Image.fromarray(wide)),
        _save(tmp_path / "odd.png", odd),
        _save(tmp_path / "turned.png", Image.fromarray(upright[::-1, ::-1]), exif=exif),
        _save(tmp_path / "cmyk.jpg", _noise("CMYK", (64, 64))),
    ]
    read, images, failures = load_images(files)
    assert read == files and not failures
    assert images.shape == (6, 64, 64, 3) and images.dtype == np.uint8
    assert (images[0] == gray[:, :, None]).all()
    assert (images[1] == 255).all()  # transparency shown on white, not as its hidden black
    assert (images[2] == 128).all()  # scaled to 8 bits, not clipped to 255
    # Its centre square (37 x 37 from x = 31.5), resized: as prepare caches it (it had been
    # squashed whole, so --images and --submission saw other pixels of one file).
    square = odd.resize((64, 64), Image.Resampling.BICUBIC, box=(31.5, 0, 68.5, 37))
    assert np.array_equal(images[3], np.asarray(square))
    assert np.array_equal(images[4], upright)
    with Image.open(files[5]) as cmyk:
        assert np.array_equal(images[5], np.asarray(cmyk.convert("RGB")))  # as the cache does


def test_folders_are_searched_in_natural_order_once(tmp_path: Path) -> None:
    for k in (10, 2, 1):
        _save(tmp_path / "pics" / f"img_{k}.png", _noise("RGB", (64, 64), k))
    _save(tmp_path / "pics" / ".git" / "x.png", _noise("RGB", (64, 64)))
    (tmp_path / "empty").mkdir()
    again = tmp_path / "pics" / "img_2.png"
    read, images, failures = load_images([tmp_path / "pics", again, tmp_path / "empty"])
    assert [p.name for p in read] == ["img_1.png", "img_2.png", "img_10.png"]
    assert len(images) == 3
    assert failures == [(tmp_path / "empty", "folder holds no image files")]


def test_files_and_cache_decode_alike(trained: Trained, predictor) -> None:
    """The val JPEGs read through load_images match the cache's arrays, so top-1 agrees."""
    val = load_cache(trained.cache).split("val")
    read, images, failures = load_images([trained.dataset / f for f in val.files])
    assert len(read) == len(val) == 20 and not failures
    assert np.abs(images.astype(int) - np.asarray(val.images, int)).max() <= 1
    from_files = predict_batches(predictor, images).argmax(dim=1)
    from_cache = predict_batches(predictor, val.images).argmax(dim=1)
    assert torch.equal(from_files, from_cache)


ROW = {"file": "a.jpg", "top": [{"wnid": "n01", "name": "cat", "probability": 0.9}]}
FAILURE = {"file": "b.jpg", "reason": "no such file or folder"}


@pytest.mark.parametrize(
    ("rows", "failures", "code"),
    [([ROW], [], 0), ([ROW], [FAILURE], 2), ([], [FAILURE], 1), ([], [], 1)],
)
def test_exit_code(rows: list, failures: list, code: int) -> None:
    assert exit_code(PredictionReport(rows, failures)) == code


def test_reports_for_people_and_for_programs(mixed_inputs: dict[str, Path], predictor) -> None:
    report = predict_files(predictor, [mixed_inputs["png"], mixed_inputs["missing"]])
    assert json.loads(report_json(report)) == {"rows": report.rows, "failures": report.failures}
    text = format_report(report)
    best = report.rows[0]["top"][0]
    assert str(mixed_inputs["png"]) in text
    assert f"{best['probability']:6.3f}  {best['name']} ({best['wnid']})" in text
    assert f"{mixed_inputs['missing']}: no such file or folder" in text
    assert text.endswith("1 predicted, 1 not predicted")


@pytest.mark.parametrize(
    ("wnid", "name", "shown"),
    [
        ("n02074367", "dugong, Dugong dugon", "dugong, Dugong dugon (n02074367)"),
        ("dugong", "dugong", "dugong"),  # class-per-folder data: the name is the id
    ],
)
def test_a_class_is_named_once_where_its_name_is_its_id(wnid: str, name: str, shown: str) -> None:
    row = {"file": "a.jpg", "top": [{"wnid": wnid, "name": name, "probability": 0.9}]}
    assert format_report(PredictionReport([row], [])).splitlines()[1] == f"   0.900  {shown}"


def test_a_truncated_file_is_reported_and_the_rest_read(tmp_path: Path) -> None:
    whole = _save(tmp_path / "whole.jpg", _noise("RGB", (64, 64)), quality=95)
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    read, images, failures = load_images([cut, whole])
    assert read == [whole] and len(images) == 1
    assert [(path, reason.split(" (")[0]) for path, reason in failures] == [
        (cut, "truncated image")
    ]


# --- predict: images too large to decode safely ----------------------------------------------


def _huge_png(path: Path, width: int, height: int) -> Path:
    """A valid 1-bit PNG of width x height, all black, written row by row (~17 KB for 12000^2)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    packer = zlib.compressobj(9)
    row = b"\0" * (1 + (width + 7) // 8)  # filter byte, then 8 pixels a byte
    data = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data)
    path.write_bytes(png + chunk(b"IEND", b""))
    return path


@pytest.fixture(scope="module")
def huge_png(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _huge_png(tmp_path_factory.mktemp("huge") / "huge.png", 12000, 12000)


# (image side, max_pixels, the reason's words, or None when the image is predicted)
PIXEL_LIMITS = [
    (12000, MAX_PIXELS, "12000x12000 = 144,000,000 pixels, over the limit of 50,000,000"),
    (100, 9_999, "100x100 = 10,000 pixels, over the limit of 9,999"),
    (100, 10_000, None),  # the limit itself is allowed
    (100, 0, None),  # no limit
    (12000, 143_999_999, "over the limit of 143,999,999"),
]


@pytest.mark.parametrize(("side", "max_pixels", "words"), PIXEL_LIMITS)
def test_images_over_the_pixel_limit_are_refused_before_decoding(
    huge_png: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    side: int,
    max_pixels: int,
    words: str | None,
) -> None:
    from PIL import ImageFile

    if side == 12000:
        path = huge_png
        real_load = ImageFile.ImageFile.load

        def load(image):  # decoding the big one would take ~1 GB: it must not happen
            assert image.size != (12000, 12000), "the huge image was decoded"
            return real_load(image)

        monkeypatch.setattr(ImageFile.ImageFile, "load", load)
    else:
        path = _huge_png(tmp_path / "small.png", side, side)
    files, images, failures = load_images([path], max_pixels=max_pixels)
    if words is None:
        assert files == [path] and images.shape == (1, 64, 64, 3) and not failures
    else:
        assert files == [] and len(failures) == 1 and failures[0][0] == path
        assert words in failures[0][1] and "--max-pixels" in failures[0][1], failures


def test_cli_predict_reports_a_huge_image_and_predicts_the_rest(
    small: Small, huge_png: Path, capsys: pytest.CaptureFixture
) -> None:
    image = next((small.dataset / "val" / "images").iterdir())
    argv = ["predict", small.checkpoint, "--images", huge_png, image, "--device", "cpu"]
    code, printed, err = run_cli(capsys, argv)
    assert code == 2, err  # some predicted, some not
    assert f"{huge_png}: image too large: 12000x12000" in printed
    code, printed, err = run_cli(capsys, [*argv, "--max-pixels", "100"])
    assert code == 1 and printed.count("over the limit of 100 ") == 2, printed
    with pytest.raises(SystemExit):  # refused by the parser (test_cli: before any work)
        run_cli(capsys, [*argv, "--max-pixels", "-1"])
    assert "argument --max-pixels: '-1' is not a whole number >= 0" in capsys.readouterr().err
    parser_default = build_parser().parse_args(["predict", "x"]).max_pixels
    assert parser_default == MAX_PIXELS  # the CLI does not import predict.py to read it


def test_cli_predict_submission_and_files_with_an_ensemble(
    run, tmp_path: Path, capsys, synth_sources
) -> None:
    cache, folder = run
    submission = tmp_path / "sub.txt"
    image = synth_sources["folder"] / "val" / "images" / "val_0.JPEG"
    argv = [
        "predict",
        f"{folder}@last:2",
        "--data",
        str(cache),
        "--submission",
        str(submission),
        "--images",
        str(image),
        "--json",
        "--precision",
        "fp32",
    ]
    assert main(argv) == 0
    lines = submission.read_text().splitlines()
    assert len(lines) == 8 and lines[0].startswith("test_0.JPEG\t")
    rows = json.loads(capsys.readouterr().out)["rows"]
    assert rows[0]["file"].endswith("val_0.JPEG") and len(rows[0]["top"]) == 5
    assert main(["predict", str(folder), "--images", str(tmp_path / "missing.png")]) == 1
    assert main(["predict", str(folder)]) == 1
    assert "say what to predict" in capsys.readouterr().err


def test_submission_names_are_unique_paths_under_the_test_folder() -> None:
    # Base names alone: test/day1/img_0.png and test/day2/img_0.png were two "img_0.png" lines.
    from tinycnn.prediction import submission_names

    official = ["test/images/test_0.JPEG", "test/images/test_1.JPEG"]
    assert submission_names(official) == ["test_0.JPEG", "test_1.JPEG"]
    nested = ["test/day1/img_0.png", "test/day2/img_0.png", "test/img_0.png"]
    assert submission_names(nested) == ["day1/img_0.png", "day2/img_0.png", "img_0.png"]
    assert submission_names(["test/a/b/x.png"]) == ["x.png"]
    assert submission_names([]) == []


def test_a_folder_s_symlinked_subfolders_are_followed_once(tmp_path: Path) -> None:
    # os.walk had skipped them: "folder holds no image files". A link back up is not a loop.
    from tinycnn.prediction import _folder_images

    photos = tmp_path / "elsewhere" / "photos"
    photos.mkdir(parents=True)
    for name in ("a.png", "b.png"):
        Image.new("RGB", (8, 8)).save(photos / name)
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "linked").symlink_to(photos, target_is_directory=True)
    (photos / "up").symlink_to(folder, target_is_directory=True)  # a loop
    failures: list = []
    found = _folder_images(folder, failures)
    assert found == [folder / "linked" / "a.png", folder / "linked" / "b.png"] and not failures
