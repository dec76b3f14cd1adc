"""Image decoding shared by every dataset: one place that turns a file into RGB uint8 HWC."""

from __future__ import annotations

import os

import cv2
import numpy as np


class BadSampleError(ValueError):
    """A sample that cannot be used: missing or undecodable file, label out of range, malformed row.

    The message is one line that names the file or annotation row, so a user can find it.
    """


def read_rgb(path: str | os.PathLike) -> np.ndarray:
    """Decode an image file to an RGB uint8 array of shape (H, W, 3).

    OpenCV decodes to BGR; POSTER's RAF-DB loader forgot the conversion and trained on BGR
    (data.md §8), so every dataset goes through this one function. Grey images become 3-channel.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise BadSampleError(f"image file not found: {path}")
    buffer = np.fromfile(path, dtype=np.uint8)  # np.fromfile + imdecode copes with non-ASCII (Hangul) paths
    if _is_truncated_jpeg(buffer):
        # libjpeg pads a truncated file with grey and returns it; a silent half-grey face is a bad sample.
        raise BadSampleError(f"truncated JPEG (no end-of-image marker): {path}")
    image = cv2.imdecode(buffer, cv2.IMREAD_COLOR) if buffer.size else None
    if image is None:
        raise BadSampleError(f"cannot decode image (corrupt or truncated?): {path}")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


_JPEG_START = b"\xff\xd8"
_JPEG_END = b"\xff\xd9"


def _is_truncated_jpeg(buffer: np.ndarray) -> bool:
    head = buffer[:2].tobytes()
    if head != _JPEG_START:
        return False
    # Some encoders append padding after the end-of-image marker, so look for it near the end.
    tail = buffer[-64:].tobytes()
    return _JPEG_END not in tail
