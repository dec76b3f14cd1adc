"""Finding faces in photos for ``fer-lightning predict``, with detectors whose model files ship in a package.

The default is OpenCV's Viola–Jones Haar cascade for frontal faces (``haarcascade_frontalface_default.xml``
inside ``opencv-python-headless`` 4.x, ``cv2.data``): nothing is downloaded, it runs on any CPU, and it
finds upright frontal faces; profiles, strong tilt and small faces are missed (docs/predict.md). A user
can pass another model file: an OpenCV cascade ``.xml``, or a YuNet ``.onnx`` (OpenCV's
``FaceDetectorYN``, far better on turned and small faces).
"""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np

from fer_lightning.errors import ConfigurationError

DEFAULT_CASCADE = "haarcascade_frontalface_default.xml"

#: Pictures are searched at this longest side at most: a cascade's time grows with the pixel count and
#: faces big enough for expression recognition survive the downscale.
DETECTION_SIDE = 640

Box = tuple[float, float, float, float]


def bundled_cascade_path(name: str = DEFAULT_CASCADE) -> Path:
    """The cascade file shipped inside opencv-python-headless (``cv2.data.haarcascades``)."""
    folder = getattr(getattr(cv2, "data", None), "haarcascades", None)
    if folder is None or not hasattr(cv2, "CascadeClassifier"):
        raise ConfigurationError(
            f"OpenCV {cv2.__version__} ships no Haar cascades (opencv-python-headless 5 dropped them); "
            "install the pinned 4.x (pip install -c constraints.txt -e .) or pass --detector-model FILE.onnx "
            "(a YuNet face detector)"
        )
    return Path(folder) / name


class FaceDetector:
    """Face boxes (x0, y0, x1, y1) in pixels of an RGB uint8 picture, ordered left to right.

    Args:
        model: a cascade ``.xml`` or a YuNet ``.onnx``; ``None``: the bundled frontal-face cascade.
        min_face_fraction: faces smaller than this fraction of the picture's shorter side are ignored.
        score_threshold: YuNet's confidence threshold.
    """

    def __init__(
        self,
        model: str | os.PathLike | None = None,
        min_face_fraction: float = 0.05,
        score_threshold: float = 0.7,
    ) -> None:
        path = Path(model) if model is not None else bundled_cascade_path()
        if not path.is_file():
            raise ConfigurationError(
                f"face detector model {path} not found; pass an existing .xml or .onnx file"
            )
        self.path = path
        self.min_face_fraction = min_face_fraction
        self.score_threshold = score_threshold
        suffix = path.suffix.lower()
        if suffix == ".xml":
            self._cascade = cv2.CascadeClassifier(str(path))
            if self._cascade.empty():
                raise ConfigurationError(f"face detector model {path}: not an OpenCV cascade file")
            self._yunet = None
        elif suffix == ".onnx":
            try:
                self._yunet = cv2.FaceDetectorYN.create(str(path), "", (320, 320), score_threshold)
            except cv2.error as error:
                raise ConfigurationError(
                    f"face detector model {path}: not a YuNet ONNX model ({error})"
                ) from error
            self._cascade = None
        else:
            raise ConfigurationError(
                f"face detector model {path}: expected an OpenCV cascade (.xml) or a YuNet model (.onnx)"
            )

    def __call__(self, image: np.ndarray) -> list[Box]:
        height, width = image.shape[:2]
        scale = min(1.0, DETECTION_SIDE / max(height, width))
        small = (
            image
            if scale == 1.0
            else cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        )
        min_side = max(12, round(self.min_face_fraction * min(small.shape[:2])))
        if self._cascade is not None:
            grey = cv2.equalizeHist(cv2.cvtColor(small, cv2.COLOR_RGB2GRAY))
            found = self._cascade.detectMultiScale(
                grey, scaleFactor=1.1, minNeighbors=5, minSize=(min_side, min_side)
            )
            boxes = [(x, y, x + w, y + h) for x, y, w, h in np.asarray(found).reshape(-1, 4)]
        else:
            self._yunet.setInputSize((small.shape[1], small.shape[0]))
            try:
                _, found = self._yunet.detect(cv2.cvtColor(small, cv2.COLOR_RGB2BGR))
            except cv2.error as error:  # any ONNX file loads; a non-YuNet one fails here
                raise ConfigurationError(
                    f"face detector model {self.path}: not a YuNet face detector ({str(error).strip()[:120]})"
                ) from error
            rows = np.zeros((0, 15)) if found is None else found
            boxes = [(x, y, x + w, y + h) for x, y, w, h in rows[:, :4] if min(w, h) >= min_side]
        return sorted(
            (tuple(float(v) / scale for v in box) for box in boxes), key=lambda box: (box[0], box[1])
        )
