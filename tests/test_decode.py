"""data/decode.py: images of the wrong size, resizing by centre crop, boxes fitted to another size,
and the failure reasons of unreadable images."""

from __future__ import annotations

import io
import signal
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, UnidentifiedImageError

from tests.helpers import save_image
from tinycnn.cli import main
from tinycnn.data import decode
from tinycnn.data.cache import load_cache, verify_cache
from tinycnn.data.decode import _reason
from tinycnn.data.prepare import prepare
from tinycnn.data.sources import Source


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        (
            UnidentifiedImageError(f"cannot identify image file {io.BytesIO()!r}"),
            "corrupt or unreadable image (Pillow cannot identify its format)",
        ),
        (
            OSError(f"broken data stream when reading {io.BytesIO()!r}"),
            "corrupt or unreadable image (broken data stream when reading the image)",
        ),
        (OSError("image file is truncated"), "truncated image (image file is truncated)"),
    ],
)
def test_image_failure_reasons_hold_no_object_address(error: Exception, reason: str) -> None:
    assert _reason(error) == reason


# --- 13: wrong-size images are not "unreadable" -------------------------------------------------


def test_wrong_size_with_skip_bad_fails_at_once_pointing_at_resize(
    synth_copy: Path, tmp_path: Path, capsys
) -> None:
    for image in (synth_copy / "train").rglob("*.JPEG"):  # a 32x32 copy of the train split
        save_image(image, (10, 20, 30), (32, 32))
    out = tmp_path / "cache"
    assert main(["prepare", str(synth_copy), "--out", str(out), "-q", "--skip-bad"]) == 1
    err = capsys.readouterr().err.strip()
    assert "image is 32x32, not 64x64 (pass --resize" in err and "/train/" in err
    assert "skip-bad" not in err and "unreadable" not in err and "\n" not in err
    assert not out.exists()


def test_wrong_size_message_does_not_suggest_skip_bad(synth_copy: Path, tmp_path: Path, capsys):
    save_image(synth_copy / "test" / "images" / "test_1.JPEG", (1, 2, 3), (48, 40))
    assert main(["prepare", str(synth_copy), "--out", str(tmp_path / "c"), "-q"]) == 1
    err = capsys.readouterr().err
    assert "test/images/test_1.JPEG: image is 48x40, not 64x64 (pass --resize" in err
    assert "--skip-bad" not in err


def test_a_worker_stops_its_chunk_at_the_first_wrong_size(tmp_path: Path) -> None:
    root = tmp_path / "tree"
    for name, size in [("a.png", 64), ("b.png", 32), ("c.png", 64)]:
        save_image(root / name, (9, 9, 9), (size, size), "PNG")
    target = tmp_path / "rows.bin"
    target.write_bytes(bytes(3 * 64 * 64 * 3))

    class Tree(Source):
        def read(self, rel: str) -> bytes:
            return (root / rel).read_bytes()

    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:  # in this process, as a worker would
        decode.init_worker(Tree(root), "none", 64)
        chunk = decode.Chunk("train", str(target), 0, [0, 1, 2], ["a.png", "b.png", "c.png"])
        result = decode.run_chunk(chunk)
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    assert result.wrong_size is not None and result.wrong_size[0] == 1
    assert "32x32" in result.wrong_size[1] and result.failures == []
    assert result.done == 1  # c.png was not decoded: the prepare is failing anyway


def test_resize_keeps_the_aspect_by_centre_crop(synth_copy: Path, tmp_path: Path) -> None:
    # 192x64: red | blue | green thirds. A centre crop keeps only blue; squashing would mix all.
    pixels = np.zeros((64, 192, 3), np.uint8)
    pixels[:, :64, 0] = pixels[:, 64:128, 2] = pixels[:, 128:, 1] = 255
    Image.fromarray(pixels).save(synth_copy / "test" / "images" / "test_1.JPEG", quality=100)
    out = tmp_path / "cache"
    assert main(["prepare", str(synth_copy), "--out", str(out), "-q", "--resize"]) == 0
    test = load_cache(out).split("test")
    image = test.images[test.files.index("test/images/test_1.JPEG")].astype(int)
    assert (np.abs(image[4:-4, 4:-4] - [0, 0, 255]).max(axis=-1) < 40).all()


# --- issue 27 item 20: boxes of a cache made at another size -----------------------------------


@pytest.mark.parametrize(
    ("box", "width", "height", "size", "expected"),
    [
        ((14, 2, 54, 49), 64, 64, 32, (7, 1, 27, 24)),  # x: pixels 14-54 = [14, 55) -> [7, 27.5)
        ((52, 55, 57, 59), 64, 64, 32, (26, 27, 28, 29)),
        ((0, 0, 63, 63), 64, 64, 32, (0, 0, 31, 31)),  # the whole image stays the whole image
        ((0, 10, 63, 58), 64, 64, 56, (0, 8, 55, 51)),  # 10 * 7/8 = 8.75, 59 * 7/8 = 51.6
        ((40, 10, 50, 20), 128, 64, 64, (8, 10, 18, 20)),  # the centre square starts at x = 32
        ((20, 0, 100, 63), 128, 64, 32, (0, 0, 31, 31)),  # cut by the square: clipped to it
        ((0, 0, 20, 63), 128, 64, 64, (-1, -1, -1, -1)),  # wholly cropped away: unknown
        ((-1, -1, -1, -1), 64, 64, 32, (-1, -1, -1, -1)),  # unknown stays unknown
    ],
)
def test_boxes_follow_the_images_to_another_size(
    box: tuple, width: int, height: int, size: int, expected: tuple
) -> None:
    boxes = np.array([box, (1, 2, 3, 4)], np.int16)  # row 1 was not resized: it stays
    fitted = decode.fit_boxes(boxes, [(0, width, height)], size)
    assert fitted.tolist() == [list(expected), [1, 2, 3, 4]] and fitted.dtype == np.int16


def test_a_cache_at_size_32_has_boxes_in_32_pixel_coordinates(
    mini_archive: Path, tmp_path: Path
) -> None:
    # Boxes of the real mini subset, read from its annotation files, halved by hand.
    out = tmp_path / "mini32"
    cache = load_cache(prepare(mini_archive, out, size=32, resize=True, progress=False).path)
    train, val = cache.split("train"), cache.split("val")
    assert train.images.shape[1:] == (32, 32, 3)
    one = train.files.index("train/n01443537/images/n01443537_1.JPEG")  # 14 2 54 49 at 64
    assert train.boxes[one].tolist() == [7, 1, 27, 24]
    assert val.boxes[val.files.index("val/images/val_1.JPEG")].tolist() == [26, 27, 28, 29]
    assert train.boxes.min() >= 0 and train.boxes.max() <= 31 and val.boxes.max() <= 31
    assert not prepare(mini_archive, out, size=32, resize=True, progress=False).rebuilt


def test_a_short_write_is_continued_and_a_stalled_one_is_an_error(
    synth_sources: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # pwrite may write part of a row (a signal, a nearly full disk): the rest must follow, and
    # the row digest must be of what is on disk. Workers are forked: the patch reaches them.
    reference = prepare(synth_sources["folder"], tmp_path / "ref", progress=False)
    real = decode.os.pwrite
    monkeypatch.setattr(decode.os, "pwrite", lambda fd, data, at: real(fd, data[:1000], at))
    out = prepare(synth_sources["folder"], tmp_path / "cache", progress=False).path
    verify_cache(out)
    assert np.array_equal(
        load_cache(out).split("train").images, load_cache(reference.path).split("train").images
    )
    monkeypatch.setattr(decode.os, "pwrite", lambda fd, data, at: 0)
    with pytest.raises(OSError, match="pwrite wrote 0 of 12288 bytes"):
        prepare(synth_sources["folder"], tmp_path / "stalled", progress=False)
    assert not (tmp_path / "stalled").exists()
