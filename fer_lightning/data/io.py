"""File access shared by every dataset: decoding to RGB, face-box crops (cached), NFC-keyed listings.

One place turns a file into RGB uint8 HWC, one place crops a face box, and one place finds files whose
names may be stored in another Unicode normalisation than the annotations use.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import unicodedata
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from fer_lightning.errors import FERLightningError


class BadSampleError(FERLightningError, ValueError):
    """A sample that cannot be used: missing or undecodable file, label out of range, malformed row.

    The message is one line that names the file or annotation row, so a user can find it. ``reason`` is
    a short category (``"missing image"``, ``"corrupt image"``, …) under which skipped samples are counted.
    """

    def __init__(self, message: str, reason: str = "bad sample") -> None:
        super().__init__(message)
        self.reason = reason

    def __reduce__(self):
        # DataLoader workers pickle exceptions to the main process; keep the reason across that trip.
        return type(self), (str(self), self.reason)


#: File name endings the dataset readers take for images when they list a folder (compared lower-case).
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def read_rgb(path: str | os.PathLike) -> np.ndarray:
    """Decode an image file to an RGB uint8 array of shape (H, W, 3).

    OpenCV decodes to BGR; POSTER's RAF-DB loader forgot the conversion and trained on BGR, so
    every dataset goes through this one function (docs/datasets.md#shared-options). Grey images become
    3-channel.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise BadSampleError(f"image file not found: {path}", reason="missing image")
    buffer = np.fromfile(path, dtype=np.uint8)  # np.fromfile + imdecode copes with non-ASCII (Hangul) paths
    if _is_truncated_jpeg(buffer):
        # libjpeg pads a truncated file with grey and returns it; a silent half-grey face is a bad sample.
        raise BadSampleError(f"truncated JPEG (no end-of-image marker): {path}", reason="truncated image")
    image = cv2.imdecode(buffer, cv2.IMREAD_COLOR) if buffer.size else None
    if image is None:
        raise BadSampleError(f"cannot decode image (corrupt or truncated?): {path}", reason="corrupt image")
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


# ---------------------------------------------------------------------------------------------------
# Face boxes
# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FaceCrop:
    """A sample that is a face box inside a larger picture: ``box`` = (x_min, y_min, x_max, y_max) pixels."""

    path: Path
    box: tuple[float, float, float, float]

    def __str__(self) -> str:
        return f"{self.path} box {tuple(round(v, 1) for v in self.box)}"


def box_is_valid(box: tuple[float, float, float, float]) -> bool:
    """Finite coordinates and a positive width and height."""
    x_min, y_min, x_max, y_max = box
    return bool(np.all(np.isfinite(box))) and x_max > x_min and y_max > y_min


def crop_region(
    box: tuple[float, float, float, float], margin: float, square: bool = True
) -> tuple[int, int, int, int]:
    """Integer region (x0, y0, x1, y1) to cut: ``box`` grown by ``margin`` × its side on every side.

    With ``square`` the shorter side is extended to the longer one about the centre, so resizing the crop
    to a square network input does not stretch the face.
    """
    x_min, y_min, x_max, y_max = box
    width, height = x_max - x_min, y_max - y_min
    width, height = width * (1 + 2 * margin), height * (1 + 2 * margin)
    if square:
        width = height = max(width, height)
    centre_x, centre_y = (x_min + x_max) / 2, (y_min + y_max) / 2
    x0, y0 = round(centre_x - width / 2), round(centre_y - height / 2)
    return x0, y0, x0 + max(1, round(width)), y0 + max(1, round(height))


def crop_face(
    image: np.ndarray, box: tuple[float, float, float, float], margin: float = 0.0, square: bool = True
) -> np.ndarray:
    """Cut the region of :func:`crop_region` out of ``image``; parts outside the picture are black.

    Padding instead of clipping keeps the face centred and the crop's aspect as asked, however close the
    box is to the border. Raises :class:`BadSampleError` if the box does not overlap the picture.
    """
    x0, y0, x1, y1 = crop_region(box, margin, square)
    height, width = image.shape[:2]
    if x1 <= 0 or y1 <= 0 or x0 >= width or y0 >= height:
        raise BadSampleError(
            f"face box {box} lies outside the {width}×{height} picture", reason="face box outside image"
        )
    inside = image[max(y0, 0) : min(y1, height), max(x0, 0) : min(x1, width)]
    pad = (max(-y0, 0), max(y1 - height, 0), max(-x0, 0), max(x1 - width, 0))
    if any(pad):
        inside = cv2.copyMakeBorder(inside, *pad, cv2.BORDER_CONSTANT, value=(0, 0, 0))
    return np.ascontiguousarray(inside)


def cut_face(
    image: np.ndarray,
    box: tuple[float, float, float, float],
    margin: float = 0.0,
    size: int | None = None,
    square: bool = True,
) -> np.ndarray:
    """:func:`crop_face`, then resized to ``size`` × ``size`` if given: how a training sample is cut from a
    picture with a face box, and how ``fer-lightning predict`` cuts a detected face."""
    face = crop_face(image, box, margin, square)
    if size is not None:
        interpolation = cv2.INTER_AREA if max(face.shape[:2]) > size else cv2.INTER_LINEAR
        face = cv2.resize(face, (size, size), interpolation=interpolation)
    return face


#: Quality of cached crops: visually lossless, and JPEG decodes faster than PNG in the data loaders.
CROP_CACHE_JPEG_QUALITY = 95


def read_face_crop(
    crop: FaceCrop,
    margin: float = 0.0,
    size: int | None = None,
    cache_dir: str | os.PathLike | None = None,
    square: bool = True,
) -> np.ndarray:
    """RGB pixels of ``crop`` grown by ``margin``, resized to ``size`` × ``size`` if given.

    AI-Hub pictures are 2–4k-pixel full frames with one face; decoding them on every epoch is what makes
    such loaders slow. With ``cache_dir`` the crop is written once, as a ``size``-pixel JPEG keyed by
    (file path, size and modification time, box, margin, square, size), and later epochs decode only the
    small crop. Writes are atomic (temporary file + rename), so concurrent DataLoader workers and DDP ranks
    can share one cache; a cache that cannot be written is ignored.
    """
    cache_path = None
    if cache_dir is not None:
        try:
            stat = os.stat(crop.path)
        except OSError:
            stat = None
        if stat is not None:
            key = "|".join(
                map(
                    str,
                    (
                        unicodedata.normalize("NFC", os.fspath(crop.path)),
                        stat.st_size,
                        stat.st_mtime_ns,
                        tuple(round(float(v), 3) for v in crop.box),
                        margin,
                        square,
                        size,
                    ),
                )
            )
            digest = hashlib.sha1(key.encode("utf-8")).hexdigest()
            cache_path = Path(cache_dir) / digest[:2] / f"{digest}.jpg"
            if cache_path.is_file():
                try:
                    return read_rgb(cache_path)
                except BadSampleError:
                    pass  # a damaged cache entry is rebuilt below
    try:
        face = cut_face(read_rgb(crop.path), crop.box, margin, size, square)
    except BadSampleError as error:
        # Name the annotation's box too; the decoder only knows the file.
        raise BadSampleError(f"{error} (face box {crop.box})", reason=error.reason) from error
    if cache_path is not None:
        _write_cached_crop(cache_path, face)
    return face


@dataclass(frozen=True)
class FaceCropper:
    """:func:`read_face_crop` with fixed settings: a small picklable callable for DataLoader workers."""

    margin: float = 0.0
    size: int | None = None
    cache_dir: Path | None = None
    square: bool = True

    def __call__(self, crop: FaceCrop) -> np.ndarray:
        return read_face_crop(crop, self.margin, self.size, self.cache_dir, self.square)


def _write_cached_crop(path: Path, rgb: np.ndarray) -> None:
    ok, encoded = cv2.imencode(
        ".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, CROP_CACHE_JPEG_QUALITY]
    )
    if not ok:
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, scratch = tempfile.mkstemp(prefix=".crop-", suffix=".jpg", dir=path.parent)
        with os.fdopen(handle, "wb") as file:
            file.write(encoded.tobytes())
        os.replace(scratch, path)
    except OSError:
        pass  # read-only or full disk: training goes on, uncached


# ---------------------------------------------------------------------------------------------------
# Finding files whatever their Unicode normalisation
# ---------------------------------------------------------------------------------------------------


def nfc(text: str) -> str:
    """NFC form of ``text``: Hangul names unpacked on macOS are NFD and compare unequal to the JSON's NFC."""
    return text if text.isascii() else unicodedata.normalize("NFC", text)


class DirectoryIndex:
    """Looks files up through cached directory listings keyed by NFC names.

    Never globs: AI-Hub folder names contain ``[`` and ``]``, which ``glob`` treats as a character class,
    silently matching nothing. One ``os.scandir`` per folder also beats one ``stat`` per annotated file on
    datasets with hundreds of thousands of images. Folders are keyed by their path string: building
    ``Path`` objects per lookup cost more than the lookups on AffectNet's 287k rows.
    """

    def __init__(self) -> None:
        self._listings: dict[str, dict[str, os.DirEntry]] = {}
        self._files: dict[str, dict[str, Path]] = {}
        self._subfolders: dict[str, dict[str, Path]] = {}

    def listing(self, folder: str | os.PathLike) -> dict[str, os.DirEntry]:
        """NFC name → directory entry of everything directly in ``folder`` (empty if it does not exist)."""
        key = os.fspath(folder)
        if key not in self._listings:
            try:
                with os.scandir(key) as entries:
                    self._listings[key] = {nfc(entry.name): entry for entry in entries}
            except (FileNotFoundError, NotADirectoryError):
                self._listings[key] = {}
        return self._listings[key]

    def subfolders(self, folder: str | os.PathLike) -> dict[str, Path]:
        """NFC name → path of the folders directly in ``folder`` (built once per folder)."""
        key = os.fspath(folder)
        if key not in self._subfolders:
            entries = self.listing(key).items()
            self._subfolders[key] = {name: Path(entry.path) for name, entry in entries if entry.is_dir()}
        return self._subfolders[key]

    def files(self, folder: str | os.PathLike) -> dict[str, Path]:
        """NFC name → path of the files directly in ``folder`` (built once per folder)."""
        key = os.fspath(folder)
        if key not in self._files:
            entries = self.listing(key).items()
            self._files[key] = {name: Path(entry.path) for name, entry in entries if entry.is_file()}
        return self._files[key]

    def find(self, root: str | os.PathLike, relative: str) -> Path | None:
        """The file at ``root/relative`` (``/``-separated), matching each part by its NFC form; else None."""
        current = os.fspath(root)
        parts = [part for part in relative.replace("\\", "/").split("/") if part not in ("", ".")]
        for position, part in enumerate(parts):
            entry = self.listing(current).get(nfc(part))
            if entry is None:
                return None
            is_last = position == len(parts) - 1
            if (is_last and not entry.is_file()) or (not is_last and not entry.is_dir()):
                return None
            current = entry.path
        return Path(current) if parts else None
