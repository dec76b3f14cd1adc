"""How often predict's face detector finds a face, on photographs shipped inside scikit-image.

    python benchmarks/face_detector.py [--detector-model FILE]

``skimage.data.lfw_subset()``: 100 face crops from Labeled Faces in the Wild and 100 patches without a
face, 25 × 25 px grey. Each is enlarged to 100 px (bicubic) and padded by half its side with its own
border pixels, so that the face sits in a picture with some surround as in a photo, then searched
with :class:`fer_lightning.face_detection.FaceDetector`. Also the time per 512 × 512 photograph
(``skimage.data.astronaut``).
"""

from __future__ import annotations

import argparse
import statistics
import time

import cv2
import numpy as np
from skimage import data

from fer_lightning.face_detection import FaceDetector

SIDE = 100


def as_photo(patch: np.ndarray) -> np.ndarray:
    grey = cv2.resize(np.round(patch * 255).astype(np.uint8), (SIDE, SIDE), interpolation=cv2.INTER_CUBIC)
    pad = SIDE // 2
    return cv2.cvtColor(
        cv2.copyMakeBorder(grey, pad, pad, pad, pad, cv2.BORDER_REPLICATE), cv2.COLOR_GRAY2RGB
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--detector-model", help="a cascade .xml or YuNet .onnx (default: the bundled cascade)"
    )
    args = parser.parse_args()
    detector = FaceDetector(args.detector_model)
    patches = data.lfw_subset()
    found = np.array([len(detector(as_photo(patch))) > 0 for patch in patches])
    faces, others = found[:100], found[100:]
    astronaut = data.astronaut()
    detector(astronaut)
    times = []
    for _ in range(10):
        start = time.perf_counter()
        detector(astronaut)
        times.append(time.perf_counter() - start)
    print(f"detector: {detector.path.name}")
    print(
        f"LFW faces found: {faces.sum()} / {len(faces)}; non-face patches with a detection: {others.sum()} / {len(others)}"
    )
    print(f"time per 512x512 photograph: {1000 * statistics.median(times):.1f} ms (median of 10)")


if __name__ == "__main__":
    main()
