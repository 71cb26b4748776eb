"""The common class-per-folder layout, so a user's own images work like Tiny ImageNet::

    ROOT/train/<class>/*.jpg|jpeg|png|bmp|gif|webp|tif|tiff   (any depth below <class>)
    ROOT/val/<class>/...                                      (the same class names)
    ROOT/test/...                                             (optional, unlabelled)

Class index = position in the sorted folder names (the manifest records the order; the names are
the folder names). Images of any size are centre-cropped to a square and resized by prepare.
There are no boxes. Hidden files and folders (``.DS_Store``, ``.ipynb_checkpoints``) are ignored.
"""

from __future__ import annotations

import numpy as np

from tinycnn.data.layout import Layout, Problems, SplitLayout, keep_classes, natural_key
from tinycnn.data.sources import Source
from tinycnn.errors import DataError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")


def is_folder_layout(names: list[str]) -> bool:
    """True for a tree without the official files that has train/<class>/<file>."""
    official = {"wnids.txt", "val/val_annotations.txt"}
    if any(n in official or n.endswith("_boxes.txt") for n in names):
        return False
    return any(n.startswith("train/") and n.count("/") >= 2 for n in names)


def read_folder_layout(source: Source, classes: list[str] | None = None) -> Layout:
    """List the splits of a class-per-folder tree; DataError listing every problem found.

    Args:
        source: the dataset folder or archive (holding train/ and val/).
        classes: keep only these class folders, in this order (None: all, sorted by name).
    """
    problems = Problems(str(source.path))
    labelled: dict[str, dict[str, list[str]]] = {"train": {}, "val": {}}
    test: list[str] = []
    for rel in source.names():
        parts = rel.split("/")
        if parts[0] not in ("train", "val", "test") or any(p.startswith(".") for p in parts):
            continue
        if not rel.lower().endswith(IMAGE_SUFFIXES):
            continue  # notes, csv files, thumbnails databases
        if parts[0] == "test":
            test.append(rel)
        elif len(parts) < 3:
            problems.add(
                f"{source.display(rel)}: an image directly in {parts[0]}/; each image goes in "
                f"{parts[0]}/CLASS/ (its class folder)"
            )
        else:
            labelled[parts[0]].setdefault(parts[1], []).append(rel)
    found = sorted(labelled["train"])
    if not found:
        raise DataError(
            f"{source.display('train')}: no class folder holds images (expected "
            "train/CLASS/IMAGE.jpg for each class)"
        )
    if not labelled["val"]:
        problems.add(
            f"{source.display('val')}: missing or without images (expected val/CLASS/IMAGE.jpg "
            "with the class folders of train/)"
        )
    for name in sorted(set(labelled["val"]) - set(found)):
        problems.add(
            f"{source.display('val/' + name)}: class {name!r} is in val/ but has no images in "
            f"train/ (add train/{name}/ or remove it from val/)"
        )
    kept = keep_classes(found, classes, source.display("train"), problems)
    if labelled["val"] and not any(c in labelled["val"] for c in kept):
        problems.add(f"{source.display('val')}: no images of the classes kept by --classes")
    problems.check()
    notes: dict = {"classes_from": "sorted folder names"}
    if classes is not None:
        dropped = sorted(set(found) - set(kept))
        notes["dropped_classes"] = dropped
        notes["dropped_images"] = {
            split: sum(len(labelled[split].get(c, [])) for c in dropped) for split in labelled
        }
    splits = {split: _labelled_split(split, labelled[split], kept) for split in labelled}
    if test:
        splits["test"] = SplitLayout("test", sorted(test, key=natural_key), None, None)
    return Layout(kept, list(kept), splits, "folders", notes)


def _labelled_split(split: str, by_class: dict[str, list[str]], classes: list[str]) -> SplitLayout:
    files: list[str] = []
    labels: list[int] = []
    for index, name in enumerate(classes):
        images = sorted(by_class.get(name, []), key=natural_key)
        files.extend(images)
        labels.extend([index] * len(images))
    return SplitLayout(split, files, np.asarray(labels, np.int16), None)
