"""Use a trained model on photos, folders and videos: :class:`Predictor` (Python) and ``fer-lightning predict``.

A checkpoint written by ``fer-lightning fit`` carries what is needed (model class and options, class
names, the evaluation preprocessing; :mod:`fer_lightning.callbacks.inference_metadata`), so nothing else
is asked for. Checkpoints are read with ``torch.load(weights_only=True)``: a file someone sent you cannot
run code when it is opened, and only model classes of this package are built from it. An exported
``.onnx`` (``fer-lightning export``) runs through ONNX Runtime with the JSON written next to it.

Faces are found with :class:`~fer_lightning.face_detection.FaceDetector` (or taken as the whole picture
with ``faces="none"``, for already cropped faces like the datasets'), cut and normalised exactly as the
evaluation split of the training data (:class:`~fer_lightning.data.preprocessing.EvalPreprocessing`),
and classified in batches. The result is one row per face (py-feat's layout): the input, the video
frame, the face index, its box, one probability column per class, the predicted class and a note.
"""

from __future__ import annotations

import importlib
import json
import math
import os
import sys
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import cv2
import numpy as np
import pandas as pd
import torch
from torch import nn

from fer_lightning.callbacks.inference_metadata import INFERENCE_FORMAT, INFERENCE_KEY
from fer_lightning.data.io import BadSampleError, read_rgb
from fer_lightning.data.preprocessing import EvalPreprocessing, FaceTensors
from fer_lightning.errors import ConfigurationError, WeightsError
from fer_lightning.run_checkpoint import read_run_checkpoint

#: Files taken from folders (recursively) and accepted as pictures, compared lower-case.
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv")
#: Columns before the class probabilities; after them come ``predicted`` and ``note``.
BOX_COLUMNS = ("FaceRectX", "FaceRectY", "FaceRectWidth", "FaceRectHeight")
ID_COLUMNS = ("input", "frame", "face")
NO_FACE = "no face found"
#: Only these packages' model classes are built from a checkpoint's ``class_path``: building a class
#: runs its code, and the checkpoint is not trusted to choose which.
TRUSTED_MODEL_PACKAGE = "fer_lightning.models."
#: Options that would make a model load weights from elsewhere while being built (the checkpoint's
#: weights replace them anyway): turned off for predict, so nothing is read or downloaded.
_EXTERNAL_WEIGHT_OPTIONS = {"pretrained": False, "weights": None, "init_from": None}
_EXTERNAL_WEIGHT_SUFFIXES = ("_weights", "_weights_path", "_checkpoint")

ONNX_INPUT = "images"
ONNX_OUTPUT = "probabilities"


def metadata_path_of(exported: str | os.PathLike) -> Path:
    """The JSON written next to an exported model: ``model.onnx`` → ``model.onnx.json``."""
    exported = Path(exported)
    return exported.with_name(exported.name + ".json")


# ---------------------------------------------------------------------------------------------------
# Checkpoints → model + metadata
# ---------------------------------------------------------------------------------------------------


def checkpoint_metadata(
    checkpoint: dict, path: str | os.PathLike, preprocessing: EvalPreprocessing | None
) -> dict:
    """The checkpoint's predict metadata; for an older checkpoint, rebuilt from its hyper-parameters and
    ``preprocessing`` (which it then needs: one line says so)."""
    metadata = checkpoint.get(INFERENCE_KEY)
    if metadata is not None:
        if metadata.get("format") != INFERENCE_FORMAT:
            raise WeightsError(
                f"checkpoint {path}: predict metadata format {metadata.get('format')!r}, this fer-lightning "
                f"reads format {INFERENCE_FORMAT}; use the fer-lightning release that wrote it"
            )
        if preprocessing is not None:
            metadata = {**metadata, "preprocessing": preprocessing.to_dict()}
        return metadata
    hparams = dict(checkpoint.get("hyper_parameters") or {})
    model_class = hparams.pop("_class_path", None)
    if model_class is None:
        raise WeightsError(
            f"checkpoint {path} names no model class (not written by fer-lightning fit); train it with "
            "fer-lightning fit, or load it in Python and build Predictor(model, class_names, preprocessing)"
        )
    if preprocessing is None:
        data = checkpoint.get("datamodule_hyper_parameters") or {}
        example = {"version": 1, "img_size": data.get("img_size", 112)}
        for key in ("mean", "std"):
            if key in data:
                example[key] = list(data[key])
        raise WeightsError(
            f"checkpoint {path} was written before predict metadata existed; pass --preprocessing FILE.json "
            f"(Predictor: preprocessing=) with its training preprocessing, here {json.dumps(example)} "
            "(optional keys: crop_margin, crop_size, grayscale; see docs/predict.md), or retrain it"
        )
    init_args = {name: value for name, value in hparams.items() if not name.startswith("_")}
    return {
        "format": INFERENCE_FORMAT,
        "model": {"class_path": model_class, "init_args": init_args},
        "class_names": list(init_args.get("class_names") or []),
        "preprocessing": preprocessing.to_dict(),
    }


def build_model(metadata: dict, state_dict: dict[str, torch.Tensor], source: str) -> nn.Module:
    """The trained model: its class (one of this package's) built with its saved options, weights loaded."""
    from fer_lightning.models import FERClassifier

    class_path = metadata["model"]["class_path"]
    module_name, _, class_name = class_path.rpartition(".")
    if not class_path.startswith(TRUSTED_MODEL_PACKAGE):
        raise WeightsError(
            f"{source}: model class {class_path} is not one of fer_lightning.models; predict builds only the "
            "package's own models from a checkpoint (building a class runs its code)"
        )
    try:
        model_class = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError) as error:
        raise WeightsError(
            f"{source}: model class {class_path} does not exist in this fer-lightning; use the release that trained it"
        ) from error
    if not (isinstance(model_class, type) and issubclass(model_class, FERClassifier)):
        raise WeightsError(f"{source}: {class_path} is not a fer-lightning model class")
    init_args = dict(metadata["model"]["init_args"])
    for name in init_args:
        if name in _EXTERNAL_WEIGHT_OPTIONS:
            init_args[name] = _EXTERNAL_WEIGHT_OPTIONS[name]
        elif name.endswith(_EXTERNAL_WEIGHT_SUFFIXES):
            init_args[name] = None
    with warnings.catch_warnings():
        # "no weights given, random initialisation": the checkpoint's weights follow.
        warnings.simplefilter("ignore")
        model = model_class(**init_args)
    missing, unexpected = model.load_state_dict(state_dict, strict=False)
    if missing or unexpected:
        raise WeightsError(
            f"{source}: the weights do not fit {class_name} built with the saved options "
            f"({len(missing)} missing, {len(unexpected)} unexpected, e.g. {(missing or unexpected)[0]})"
        )
    return model.eval()


class InferenceNetwork(nn.Module):
    """What predict runs and export writes: normalised images (B, 3, S, S) → class probabilities (B, K).

    The model's ``forward`` in eval mode: for BTN its P_VIT head, so each image's result depends on that
    image only, and the batch axis can be dynamic.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model.eval()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images).float().softmax(dim=-1)


# ---------------------------------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------------------------------


@dataclass
class Picture:
    """One still image or one sampled video frame, RGB uint8."""

    input: str
    frame: int | None
    image: np.ndarray
    video: str | None = None
    fps: float = 0.0


@dataclass
class Skipped:
    input: str
    reason: str

    def __str__(self) -> str:
        return f"skipped {self.input}: {self.reason}"


def expand_inputs(inputs: Iterable[Any]) -> list[Any]:
    """Folders replaced by their pictures (recursive, sorted); files, arrays and missing paths kept as given."""
    expanded: list[Any] = []
    for item in inputs:
        if isinstance(item, str | os.PathLike) and Path(item).is_dir():
            found = sorted(
                path
                for path in Path(item).rglob("*")
                if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES
            )
            expanded.extend(found)
        else:
            expanded.append(item)
    return expanded


def _frame_count(path: Path, every: int) -> int:
    capture = cv2.VideoCapture(str(path))
    try:
        frames = int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) if capture.isOpened() else 0
    finally:
        capture.release()
    return math.ceil(max(frames, 0) / every)


def iter_pictures(items: Sequence[Any], every: int = 1) -> Iterator[Picture | Skipped]:
    """The pictures of ``items`` (paths after :func:`expand_inputs`, or RGB arrays); a file that cannot be
    read gives a :class:`Skipped` and the rest go on."""
    for position, item in enumerate(items):
        if isinstance(item, np.ndarray):
            image = item if item.ndim == 3 else cv2.cvtColor(item, cv2.COLOR_GRAY2RGB)
            yield Picture(f"<array {position}>", None, np.ascontiguousarray(image[..., :3]))
            continue
        path = Path(item)
        name = str(path)
        if not path.is_file():
            yield Skipped(name, "no such file or folder")
        elif path.suffix.lower() in VIDEO_SUFFIXES:
            yield from _video_frames(path, every)
        else:
            try:
                yield Picture(name, None, read_rgb(path))
            except BadSampleError as error:
                is_picture = path.suffix.lower() in IMAGE_SUFFIXES
                yield Skipped(name, str(error) if is_picture else "not an image or a video OpenCV can read")


def _video_frames(path: Path, every: int) -> Iterator[Picture | Skipped]:
    capture = cv2.VideoCapture(str(path))
    try:
        if not capture.isOpened():
            yield Skipped(str(path), "cannot open the video (corrupt, or a codec OpenCV lacks)")
            return
        fps = float(capture.get(cv2.CAP_PROP_FPS) or 0.0)
        index, read_any = 0, False
        while True:
            ok, frame = capture.read()
            if not ok:
                break
            read_any = True
            if index % every == 0:
                yield Picture(str(path), index, cv2.cvtColor(frame, cv2.COLOR_BGR2RGB), str(path), fps)
            index += 1
        if not read_any:
            yield Skipped(str(path), "the video has no readable frame")
    finally:
        capture.release()


# ---------------------------------------------------------------------------------------------------
# Networks: PyTorch or ONNX Runtime
# ---------------------------------------------------------------------------------------------------


class TorchNetwork:
    """Batches through :class:`InferenceNetwork` on ``device``."""

    def __init__(self, model: nn.Module, device: str | torch.device = "cpu") -> None:
        self.device = torch.device(device)
        self.network = InferenceNetwork(model).to(self.device)

    def __call__(self, batch: torch.Tensor) -> np.ndarray:
        with torch.inference_mode():
            return self.network(batch.to(self.device)).cpu().numpy()


class OnnxNetwork:
    """Batches through an exported ``.onnx`` with ONNX Runtime (CPU, or CUDA where installed and asked)."""

    def __init__(
        self, path: str | os.PathLike, device: str | torch.device = "cpu", threads: int | None = None
    ) -> None:
        try:
            import onnxruntime
        except ImportError as error:
            raise ConfigurationError(
                "predicting with a .onnx needs onnxruntime: pip install -c constraints.txt -e '.[export]'"
            ) from error
        providers = ["CPUExecutionProvider"]
        if (
            torch.device(device).type == "cuda"
            and "CUDAExecutionProvider" in onnxruntime.get_available_providers()
        ):
            providers.insert(0, "CUDAExecutionProvider")  # the onnxruntime-gpu package has it
        options = onnxruntime.SessionOptions()
        options.log_severity_level = 3  # its warnings about unused initialisers are not the user's concern
        if threads is not None:
            options.intra_op_num_threads = threads
        try:
            self.session = onnxruntime.InferenceSession(str(path), options, providers=providers)
        except Exception as error:
            raise WeightsError(
                f"{path}: ONNX Runtime cannot load it ({str(error).splitlines()[0][:160]})"
            ) from error
        self.input_name = self.session.get_inputs()[0].name

    def __call__(self, batch: torch.Tensor) -> np.ndarray:
        return self.session.run(None, {self.input_name: batch.numpy().astype(np.float32, copy=False)})[0]


# ---------------------------------------------------------------------------------------------------
# The predictor
# ---------------------------------------------------------------------------------------------------


@dataclass
class _Pending:
    """A picture whose faces wait for their batch; its rows are ``rows[first:first + count]``."""

    picture: Picture
    first: int
    count: int
    boxes: list = field(default_factory=list)


class Predictor:
    """Expression probabilities for faces in pictures and videos.

    Build it with :meth:`from_checkpoint` (a ``.ckpt`` from ``fer-lightning fit``) or :meth:`from_onnx`
    (an export), or :meth:`load` for either; then :meth:`predict`.

    Args:
        network: callable, normalised batch (B, 3, S, S) → probabilities (B, K) as numpy.
        class_names: the K classes in the network's order.
        preprocessing: the model's evaluation preprocessing.
        faces: ``detect`` (find faces with ``detector``) or ``none`` (each picture is one cropped face).
        detector_model: a face detector file (cascade ``.xml`` or YuNet ``.onnx``); None: the bundled cascade.
        batch_size: faces per forward pass.
    """

    def __init__(
        self,
        network: Callable[[torch.Tensor], np.ndarray],
        class_names: Sequence[str],
        preprocessing: EvalPreprocessing,
        faces: Literal["detect", "none"] = "detect",
        detector_model: str | os.PathLike | None = None,
        batch_size: int = 32,
        source: str = "",
    ) -> None:
        if faces not in ("detect", "none"):
            raise ConfigurationError(f"faces must be 'detect' or 'none', got {faces!r}")
        if batch_size < 1:
            raise ConfigurationError(f"batch_size must be >= 1, got {batch_size}")
        self.network = network
        self.class_names = [str(name) for name in class_names]
        self.preprocessing = preprocessing
        self.faces = faces
        self.batch_size = batch_size
        self.source = source
        self._detector_model = detector_model
        self._detector = None
        self._tensors = FaceTensors(preprocessing)

    # ---- construction -------------------------------------------------------------------------
    @classmethod
    def from_checkpoint(
        cls,
        path: str | os.PathLike,
        device: str | torch.device = "cpu",
        preprocessing: EvalPreprocessing | dict | str | os.PathLike | None = None,
        **kwargs: Any,
    ) -> Predictor:
        """A predictor for a ``fer-lightning fit`` checkpoint, read with ``weights_only=True``.

        ``preprocessing`` replaces the saved one (an :class:`EvalPreprocessing`, its dict, or a JSON
        file); older checkpoints without predict metadata need it.
        """
        checkpoint = read_run_checkpoint(path)
        metadata = checkpoint_metadata(checkpoint, path, _as_preprocessing(preprocessing))
        model = build_model(metadata, checkpoint["state_dict"], str(path))
        predictor = cls(
            TorchNetwork(model, device),
            metadata["class_names"] or list(getattr(model, "class_names", [])),
            EvalPreprocessing.from_dict(metadata["preprocessing"], str(path)),
            source=str(path),
            **kwargs,
        )
        predictor.model = model
        predictor.metadata = metadata
        return predictor

    @classmethod
    def from_onnx(
        cls, path: str | os.PathLike, device: str | torch.device = "cpu", **kwargs: Any
    ) -> Predictor:
        """A predictor for a ``fer-lightning export --format onnx`` file and the JSON next to it."""
        path = Path(path)
        if not path.is_file():
            raise WeightsError(f"ONNX model {path} not found")
        metadata = read_export_metadata(path)
        preprocessing = kwargs.pop("preprocessing", None)
        return cls(
            OnnxNetwork(path, device),
            metadata["class_names"],
            _as_preprocessing(preprocessing)
            or EvalPreprocessing.from_dict(metadata["preprocessing"], str(path)),
            source=str(path),
            **kwargs,
        )

    @classmethod
    def load(cls, path: str | os.PathLike, device: str | torch.device = "cpu", **kwargs: Any) -> Predictor:
        """:meth:`from_onnx` for a ``.onnx``, else :meth:`from_checkpoint`."""
        if Path(path).suffix.lower() == ".onnx":
            return cls.from_onnx(path, device, **kwargs)
        if Path(path).suffix.lower() in (".pt", ".ts", ".torchscript"):
            raise WeightsError(
                f"{path}: predict does not load TorchScript files (loading one runs its code); pass the .ckpt "
                "or an exported .onnx"
            )
        return cls.from_checkpoint(path, device, **kwargs)

    # ---- prediction ---------------------------------------------------------------------------
    @property
    def detector(self):
        if self._detector is None:
            from fer_lightning.face_detection import FaceDetector

            self._detector = FaceDetector(self._detector_model)
        return self._detector

    @property
    def columns(self) -> list[str]:
        return [*ID_COLUMNS, *BOX_COLUMNS, *self.class_names, "predicted", "note"]

    def predict(
        self,
        inputs: Any,
        every: int = 1,
        progress: bool = False,
        annotate_dir: str | os.PathLike | None = None,
        on_skip: Callable[[Skipped], None] | None = None,
    ) -> pd.DataFrame:
        """One row per face (or per picture without a face) of ``inputs``.

        Args:
            inputs: a path (image, video, folder searched recursively for jpg/png/bmp/webp), an RGB uint8
                array, or a list of these.
            every: of a video, take every ``every``-th frame (the first included).
            progress: show a progress bar (pictures) on stderr.
            annotate_dir: write copies of the pictures with boxes and labels drawn there (and, per video,
                an annotated video of the sampled frames).
            on_skip: called with each unreadable input (default: one line on stderr). Skipped inputs are
                also listed in ``DataFrame.attrs["skipped"]``.
        """
        if every < 1:
            raise ConfigurationError(f"every must be >= 1 (every frame), got {every}")
        if isinstance(inputs, str | os.PathLike | np.ndarray):
            inputs = [inputs]
        items = expand_inputs(inputs)
        report = on_skip or (lambda skipped: print(skipped, file=sys.stderr))
        annotator = (
            Annotator(Path(annotate_dir), self.class_names, every) if annotate_dir is not None else None
        )
        rows: list[dict] = []
        skipped: list[Skipped] = []
        waiting: list[_Pending] = []
        batch: list[torch.Tensor] = []
        batch_rows: list[int] = []

        def flush() -> None:
            if batch:
                probabilities = self.network(torch.stack(batch))
                for row_index, row_probabilities in zip(batch_rows, probabilities):
                    self._fill(rows[row_index], row_probabilities)
                batch.clear()
                batch_rows.clear()
            while waiting and all(
                "predicted" in rows[i] for i in range(waiting[0].first, waiting[0].first + waiting[0].count)
            ):
                done = waiting.pop(0)
                if annotator is not None:
                    annotator.add(done.picture, rows[done.first : done.first + done.count])

        total = sum(_frame_count(Path(item), every) if _is_video(item) else 1 for item in items)
        bar = _progress_bar(total, progress)
        try:
            for picture in iter_pictures(items, every):
                if bar is not None:
                    bar.update(1)
                if isinstance(picture, Skipped):
                    skipped.append(picture)
                    report(picture)
                    continue
                boxes = self._boxes(picture.image)
                first = len(rows)
                if not boxes:
                    rows.append(self._row(picture, None, None, NO_FACE))
                    rows[-1]["predicted"] = None
                for face_index, box in enumerate(boxes):
                    rows.append(self._row(picture, face_index, box, ""))
                    batch.append(self._tensors(picture.image, None if self.faces == "none" else box))
                    batch_rows.append(len(rows) - 1)
                waiting.append(_Pending(picture, first, len(rows) - first))
                if len(batch) >= self.batch_size:
                    flush()
            flush()
        finally:
            if bar is not None:
                bar.close()
            if annotator is not None:
                annotator.close()
        frame = pd.DataFrame(rows, columns=self.columns)
        frame["frame"] = frame["frame"].astype("Int64")
        frame["face"] = frame["face"].astype("Int64")
        frame.attrs["skipped"] = [(item.input, item.reason) for item in skipped]
        return frame

    def _boxes(self, image: np.ndarray) -> list[tuple[float, float, float, float]]:
        if self.faces == "none":
            height, width = image.shape[:2]
            return [(0.0, 0.0, float(width), float(height))]
        return self.detector(image)

    def _row(self, picture: Picture, face: int | None, box, note: str) -> dict:
        x0, y0, x1, y1 = box if box is not None else (math.nan,) * 4
        row = {
            "input": picture.input,
            "frame": picture.frame,
            "face": face,
            "FaceRectX": x0,
            "FaceRectY": y0,
            "FaceRectWidth": x1 - x0,
            "FaceRectHeight": y1 - y0,
            "note": note,
        }
        row.update({name: math.nan for name in self.class_names})
        return row

    def _fill(self, row: dict, probabilities: np.ndarray) -> None:
        for name, value in zip(self.class_names, probabilities):
            row[name] = float(value)
        row["predicted"] = self.class_names[int(np.argmax(probabilities))]


def _is_video(item: Any) -> bool:
    return (
        isinstance(item, str | os.PathLike)
        and Path(item).suffix.lower() in VIDEO_SUFFIXES
        and Path(item).is_file()
    )


def _progress_bar(total: int, enabled: bool):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="predict", unit="picture", file=sys.stderr)


def _as_preprocessing(value: EvalPreprocessing | dict | str | os.PathLike | None) -> EvalPreprocessing | None:
    if value is None or isinstance(value, EvalPreprocessing):
        return value
    if isinstance(value, dict):
        return EvalPreprocessing.from_dict(value, "preprocessing")
    path = Path(value)
    try:
        values = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise ConfigurationError(f"--preprocessing {path}: cannot read it as JSON ({error})") from error
    return EvalPreprocessing.from_dict(values.get("preprocessing", values), str(path))


def read_export_metadata(exported: str | os.PathLike) -> dict:
    """The JSON next to an exported model (class names, preprocessing, input and output names)."""
    path = metadata_path_of(exported)
    try:
        metadata = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as error:
        raise WeightsError(
            f"{exported}: its metadata {path.name} is missing next to it; export again with fer-lightning export"
        ) from error
    except (OSError, json.JSONDecodeError) as error:
        raise WeightsError(f"{path}: not readable JSON ({error})") from error
    if not isinstance(metadata, dict) or "class_names" not in metadata or "preprocessing" not in metadata:
        raise WeightsError(f"{path}: not export metadata written by fer-lightning export")
    return metadata


# ---------------------------------------------------------------------------------------------------
# Annotated copies
# ---------------------------------------------------------------------------------------------------


class Annotator:
    """Writes pictures with each face's box and ``class probability`` drawn, under ``folder``.

    Still images keep their file name (numbered when two inputs share one); the sampled frames of a
    video go into ``<video stem>_annotated.mp4`` at the video's rate divided by the sampling step.
    """

    def __init__(self, folder: Path, class_names: Sequence[str], every: int = 1) -> None:
        self.folder = folder
        self.every = every
        self.folder.mkdir(parents=True, exist_ok=True)
        self.class_names = list(class_names)
        self.written: list[Path] = []
        self._videos: dict[str, cv2.VideoWriter] = {}
        self._used_names: set[str] = set()

    def add(self, picture: Picture, rows: list[dict]) -> None:
        canvas = cv2.cvtColor(picture.image, cv2.COLOR_RGB2BGR)
        thickness = max(1, round(max(canvas.shape[:2]) / 400))
        for row in rows:
            if row["face"] is None or row.get("predicted") is None:
                continue
            x0, y0 = round(row["FaceRectX"]), round(row["FaceRectY"])
            x1, y1 = x0 + round(row["FaceRectWidth"]), y0 + round(row["FaceRectHeight"])
            label = f"{row['predicted']} {row[row['predicted']]:.2f}"
            cv2.rectangle(canvas, (x0, y0), (x1 - 1, y1 - 1), (0, 220, 0), thickness)
            scale = max(0.4, thickness * 0.5)
            (width, height), baseline = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)
            top = y0 - height - baseline if y0 - height - baseline >= 0 else y1
            cv2.rectangle(canvas, (x0, top), (x0 + width, top + height + baseline), (0, 220, 0), -1)
            cv2.putText(
                canvas, label, (x0, top + height), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), thickness
            )
        if picture.video is None:
            self._write_image(picture, canvas)
        else:
            self._write_frame(picture, canvas)

    def _unique(self, name: str) -> Path:
        stem, suffix = os.path.splitext(name)
        candidate, number = name, 1
        while candidate in self._used_names:
            candidate, number = f"{stem}_{number}{suffix}", number + 1
        self._used_names.add(candidate)
        return self.folder / candidate

    def _write_image(self, picture: Picture, canvas: np.ndarray) -> None:
        name = (
            Path(picture.input).name
            if not picture.input.startswith("<")
            else f"array_{len(self.written)}.png"
        )
        if Path(name).suffix.lower() not in (".jpg", ".jpeg", ".png", ".bmp"):
            name = f"{Path(name).stem}.png"  # webp and friends are written as PNG
        path = self._unique(name)
        if cv2.imwrite(str(path), canvas):
            self.written.append(path)

    def _write_frame(self, picture: Picture, canvas: np.ndarray) -> None:
        writer = self._videos.get(picture.video)
        if writer is None:
            path = self._unique(f"{Path(picture.video).stem}_annotated.mp4")
            fps = max(1.0, picture.fps / self.every) if picture.fps else 10.0
            writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, canvas.shape[1::-1])
            self._videos[picture.video] = writer
            self.written.append(path)
        writer.write(canvas)

    def close(self) -> None:
        for writer in self._videos.values():
            writer.release()
        self._videos.clear()
