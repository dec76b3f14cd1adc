"""``fer-lightning predict`` and :class:`Predictor`: preprocessing parity with the datamodule, videos,
unreadable files, face detection on real photographs, safe checkpoint loading, the ONNX route."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from cli_helpers import quickstart_args, write_tiny_rafdb

from fer_lightning.callbacks.inference_metadata import INFERENCE_KEY
from fer_lightning.cli import main
from fer_lightning.data.preprocessing import EvalPreprocessing
from fer_lightning.data.rafdb import RAFDBDataModule
from fer_lightning.errors import ConfigurationError, WeightsError
from fer_lightning.face_detection import FaceDetector
from fer_lightning.inference import NO_FACE, Predictor

CLASS_NAMES = ["Surprise", "Fear", "Disgust", "Happiness", "Sadness", "Anger", "Neutral"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny RAF-DB-format set and the checkpoint of one quickstart epoch on it (32 px)."""
    folder = tmp_path_factory.mktemp("predict")
    root = write_tiny_rafdb(folder / "rafdb", num_images=28, seed=3)
    main(
        [
            "fit",
            *quickstart_args(
                root, folder / "runs", "--trainer.max_epochs=1", "--trainer.log_every_n_steps=1"
            ),
        ]
    )
    checkpoint = next((folder / "runs").rglob("last.ckpt"))
    return root, checkpoint


def predict_csv(*args: str) -> pd.DataFrame:
    out = Path(args[args.index("--out") + 1])
    main(["predict", *args, "--no-progress"])
    return pd.read_csv(out / "predictions.csv")


def test_checkpoint_carries_predict_metadata_as_plain_values(trained):
    _, checkpoint = trained
    metadata = torch.load(checkpoint, weights_only=True)[INFERENCE_KEY]
    assert metadata["model"]["class_path"] == "fer_lightning.models.timm_classifier.TimmClassifier"
    assert metadata["model"]["init_args"]["backbone"] == "resnet10t"
    assert metadata["class_names"] == CLASS_NAMES
    assert metadata["preprocessing"]["img_size"] == 32
    assert metadata["preprocessing"]["channel_order"] == "RGB"


def test_folder_with_faces_none_equals_the_models_softmax_on_the_datamodules_tensors(trained, tmp_path):
    root, checkpoint = trained
    table = predict_csv(str(checkpoint), str(root), "--faces", "none", "--out", str(tmp_path))

    datamodule = RAFDBDataModule(root=str(root), img_size=32, batch_size=4, num_workers=0)
    datamodule.setup("test")
    test_set = datamodule.datasets["test"]
    images = torch.stack([test_set[i][0] for i in range(len(test_set))])
    model = Predictor.from_checkpoint(checkpoint).model
    with torch.no_grad():
        expected = model.eval()(images).softmax(dim=-1).numpy()
    rows = table.set_index("input").loc[[str(path) for path in datamodule.tables["test"].sources]]

    assert len(table) == len(list((root / "Image" / "aligned").glob("*.jpg")))
    np.testing.assert_allclose(rows[CLASS_NAMES].to_numpy(), expected, atol=1e-5, rtol=0)
    assert list(rows["predicted"]) == [CLASS_NAMES[i] for i in expected.argmax(axis=1)]


def test_video_gives_one_row_per_sampled_frame_and_an_annotated_video(trained, tmp_path):
    root, checkpoint = trained
    faces = sorted((root / "Image" / "aligned").glob("*.jpg"))[:7]
    video = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (64, 64))
    for face in faces:
        writer.write(cv2.resize(cv2.imread(str(face)), (64, 64)))
    writer.release()
    out = tmp_path / "out"

    table = predict_csv(
        str(checkpoint), str(video), "--faces", "none", "--every", "3", "--annotate", "--out", str(out)
    )

    assert list(table["frame"]) == [0, 3, 6]
    assert list(table["face"]) == [0, 0, 0]
    assert (table["input"] == str(video)).all()
    annotated = cv2.VideoCapture(str(out / "clip_annotated.mp4"))
    assert int(annotated.get(cv2.CAP_PROP_FRAME_COUNT)) == 3
    annotated.release()


def test_corrupt_and_non_image_files_are_reported_and_skipped(trained, tmp_path, capsys):
    root, checkpoint = trained
    pictures = tmp_path / "pictures"
    pictures.mkdir()
    good = sorted((root / "Image" / "aligned").glob("*.jpg"))[0]
    shutil.copy(good, pictures / "good.jpg")
    (pictures / "broken.jpg").write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    notes = tmp_path / "notes.txt"
    notes.write_text("not a picture\n")
    out = tmp_path / "out"

    table = predict_csv(
        str(checkpoint), str(pictures), str(notes), "--faces", "none", "--annotate", "--out", str(out)
    )

    assert list(table["input"]) == [str(pictures / "good.jpg")]
    stderr = capsys.readouterr().err
    assert f"skipped {pictures / 'broken.jpg'}: truncated JPEG" in stderr
    assert f"skipped {notes}: not an image" in stderr
    assert (out / "good.jpg").is_file()


def constant_predictor(faces: str = "detect") -> Predictor:
    """Face detection and cropping only: the network returns uniform probabilities."""
    uniform = lambda batch: np.full((len(batch), len(CLASS_NAMES)), 1 / len(CLASS_NAMES), np.float32)  # noqa: E731
    return Predictor(uniform, CLASS_NAMES, EvalPreprocessing(32, crop_margin=0.2), faces=faces)


def test_detector_finds_the_face_in_a_real_photograph_and_none_in_a_photo_without_people():
    data = pytest.importorskip("skimage.data")
    astronaut, coffee = data.astronaut(), data.coffee()  # photographs shipped inside scikit-image

    table = constant_predictor().predict([astronaut, coffee])

    faces = table[table["input"] == "<array 0>"]
    assert len(faces) >= 1
    centres = (
        faces["FaceRectX"] + faces["FaceRectWidth"] / 2,
        faces["FaceRectY"] + faces["FaceRectHeight"] / 2,
    )
    # Eileen Collins' face lies around (225, 115) in the 512 x 512 picture.
    assert any(abs(x - 225) < 30 and abs(y - 115) < 40 for x, y in zip(*centres))
    no_face = table[table["input"] == "<array 1>"]
    assert len(no_face) == 1 and no_face["note"].iloc[0] == NO_FACE and no_face["face"].isna().all()


YUNET_OUTPUTS = [f"{kind}_{stride}" for kind in ("cls", "obj", "bbox", "kps") for stride in (8, 16, 32)]


class _BrightCellYuNet(torch.nn.Module):
    """A stand-in with YuNet's inputs and outputs (no model file ships in any package): it scores each
    32-pixel cell by its brightness, finds nothing at strides 8 and 16, and boxes a cell as itself
    (centre offset ½, log-size 0)."""

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        outputs = {}
        for stride in (8, 16, 32):
            brightness = F.avg_pool2d(image, stride).mean(dim=1).flatten(1).unsqueeze(-1) / 255.0
            score = brightness if stride == 32 else brightness * 0.0
            outputs[f"cls_{stride}"] = outputs[f"obj_{stride}"] = score
            outputs[f"bbox_{stride}"] = brightness * 0.0 + torch.tensor([0.5, 0.5, 0.0, 0.0])
            outputs[f"kps_{stride}"] = brightness * 0.0 + torch.zeros(10)
        return tuple(outputs[name] for name in YUNET_OUTPUTS)


def _export_onnx(module: torch.nn.Module, path: Path, output_names: list[str]) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy exporter's deprecation and tracer notes
        torch.onnx.export(
            module, (torch.zeros(1, 3, 64, 64),), str(path), input_names=["input"],
            output_names=output_names, dynamic_axes={"input": {2: "height", 3: "width"}},
            dynamo=False, opset_version=13,
        )  # fmt: skip
    return path


@pytest.mark.parametrize(
    ("side", "square", "expected"), [(256, 32, (96, 64, 128, 96)), (1280, 64, (192, 128, 256, 192))]
)
def test_a_yunet_model_gives_its_boxes_in_picture_pixels(tmp_path, side, square, expected):
    """The .onnx path of FaceDetector: OpenCV's FaceDetectorYN decodes our stand-in's outputs, and a
    picture larger than DETECTION_SIDE (1280 px: searched at half size) gets its box back in its own pixels."""
    detector = FaceDetector(_export_onnx(_BrightCellYuNet(), tmp_path / "yunet.onnx", YUNET_OUTPUTS))
    picture = np.zeros((side * 3 // 4, side, 3), np.uint8)
    x0, y0 = expected[:2]
    picture[y0 : y0 + square, x0 : x0 + square] = 255
    assert detector(picture) == [tuple(float(v) for v in expected)]
    assert detector(np.zeros_like(picture)) == []


def test_an_onnx_file_that_is_not_a_yunet_detector_is_refused_in_one_line(tmp_path):
    other = _export_onnx(torch.nn.Conv2d(3, 1, 1), tmp_path / "other.onnx", ["output"])
    with pytest.raises(ConfigurationError, match=r"other\.onnx: not a YuNet face detector") as raised:
        FaceDetector(other)(np.zeros((64, 64, 3), np.uint8))
    assert "\n" not in str(raised.value)


def test_a_checkpoint_that_needs_pickled_code_is_refused_in_one_line(tmp_path, capsys):
    unsafe = tmp_path / "unsafe.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {"when_loaded": PickledObject()}}, unsafe)

    with pytest.raises(WeightsError, match="cannot be read safely"):
        Predictor.from_checkpoint(unsafe)
    with pytest.raises(SystemExit) as exit_info:
        main(["predict", str(unsafe), str(tmp_path), "--out", str(tmp_path / "out")])
    assert exit_info.value.code == 1
    stderr = capsys.readouterr().err.strip().splitlines()
    assert len(stderr) == 1 and stderr[0].startswith("error: checkpoint") and "weights_only" in stderr[0]


class PickledObject:
    """Anything that is not plain data: ``weights_only=True`` refuses to unpickle it."""


def test_a_checkpoint_cannot_choose_a_class_outside_the_package(trained, tmp_path):
    _, checkpoint = trained
    content = torch.load(checkpoint, weights_only=True)
    content[INFERENCE_KEY]["model"]["class_path"] = "collections.OrderedDict"
    torch.save(content, tmp_path / "foreign.ckpt")

    with pytest.raises(WeightsError, match=r"not one of fer_lightning\.models"):
        Predictor.from_checkpoint(tmp_path / "foreign.ckpt")


def test_an_old_checkpoint_asks_for_its_preprocessing_and_runs_with_it(trained, tmp_path):
    root, checkpoint = trained
    content = torch.load(checkpoint, weights_only=True)
    del content[INFERENCE_KEY]
    old = tmp_path / "old.ckpt"
    torch.save(content, old)

    with pytest.raises(WeightsError, match=r"--preprocessing FILE.json .*\"img_size\": 32"):
        Predictor.from_checkpoint(old)
    (tmp_path / "preprocessing.json").write_text(json.dumps({"version": 1, "img_size": 32}))
    pictures = sorted((root / "Image" / "aligned").glob("*.jpg"))[:3]
    from_old = Predictor.from_checkpoint(old, preprocessing=tmp_path / "preprocessing.json", faces="none")
    from_new = Predictor.from_checkpoint(checkpoint, faces="none")

    np.testing.assert_allclose(
        from_old.predict(pictures)[CLASS_NAMES].to_numpy(), from_new.predict(pictures)[CLASS_NAMES].to_numpy()
    )


def test_export_to_onnx_then_predict_with_it_matches_the_checkpoint(trained, tmp_path, capsys):
    root, checkpoint = trained
    exported = tmp_path / "model.onnx"
    main(["export", str(checkpoint), "--out", str(exported)])
    assert "max |difference| to PyTorch" in capsys.readouterr().out

    with_onnx = predict_csv(str(exported), str(root), "--faces", "none", "--out", str(tmp_path / "onnx"))
    with_torch = predict_csv(str(checkpoint), str(root), "--faces", "none", "--out", str(tmp_path / "torch"))

    np.testing.assert_allclose(
        with_onnx[CLASS_NAMES].to_numpy(), with_torch[CLASS_NAMES].to_numpy(), atol=1e-4
    )
    assert list(with_onnx["input"]) == list(with_torch["input"])
