"""data/cache.py: per-file sha256 in the manifest, verify_cache, content_id, damaged headers and
manifests, and how a cache differs from the standard Tiny ImageNet."""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

import tinycnn.data.cache as cache_module
import tinycnn.data.checksums as checksums_module
from tinycnn.cli import main
from tinycnn.data.cache import load_cache
from tinycnn.data.prepare import prepare
from tinycnn.errors import CacheError


@pytest.fixture(scope="module")
def pristine(synth_sources: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One prepared cache of the generated dataset (read-only: tests copy it)."""
    return prepare(synth_sources["folder"], tmp_path_factory.mktemp("c") / "c", progress=False).path


@pytest.fixture
def cache_copy(pristine: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(pristine, tmp_path / "cache"))


def _zero_pixels(path: Path) -> str:
    images = np.load(path / "train_images.npy", mmap_mode="r+")
    images[7] = 0  # a whole image black: same size, nothing a size check sees
    images.flush()
    return "train_images.npy"


def _garbage_header(path: Path) -> str:
    file = path / "val_labels.npy"
    data = bytearray(file.read_bytes())
    data[10:40] = b"x" * 30  # inside the header's dict literal
    file.write_bytes(bytes(data))
    return "val_labels.npy"


def _flipped_text_byte(path: Path) -> str:
    file = path / "test_files.txt"
    data = bytearray(file.read_bytes())
    data[5] ^= 0x01
    file.write_bytes(bytes(data))
    return "test_files.txt"


def _changed_mean(path: Path) -> str:
    mean = np.load(path / "mean_image.npy")
    mean[0, 0, 0] += 1.0
    np.save(path / "mean_image.npy", mean)
    return "mean_image.npy"


DAMAGE = [_zero_pixels, _garbage_header, _flipped_text_byte, _changed_mean]


def _rows_sha256_by_hand(path: Path) -> str:
    """An image array's checksum computed here from its bytes: the .npy header (up to the data
    offset numpy reports), then each row's sha256, hashed together."""
    data = path.read_bytes()
    array = np.load(path, mmap_mode="r")
    offset, row = array.offset, array[0].nbytes
    outer = hashlib.sha256(data[:offset])
    for lo in range(offset, len(data), row):
        outer.update(hashlib.sha256(data[lo : lo + row]).digest())
    return "rows-sha256:" + outer.hexdigest()


def test_manifest_records_each_files_sha256(pristine: Path) -> None:
    manifest = json.loads((pristine / "manifest.json").read_text())
    files = sorted(p.name for p in pristine.iterdir() if p.name != "manifest.json")
    assert sorted(manifest["checksums"]) == files
    for name in files:
        if name.endswith("_images.npy"):  # the workers' row digests, never read back
            expected = _rows_sha256_by_hand(pristine / name)
        else:
            expected = hashlib.sha256((pristine / name).read_bytes()).hexdigest()
        assert manifest["checksums"][name] == expected, name


def _old_scheme(path: Path) -> str:
    """Rewrite a cache's manifest as a tinycnn before the row digests wrote it (whole-file
    sha256 everywhere, digest consistent); returns the content id computed here by hand the
    way that version did: sha256 of the classes and checksums as sorted, compact JSON."""
    manifest_path = path / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    for name in manifest["checksums"]:
        manifest["checksums"][name] = hashlib.sha256((path / name).read_bytes()).hexdigest()
    manifest["digest"] = cache_module.manifest_digest(manifest)
    manifest_path.write_text(json.dumps(manifest))
    identity = {"classes": manifest["classes"], "checksums": manifest["checksums"]}
    blob = json.dumps(identity, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def test_a_cache_with_whole_file_checksums_still_verifies(cache_copy: Path) -> None:
    # Caches prepared before the row digests record each array's plain sha256: still checked,
    # by that scheme, damage included.
    _old_scheme(cache_copy)
    cache_module.verify_cache(cache_copy)
    _zero_pixels(cache_copy)
    with pytest.raises(CacheError, match=r"train_images\.npy.*damaged"):
        cache_module.verify_cache(cache_copy)


def test_the_same_data_keeps_its_id_across_the_checksum_schemes(
    pristine: Path, cache_copy: Path
) -> None:
    new = load_cache(pristine)
    old_id = _old_scheme(cache_copy)
    assert load_cache(cache_copy).content_id == old_id != new.content_id
    assert new.has_content_id(new.content_id) and new.has_content_id(old_id)
    assert not new.has_content_id("0" * 16)
    _zero_pixels(cache_copy)  # other data: neither id matches it
    other = _old_scheme(cache_copy)
    assert not new.has_content_id(other) and not load_cache(cache_copy).has_content_id(old_id)


def test_short_reads_still_give_the_whole_rows(pristine: Path, monkeypatch) -> None:
    # A raw read may return fewer bytes than asked (a signal, a network file system): the
    # checksum must still cover whole rows, not call the file truncated.
    class Trickle:
        def __init__(self, f) -> None:
            self.f = f

        def readinto(self, view) -> int:
            return self.f.readinto(memoryview(view)[:1000])

        def read(self, n: int) -> bytes:
            return self.f.read(n)

        def __enter__(self):
            return self

        def __exit__(self, *exc) -> None:
            self.f.close()

    trickle = lambda *a, **k: Trickle(open(*a, **k))  # noqa: E731, SIM115 - closed by Trickle
    monkeypatch.setattr(checksums_module, "open", trickle, raising=False)
    recorded = json.loads((pristine / "manifest.json").read_text())["checksums"]
    assert (
        checksums_module.array_rows_checksum(pristine / "train_images.npy")
        == recorded["train_images.npy"]
    )


@pytest.mark.parametrize("cut", [1, 12288, 12289])
def test_an_array_cut_short_never_matches(cache_copy: Path, cut: int) -> None:
    # Cut inside a row, at a row's edge, and one byte past it: the row digests cannot match
    # (the manifest's sizes would catch it first at load; verify must not rely on that).
    file = cache_copy / "val_images.npy"
    recorded = json.loads((cache_copy / "manifest.json").read_text())["checksums"][file.name]
    file.write_bytes(file.read_bytes()[:-cut])
    assert checksums_module.array_rows_checksum(file) != recorded


def test_intact_cache_verifies(pristine: Path) -> None:
    assert cache_module.verify_cache(pristine) is None
    assert cache_module.verify_cache(load_cache(pristine), splits=["val"]) is None


@pytest.mark.parametrize("damage", DAMAGE, ids=lambda f: f.__name__.strip("_"))
def test_same_size_damage_is_found(cache_copy: Path, damage: Callable[[Path], str]) -> None:
    sizes = {p.name: p.stat().st_size for p in cache_copy.iterdir()}
    name = damage(cache_copy)
    assert {p.name: p.stat().st_size for p in cache_copy.iterdir()} == sizes
    with pytest.raises(CacheError) as info:
        cache_module.verify_cache(cache_copy)
    message = str(info.value)
    assert str(cache_copy / name) in message and "damaged" in message
    source = json.loads((cache_copy / "manifest.json").read_text())["source"]["path"]
    assert f"tinycnn prepare {source}" in message
    assert f"--out {cache_copy} --force" in message and "\n" not in message


def test_splits_restrict_the_check(cache_copy: Path) -> None:
    images = np.load(cache_copy / "test_images.npy", mmap_mode="r+")
    images[0, 0, 0] ^= 0xFF
    images.flush()
    cache_module.verify_cache(cache_copy, splits=["train", "val"])  # test images not read
    for splits in (["test"], None):
        with pytest.raises(CacheError, match=r"test_images\.npy"):
            cache_module.verify_cache(cache_copy, splits=splits)
    with pytest.raises(CacheError, match="no split 'tune'"):
        cache_module.verify_cache(cache_copy, splits=["tune"])
    # The small files of every split are always checked.
    _flipped_text_byte(cache_copy)
    with pytest.raises(CacheError, match=r"test_files\.txt"):
        cache_module.verify_cache(cache_copy, splits=["train"])


def test_cache_without_checksums(cache_copy: Path, synth_sources: dict[str, Path]) -> None:
    manifest_path = cache_copy / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    del manifest["checksums"]
    manifest["digest"] = cache_module.manifest_digest(manifest)  # an older tinycnn's, consistent
    manifest_path.write_text(json.dumps(manifest))
    for check in (cache_module.verify_cache, lambda p: load_cache(p).content_id):
        with pytest.raises(CacheError, match=r"no checksums .*--force"):
            check(cache_copy)
    result = prepare(synth_sources["folder"], cache_copy, progress=False)
    assert result.rebuilt and "no checksums" in result.reason
    cache_module.verify_cache(cache_copy)


def test_damaged_header_is_a_cache_error(cache_copy: Path) -> None:
    # Garbage in the header: np.load raises ValueError, which must not escape as a traceback.
    file = cache_copy / "train_images.npy"
    data = bytearray(file.read_bytes())
    data[12:30] = b"#" * 18
    file.write_bytes(bytes(data))
    with pytest.raises(CacheError, match=r"train_images\.npy: not a readable \.npy array"):
        load_cache(cache_copy).split("train")


def test_header_with_another_shape_is_a_cache_error(cache_copy: Path) -> None:
    # A header that still parses but describes other rows: a silent misread without the check.
    file = cache_copy / "val_images.npy"
    data = file.read_bytes()
    shape = b"(20, 64, 64, 3)"
    assert shape in data[:128]
    file.write_bytes(data.replace(shape, b"(40, 32, 64, 3)", 1))
    with pytest.raises(CacheError, match=r"val_images\.npy: uint8 \(40, 32, 64, 3\), the manifest"):
        load_cache(cache_copy).split("val")


def test_content_id(synth_sources: dict[str, Path], synth_copy: Path, tmp_path: Path) -> None:
    ids = {
        kind: load_cache(prepare(src, tmp_path / kind.replace(".", ""), progress=False).path)
        for kind, src in synth_sources.items()
    }
    ids = {kind: cache.content_id for kind, cache in ids.items()}
    assert len(set(ids.values())) == 1  # same pixels from a folder, a zip and a tar.gz
    content_id = ids["folder"]
    assert len(content_id) == 16 and int(content_id, 16) >= 0
    out = tmp_path / "edited"
    prepare(synth_copy, out, progress=False)
    assert load_cache(out).content_id == content_id
    assert prepare(synth_copy, out, progress=False, force=True).rebuilt
    assert load_cache(out).content_id == content_id  # a rebuild of the same data: same id
    image = next((synth_copy / "test" / "images").iterdir())
    image.write_bytes((synth_copy / "val" / "images" / "val_0.JPEG").read_bytes())
    assert prepare(synth_copy, out, progress=False, force=True).rebuilt
    assert load_cache(out).content_id != content_id


@pytest.mark.parametrize("damage", [_zero_pixels, _garbage_header], ids=["pixels", "header"])
def test_prepare_rebuilds_a_damaged_cache(
    synth_sources: dict[str, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    damage: Callable[[Path], str],
) -> None:
    out = tmp_path / "cache"
    src = str(synth_sources["folder"])
    assert main(["prepare", src, "--out", str(out), "-q"]) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.name != "manifest.json"}
    name = damage(out)
    capsys.readouterr()
    assert main(["prepare", src, "--out", str(out), "-q"]) == 0
    captured = capsys.readouterr()
    assert "up to date" not in captured.out
    assert "rebuilt because the old cache is damaged" in captured.err and name in captured.err
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.name != "manifest.json"} == before
    assert main(["prepare", src, "--out", str(out), "-q"]) == 0
    assert "up to date" in capsys.readouterr().out


def test_info_verify(cache_copy: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info", str(cache_copy), "--verify"]) == 0
    files = len(list(cache_copy.iterdir())) - 1
    assert f"verified {files} files" in capsys.readouterr().out
    assert main(["info", str(cache_copy)]) == 0  # without --verify: the small files only
    _zero_pixels(cache_copy)
    capsys.readouterr()
    assert main(["info", str(cache_copy), "--verify"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("tinycnn: error: ") and "\n" not in err
    assert f"{cache_copy / 'train_images.npy'}: content differs" in err
    assert f"--out {cache_copy} --force" in err


def _swap_two_classes(manifest: dict) -> None:
    classes = manifest["classes"]
    classes[0], classes[1] = classes[1], classes[0]


def _edit_a_count(manifest: dict) -> None:
    manifest["splits"]["train"]["count"] += 1


def _rename_a_class(manifest: dict) -> None:
    manifest["names"][0] = "something else"


def _edit_the_statistics(manifest: dict) -> None:
    manifest["stats"]["channel_mean"][0] += 1.0


@pytest.mark.parametrize(
    "edit", [_swap_two_classes, _edit_a_count, _rename_a_class, _edit_the_statistics]
)
def test_an_edited_manifest_is_refused_everywhere_and_rebuilt_by_prepare(
    pristine: Path, cache_copy: Path, synth_sources: dict[str, Path], tmp_path: Path, capsys, edit
) -> None:
    manifest_path = cache_copy / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    edit(manifest)
    manifest_path.write_text(json.dumps(manifest, indent=1))
    with pytest.raises(CacheError, match=r"manifest\.json: was edited after prepare.*--force"):
        load_cache(cache_copy)
    assert main(["info", str(cache_copy), "--verify"]) == 1
    assert "was edited after prepare" in capsys.readouterr().err
    argv = ["train", "--data", str(cache_copy), "--out", str(tmp_path / "run"), "-q"]
    assert main([*argv, "--set", "train.epochs=1"]) == 1
    assert "was edited after prepare" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
    result = prepare(synth_sources["folder"], cache_copy, progress=False)
    assert result.rebuilt and "was edited after prepare" in result.reason
    assert load_cache(cache_copy).manifest["classes"] == load_cache(pristine).manifest["classes"]


def test_the_digest_is_the_sha256_of_the_manifest_without_it(pristine: Path) -> None:
    manifest = json.loads((pristine / "manifest.json").read_text())
    digest = manifest.pop("digest")
    blob = json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()
    assert digest == hashlib.sha256(blob).hexdigest()


def test_a_cache_without_a_digest_is_named_as_older(
    cache_copy: Path, synth_sources: dict[str, Path]
) -> None:
    manifest_path = cache_copy / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    del manifest["digest"]
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(CacheError, match=r"no digest .*older tinycnn.*--force"):
        load_cache(cache_copy)
    result = prepare(synth_sources["folder"], cache_copy, progress=False)
    assert result.rebuilt and "no digest" in result.reason
    load_cache(cache_copy)


EXTRA = ["n90000001", "n90000002"]  # appended classes, as in a 202-line wnids.txt seen on GitHub


@pytest.mark.parametrize(
    ("kept", "extra", "hint"),
    [
        (200, EXTRA, True),  # the 202-line wnids.txt: --classes official is the fix
        (199, EXTRA, False),  # an official class missing: --classes official would fail
        (200, [], False),  # the standard dataset: nothing to say
        (10, [], False),  # the mini subset: no class to drop
    ],
)
def test_a_copy_with_extra_classes_is_told_to_use_classes_official(
    kept: int, extra: list[str], hint: bool
) -> None:
    from tinycnn.data.cache import standard_difference
    from tinycnn.data.layout import official_wnids

    counts = {"train": 500 * (kept + len(extra)), "val": 50 * (kept + len(extra)), "test": 10_000}
    manifest = {
        "classes": official_wnids()[:kept] + extra,
        "splits": {name: {"count": count} for name, count in counts.items()},
    }
    text = standard_difference(manifest)
    assert (text == "") is (kept == 200 and not extra)
    advice = "to keep only its 200 classes (dropping the 2 others), prepare again with --classes"
    assert (f"{advice} official" in text) is hint, text


def test_opening_a_cache_checks_its_labels_and_other_small_files(cache_copy: Path) -> None:
    # Labels shifted by one class, same size: evaluate, ensemble, predict and report open the
    # cache this way (load_cache), and would score against the wrong classes.
    labels = np.load(cache_copy / "val_labels.npy")
    np.save(cache_copy / "val_labels.npy", ((labels + 1) % labels.max()).astype(labels.dtype))
    with pytest.raises(CacheError) as info:
        load_cache(cache_copy)
    assert str(cache_copy / "val_labels.npy") in str(info.value) and "damaged" in str(info.value)


def test_info_checks_the_small_files_without_verify(cache_copy: Path, capsys) -> None:
    # A flipped label (or file name) is found by plain info too, in milliseconds; the image
    # arrays' pixels only by --verify (info opens no split).
    _zero_pixels(cache_copy)
    assert main(["info", str(cache_copy)]) == 0
    name = _flipped_text_byte(cache_copy)
    capsys.readouterr()
    assert main(["info", str(cache_copy)]) == 1
    err = capsys.readouterr().err.strip()
    assert f"{cache_copy / name}: content differs" in err and "\n" not in err
    # --verify checks every file and names each damaged one, the pixels' too.
    assert main(["info", str(cache_copy), "--verify"]) == 1
    err = capsys.readouterr().err.strip()
    assert f"{cache_copy / name}, {cache_copy / 'train_images.npy'}: content differs" in err, err


def test_a_splits_images_are_checked_when_first_read(cache_copy: Path) -> None:
    images = np.load(cache_copy / "val_images.npy", mmap_mode="r+")
    images[3, 10, 10, 1] ^= 0x01  # one bit of one pixel
    images.flush()
    cache = load_cache(cache_copy)
    assert cache.verified == set()
    assert cache.split("train").images.shape[0] > 0 and cache.verified == {"train"}
    val = cache.split("val")  # opened; its labels and files were checked with the cache
    assert len(val) == len(val.labels) > 3 and cache.verified == {"train"}
    with pytest.raises(CacheError, match=r"val_images\.npy: content differs .*--force"):
        val.images[0]
    assert "val" not in cache.verified
    with pytest.raises(CacheError, match=r"val_images\.npy: content differs"):
        cache.split("val").images[0]  # still refused: a failed check is not remembered as passed


def test_a_split_is_read_once_for_its_check(pristine: Path, monkeypatch) -> None:
    read = []
    real = cache_module.checksum_files

    def counting(paths, checksums=None):
        read.extend(p.name for p in paths if p.name.endswith("_images.npy"))
        return real(paths, checksums)

    monkeypatch.setattr(cache_module, "checksum_files", counting)
    cache = load_cache(pristine)
    train = cache.split("train")
    assert len(train.labels) == len(train) > 0 and read == []  # labels alone: no pixels read
    for _ in range(3):
        cache.split("val").images[0]
    cache_module.verify_cache(cache, splits=["train"])  # as training does before it opens them
    train.images[0]
    cache.split("train").images[1]
    assert read == ["val_images.npy", "train_images.npy"]
