"""Image decoding: RGB channel order, clear errors for missing, corrupt and truncated files."""

import cv2
import numpy as np
import pytest

from fer_lightning.data.io import BadSampleError, read_rgb


def _write_red_patch(path):
    rgb = np.zeros((40, 40, 3), np.uint8)
    rgb[10:30, 10:30] = (255, 0, 0)
    cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 95])


def test_red_stays_red(tmp_path):
    """OpenCV decodes BGR; POSTER's RAF-DB loader fed BGR to the model. Ours must return RGB."""
    path = tmp_path / "red.jpg"
    _write_red_patch(path)
    image = read_rgb(path)
    assert image.shape == (40, 40, 3) and image.dtype == np.uint8
    red, green, blue = image[20, 20].astype(int)
    assert red > 200 and green < 50 and blue < 50


def test_non_ascii_path(tmp_path):
    path = tmp_path / "기쁨 & 얼굴.jpg"
    _write_red_patch(path)
    assert read_rgb(path)[20, 20, 0] > 200


def test_missing_file(tmp_path):
    with pytest.raises(BadSampleError, match=r"image file not found: .*missing\.jpg"):
        read_rgb(tmp_path / "missing.jpg")


def test_corrupt_file(tmp_path):
    path = tmp_path / "corrupt.jpg"
    path.write_bytes(b"this is not an image")
    with pytest.raises(BadSampleError, match=r"cannot decode image .*corrupt\.jpg"):
        read_rgb(path)


def test_truncated_jpeg(tmp_path):
    path = tmp_path / "truncated.jpg"
    _write_red_patch(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(BadSampleError, match=r"truncated JPEG .*truncated\.jpg"):
        read_rgb(path)
