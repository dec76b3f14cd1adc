"""What a trained model expects of a face, as plain values: written into checkpoints and next to exports.

A model is only right on pixels prepared the way its evaluation split was: the same face framing, colour,
channel order, resize and normalisation. :class:`EvalPreprocessing` records exactly that (from the
datamodule that trained the model, :meth:`~fer_lightning.data.base.FERDataModule.eval_preprocessing`)
and applies it with the datamodules' own functions: :func:`~fer_lightning.data.io.cut_face` for the face
box and :func:`~fer_lightning.data.transforms.build_transform` for resize + normalise.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields

import cv2
import numpy as np
import torch

from fer_lightning.data.io import cut_face
from fer_lightning.data.transforms import IMAGENET_MEAN, IMAGENET_STD, build_transform
from fer_lightning.errors import WeightsError

#: Bumped when a field changes meaning; readers refuse versions they do not know.
PREPROCESSING_VERSION = 1

#: Fixed by the pipeline, recorded so that a user of an exported model (ONNX Runtime, another language)
#: can reproduce it without reading our code.
PIPELINE_FACTS = {
    "channel_order": "RGB",
    "layout": "NCHW",
    "dtype": "float32",
    "resize_interpolation": "bilinear",
    "pixel_scale": 255.0,
    "normalisation": "(pixel / pixel_scale - mean) / std, per channel",
}


@dataclass(frozen=True)
class EvalPreprocessing:
    """The evaluation preprocessing of one trained model.

    Args:
        img_size: side of the square network input.
        mean, std: per-channel normalisation of RGB values scaled to [0, 1].
        crop_margin: a face box found by a detector is grown by this fraction of its side on every side
            (and made square) before it is cut out, so that the face is framed as in the training images.
        crop_size: the cut face is first resized to this side (the size of the training crops), then to
            ``img_size`` by the transform; ``None`` resizes once.
        grayscale: the training images were grey (FER2013): colour pictures are turned grey first.
        upsample_to: the face is then enlarged to this side with bicubic interpolation, as FER2013's
            ``upsample_to`` enlarges its 48-pixel faces; ``None``: no such step.
    """

    img_size: int
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    crop_margin: float = 0.0
    crop_size: int | None = None
    grayscale: bool = False
    upsample_to: int | None = None

    def to_dict(self) -> dict:
        """Plain values only (readable by ``torch.load(weights_only=True)`` and JSON)."""
        values = asdict(self)
        values["mean"], values["std"] = [float(v) for v in self.mean], [float(v) for v in self.std]
        return {"version": PREPROCESSING_VERSION, **values, **PIPELINE_FACTS}

    @classmethod
    def from_dict(cls, values: Mapping, source: str = "checkpoint") -> EvalPreprocessing:
        """The inverse of :meth:`to_dict`; a one-line :class:`WeightsError` naming ``source`` if it does not fit."""
        version = values.get("version")
        if version != PREPROCESSING_VERSION:
            raise WeightsError(
                f"{source}: preprocessing metadata version {version!r}, this fer-lightning reads version "
                f"{PREPROCESSING_VERSION}; use the fer-lightning release that wrote it"
            )
        known = {field.name for field in fields(cls)}
        try:
            kwargs = {name: values[name] for name in known if name in values}
            return cls(
                **{
                    **kwargs,
                    "mean": tuple(float(v) for v in kwargs.get("mean", IMAGENET_MEAN)),
                    "std": tuple(float(v) for v in kwargs.get("std", IMAGENET_STD)),
                }
            )
        except (TypeError, ValueError) as error:
            raise WeightsError(f"{source}: malformed preprocessing metadata ({error})") from error

    def with_margin(self, crop_margin: float) -> EvalPreprocessing:
        return EvalPreprocessing(**{**asdict(self), "crop_margin": float(crop_margin)})

    def transform(self):
        """The datamodules' evaluation transform: resize to ``img_size``, normalise, to a CHW tensor."""
        return build_transform("none", self.img_size, train=False, mean=self.mean, std=self.std)

    def face_pixels(self, image: np.ndarray, box: Sequence[float] | None = None) -> np.ndarray:
        """RGB uint8 pixels of the face in ``image`` (RGB uint8 HWC): the ``box`` (x0, y0, x1, y1) grown by
        ``crop_margin`` and cut as the datasets cut face boxes, or the whole image (an already cropped
        face) when ``box`` is None; then resized to ``crop_size`` and made grey if the training images were."""
        if box is None:
            height, width = image.shape[:2]
            face = cut_face(image, (0, 0, width, height), 0.0, self.crop_size, square=False)
        else:
            face = cut_face(image, tuple(float(v) for v in box), self.crop_margin, self.crop_size)
        if self.grayscale:
            face = cv2.cvtColor(cv2.cvtColor(face, cv2.COLOR_RGB2GRAY), cv2.COLOR_GRAY2RGB)
        if self.upsample_to is not None and face.shape[:2] != (self.upsample_to, self.upsample_to):
            face = cv2.resize(face, (self.upsample_to, self.upsample_to), interpolation=cv2.INTER_CUBIC)
        return face


class FaceTensors:
    """``EvalPreprocessing`` as a callable: (image, box or None) → float32 tensor (3, img_size, img_size).

    Builds the albumentations pipeline once; picklable settings, so a worker process can rebuild it.
    """

    def __init__(self, preprocessing: EvalPreprocessing) -> None:
        self.preprocessing = preprocessing
        self._transform = preprocessing.transform()

    def __call__(self, image: np.ndarray, box: Sequence[float] | None = None) -> torch.Tensor:
        face = self.preprocessing.face_pixels(image, box)
        return self._transform(image=face)["image"]


#: How far a detector's face box is grown for a model trained on a dataset of ready-cut faces (RAF-DB's
#: aligned images, FER2013, AffectNet's image folders): those crops show the whole head with some
#: background, where a frontal-face detector's box ends at the brow and the chin.
PRECROPPED_FACE_MARGIN = 0.2


def eval_preprocessing_of(datamodule) -> EvalPreprocessing:
    """The evaluation preprocessing of a :class:`~fer_lightning.data.base.FERDataModule`, as its evaluation
    splits apply it.

    Datasets cut from full pictures with face boxes (AffectNet's CSV release, AI-Hub; they have
    ``crop_margin``/``crop_size`` options, and whose training samples are face boxes once set up) record
    their own margin and crop size. FER2013's faces are grey
    and 48 pixels wide, then enlarged to its ``upsample_to`` if set.
    """
    from fer_lightning.data.fer2013 import IMAGE_SIDE, FER2013DataModule  # fer2013 imports base
    from fer_lightning.data.io import FaceCrop

    options = datamodule.hparams
    cuts_boxes = "crop_margin" in options
    train = getattr(datamodule, "tables", {}).get("train")
    if cuts_boxes and train is not None and len(train):
        # AffectNet has the options for its CSV release, but its npy release ships ready-cut faces.
        cuts_boxes = isinstance(train.sources[0], FaceCrop)
    grey_faces = isinstance(datamodule, FER2013DataModule)
    return EvalPreprocessing(
        img_size=int(options["img_size"]),
        mean=tuple(float(v) for v in options["mean"]),
        std=tuple(float(v) for v in options["std"]),
        crop_margin=float(options["crop_margin"]) if cuts_boxes else PRECROPPED_FACE_MARGIN,
        crop_size=options.get("crop_size") if cuts_boxes else (IMAGE_SIDE if grey_faces else None),
        grayscale=grey_faces,
        upsample_to=options.get("upsample_to") if grey_faces else None,
    )
