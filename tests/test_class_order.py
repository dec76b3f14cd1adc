"""Every dataset's class ids keep the order the dataset was published with.

The readers and the synthetic writers share their class-name constants, so a round trip through the
generator cannot notice two swapped classes. Here the orders are written out literally, as the datasets
define them, and each reader is given hand-written annotation rows whose published label is known.
"""

from __future__ import annotations

import csv
import json

import cv2
import numpy as np
import pytest

from fer_lightning.data import (
    AffectNetDataModule,
    AIHubKoreanDataModule,
    FER2013DataModule,
    RAFDBDataModule,
    formats,
)

# RAF-DB basic: list-file labels 1..7.
RAFDB = ["Surprise", "Fear", "Disgust", "Happiness", "Sadness", "Anger", "Neutral"]
# AffectNet `expression` 0..7 (8..10 are None, Uncertain, No-Face); the 7-class setting drops Contempt.
AFFECTNET = ["Neutral", "Happy", "Sad", "Surprise", "Fear", "Disgust", "Anger", "Contempt"]
# FER2013 `emotion` 0..6.
FER2013 = ["Angry", "Disgust", "Fear", "Happy", "Sad", "Surprise", "Neutral"]
# FER+ fer2013new.csv vote columns, after Usage and Image name.
FERPLUS_COLUMNS = [
    "neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear", "contempt", "unknown", "NF",
]  # fmt: skip
# AI-Hub Korean emotions: joy, panic/embarrassment, anger, anxiety, hurt, sadness, neutral.
AIHUB = ["기쁨", "당황", "분노", "불안", "상처", "슬픔", "중립"]


def test_published_class_orders():
    assert list(RAFDBDataModule(root=".").class_names) == RAFDB
    assert list(AffectNetDataModule(root=".", num_classes=8).class_names) == AFFECTNET
    assert list(AffectNetDataModule(root=".", num_classes=7).class_names) == AFFECTNET[:7]
    assert list(FER2013DataModule(root=".").class_names) == FER2013
    assert list(FER2013DataModule(root=".", labels="ferplus").class_names) == FERPLUS_COLUMNS[:8]
    assert list(formats.FERPLUS_HEADER) == ["Usage", "Image name", *FERPLUS_COLUMNS]
    assert list(AIHubKoreanDataModule(root=".").class_names) == AIHUB


def _write_image(path, side=8):
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.full((side, side, 3), 128, np.uint8))


def _labels_by_name(datamodule, root, published: list[str]) -> dict[str, str]:
    """Every read row's name (file or annotation row) → the published class of the id the reader gave it.

    Ids are looked up in the literal lists above, not in the datamodule's class names, so a reader that
    derives ids from a reordered constant (AI-Hub's names, FER+'s columns) fails here too.
    """
    tables = datamodule.read_splits(root)
    return {
        name: published[label] for table in tables.values() for name, label in zip(table.names, table.labels)
    }


def _only(labels: dict[str, str], fragment: str) -> str:
    [name] = [name for name in labels if fragment in name]
    return labels[name]


def test_rafdb_list_labels(tmp_path):
    rows = {
        "train_00001.jpg": 1,
        "train_00002.jpg": 4,
        "train_00003.jpg": 6,
        "test_0001.jpg": 7,
        "test_0002.jpg": 3,
    }
    (tmp_path / "EmoLabel").mkdir()
    (tmp_path / "EmoLabel" / "list_patition_label.txt").write_text(
        "".join(f"{name} {label}\n" for name, label in rows.items())
    )
    for name in rows:
        _write_image(tmp_path / "Image" / "aligned" / name.replace(".jpg", "_aligned.jpg"))
    labels = _labels_by_name(RAFDBDataModule(root=str(tmp_path)), tmp_path, RAFDB)
    got = {name: _only(labels, name.replace(".jpg", "_aligned")) for name in rows}
    assert got == {
        "train_00001.jpg": "Surprise",
        "train_00002.jpg": "Happiness",
        "train_00003.jpg": "Anger",
        "test_0001.jpg": "Neutral",
        "test_0002.jpg": "Disgust",
    }


def test_rafdb_image_folder_labels(tmp_path):
    for split, folder in (("train", "5"), ("valid", "2")):
        _write_image(tmp_path / split / folder / f"{split}_face.jpg")
    labels = _labels_by_name(RAFDBDataModule(root=str(tmp_path)), tmp_path, RAFDB)
    assert (_only(labels, "train_face"), _only(labels, "valid_face")) == ("Sadness", "Fear")


def _affectnet_csv_root(tmp_path, rows: dict[str, tuple[str, int]]):
    """rows: file stem → (split csv stem, expression)."""
    lists = tmp_path / "Manually_Annotated_file_lists"
    lists.mkdir()
    for csv_stem in ("training", "validation"):
        with open(lists / f"{csv_stem}.csv", "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(formats.AFFECTNET_CSV_HEADER)
            for stem, (where, expression) in rows.items():
                if where == csv_stem:
                    writer.writerow([f"1/{stem}.jpg", 0, 0, 8, 8, "", expression, 0.1, 0.2])
    for stem in rows:
        _write_image(tmp_path / "Manually_Annotated_Images" / "1" / f"{stem}.jpg")
    return tmp_path


@pytest.mark.parametrize("num_classes", [7, 8])
def test_affectnet_csv_labels(tmp_path, num_classes):
    rows = {
        "neutral": ("training", 0),
        "surprise": ("training", 3),
        "anger": ("training", 6),
        "contempt": ("training", 7),
        "sad": ("validation", 2),
        "disgust": ("validation", 5),
    }
    root = _affectnet_csv_root(tmp_path, rows)
    labels = _labels_by_name(AffectNetDataModule(root=str(root), num_classes=num_classes), root, AFFECTNET)
    expected = {
        "neutral": "Neutral",
        "surprise": "Surprise",
        "anger": "Anger",
        "sad": "Sad",
        "disgust": "Disgust",
    }
    if num_classes == 8:
        expected["contempt"] = "Contempt"
    assert {stem: _only(labels, f"/{stem}.jpg") for stem in expected} == expected
    assert len(labels) == len(expected)  # the 7-class setting drops Contempt


def test_affectnet_npy_labels(tmp_path):
    for split, image_id, expression in (
        ("train_set", "11", "1"),
        ("train_set", "12", "4"),
        ("val_set", "13", "6"),
    ):
        _write_image(tmp_path / split / "images" / f"{image_id}.jpg")
        (tmp_path / split / "annotations").mkdir(parents=True, exist_ok=True)
        np.save(
            tmp_path / split / "annotations" / f"{image_id}_exp.npy", np.array(expression)
        )  # stored as text
    labels = _labels_by_name(AffectNetDataModule(root=str(tmp_path)), tmp_path, AFFECTNET)
    assert {image_id: _only(labels, f"/{image_id}.jpg") for image_id in ("11", "12", "13")} == {
        "11": "Happy",
        "12": "Fear",
        "13": "Anger",
    }


FER_ROWS = [(0, "Training"), (3, "Training"), (5, "PublicTest"), (6, "PrivateTest")]


def _write_fer2013(root):
    pixels = " ".join(["7"] * 48 * 48)
    with open(root / "fer2013.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["emotion", "pixels", "Usage"])
        writer.writerows([emotion, pixels, usage] for emotion, usage in FER_ROWS)


def test_fer2013_labels(tmp_path):
    _write_fer2013(tmp_path)
    labels = _labels_by_name(FER2013DataModule(root=str(tmp_path)), tmp_path, FER2013)
    # Names are "fer2013.csv:<line>"; the header is line 1.
    assert [labels[f"fer2013.csv:{line}"] for line in range(2, 6)] == [
        "Angry",
        "Happy",
        "Surprise",
        "Neutral",
    ]


def test_ferplus_labels(tmp_path):
    _write_fer2013(tmp_path)
    votes = {  # one row per fer2013.csv row; the majority column is the label
        "fer0000000.png": [0, 0, 0, 0, 0, 0, 9, 1, 0, 0],  # fear
        "fer0000001.png": [1, 8, 0, 0, 0, 0, 0, 0, 1, 0],  # happiness
        "fer0000002.png": [0, 0, 0, 0, 0, 0, 0, 10, 0, 0],  # contempt
        "fer0000003.png": [0, 0, 0, 3, 7, 0, 0, 0, 0, 0],  # anger
    }
    with open(tmp_path / "fer2013new.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["Usage", "Image name", *FERPLUS_COLUMNS])
        for (_, usage), (name, row) in zip(FER_ROWS, votes.items()):
            writer.writerow([usage, name, *row])
    labels = _labels_by_name(
        FER2013DataModule(root=str(tmp_path), labels="ferplus"), tmp_path, FERPLUS_COLUMNS
    )
    assert [_only(labels, name) for name in votes] == ["fear", "happiness", "contempt", "anger"]


def _aihub_record(filename, emotion):
    annotation = {"boxes": {"minX": 1, "minY": 1, "maxX": 7, "maxY": 7}, "faceExp": emotion, "bg": "실내"}
    return {
        "filename": filename,
        "faceExp_uploader": emotion,
        "annot_A": annotation,
        "annot_B": annotation,
        "annot_C": annotation,
    }


def test_aihub_labels(tmp_path):
    for split, tag, emotion in (
        ("Training", "TRAIN", "분노"),
        ("Training", "TRAIN", "상처"),
        ("Validation", "VALID", "중립"),
    ):
        name = f"face_{emotion}.jpg"
        _write_image(tmp_path / split / f"[원천]EMOIMG_{emotion}_{tag}_01" / name)
        labels_dir = tmp_path / split / f"[라벨]EMOIMG_{emotion}_{tag}"
        labels_dir.mkdir(parents=True)
        records = json.dumps([_aihub_record(name, emotion)], ensure_ascii=False)
        kind = "training" if tag == "TRAIN" else "validation"
        (labels_dir / f"img_emotion_{kind}_data({emotion}).json").write_text(records, encoding="utf-8")
    labels = _labels_by_name(AIHubKoreanDataModule(root=str(tmp_path), crop_cache=False), tmp_path, AIHUB)
    assert {emotion: _only(labels, f"face_{emotion}.jpg") for emotion in ("분노", "상처", "중립")} == {
        "분노": "분노",
        "상처": "상처",
        "중립": "중립",
    }
