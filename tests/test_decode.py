"""data/decode.py: images of the wrong size, resizing by centre crop, boxes fitted to another size,
and the failure reasons of unreadable images."""

from __future__ import annotations

import io

import pytest
from PIL import UnidentifiedImageError

from tinycnn.data.decode import _reason


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
