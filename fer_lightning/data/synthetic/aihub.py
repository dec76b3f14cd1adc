"""Synthetic AI-Hub Korean emotion images: full frames, one JSON of three annotators' boxes per class."""

from __future__ import annotations

import hashlib
import json
import os
import time
import unicodedata
from typing import Any

from fer_lightning.data.formats import AIHUB_CLASS_NAMES
from fer_lightning.data.synthetic.faces import render_in_frame
from fer_lightning.data.synthetic.output import (
    SyntheticSummary,
    encode_jpeg,
    prepare_output_dir,
    summarise,
    with_progress,
    write_bytes,
    write_manifest,
)
from fer_lightning.data.synthetic.planning import (
    FREQUENCY_ORDER,
    image_rng,
    plan_dataset,
)

# 당황 (embarrassment/panic) is drawn as surprise and 불안 (anxiety) as fear, their closest basic
# expressions. 상처 (hurt) has no basic counterpart: it gets the disgust geometry, the most distinct of
# the remaining ones (lowered brows, narrowed eyes, raised upper lip), so all seven stay separable.
_AIHUB_EXPRESSIONS = ("happiness", "surprise", "anger", "fear", "disgust", "sadness", "neutral")
_AIHUB_BACKGROUNDS = (
    "공공시설&종교&의료시설",
    "교통&이동수단",
    "도심 환경",
    "상업시설&점포&시장",
    "숙박 및 거주공간",
    "자연환경",
    "학교&교육기관",
)
_AIHUB_SPLITS = {
    # split name: (folder, label/source folder tag, JSON file stem)
    "Training": ("Training", "TRAIN", "img_emotion_training_data"),
    "Validation": ("Validation", "VALID", "img_emotion_validation_data"),
}


def write_aihub(
    out_dir: str | os.PathLike,
    num_images: int = 700,
    seed: int = 0,
    validation_fraction: float = 0.1,
    imbalance: float = 1.0,
    label_noise: float = 0.0,
    frame_size: tuple[int, int] = (320, 240),
    face_size_range: tuple[int, int] = (90, 150),
    nuisance: float = 1.0,
    unicode_form: str = "NFC",
    list_boxes: int = 2,
    annotator_disagreement: float = 0.15,
    box_jitter: float = 0.04,
    ampersand_to_underscore: bool = False,
    json_encoding: str = "utf-8",
    train_parts: int = 1,
    progress: bool | None = None,
    overwrite: bool = False,
) -> SyntheticSummary:
    """Write the AI-Hub Korean emotion set in its JSON-per-class release (docs/datasets.md#ai-hub).

    Layout (``<감정>`` is each Korean class name)::

        <out>/Training/[라벨]EMOIMG_<감정>_TRAIN/img_emotion_training_data(<감정>).json
        <out>/Training/[원천]EMOIMG_<감정>_TRAIN_01/<images>        (_01, _02, … with train_parts > 1)
        <out>/Validation/[라벨]EMOIMG_<감정>_VALID/img_emotion_validation_data(<감정>).json
        <out>/Validation/[원천]EMOIMG_<감정>_VALID/<images>

    Each JSON is a top-level list of records ``{filename, gender, age, isProf, faceExp_uploader,
    bg_uploader, annot_A, annot_B, annot_C}`` with ``annot_X = {boxes: {maxX, maxY, minX, minY}, faceExp,
    bg}``. Pictures are ``frame_size`` full frames (real ones are 2-4k pixels; kept small here) with one
    face of ``face_size_range`` pixels; each annotator's box is the true face box plus ``box_jitter``
    (fraction of its side) noise. Images sit in the folder of the uploader's class (``faceExp_uploader``);
    ``label_noise`` corrupts that, while annotators judge the drawn face and disagree with it with
    probability ``annotator_disagreement`` each, so a majority vote mostly recovers the clean label.

    Quirks of the real data, all optional: ``unicode_form="NFD"`` writes folder and file names on disk
    decomposed (as copies unpacked on macOS have them) while the JSON stays NFC; the first
    ``list_boxes`` records store ``boxes`` as a one-element list ``[{...}]``; backgrounds containing ``&``
    put ``&`` into file names (``ampersand_to_underscore`` writes ``_`` on disk instead, as some copies
    have it, while the JSON keeps ``&``); ``json_encoding`` ``"utf-8-sig"`` or ``"euc-kr"`` for the
    encodings some copies use. Split names: ``Training`` and ``Validation``.
    """
    if unicode_form not in ("NFC", "NFD"):
        raise ValueError(f"unicode_form must be 'NFC' or 'NFD', got {unicode_form!r}")
    if not 0.0 <= annotator_disagreement <= 1.0:
        raise ValueError(f"annotator_disagreement is a probability, got {annotator_disagreement}")
    if train_parts < 1:
        raise ValueError(f"train_parts must be at least 1, got {train_parts}")
    started = time.perf_counter()
    root = prepare_output_dir(out_dir, overwrite)
    plan = plan_dataset(
        num_images,
        seed,
        _AIHUB_EXPRESSIONS,
        FREQUENCY_ORDER["aihub"],
        imbalance,
        label_noise,
        train_split="Training",
        eval_splits={"Validation": validation_fraction},
    )

    def on_disk(name: str) -> str:
        return unicodedata.normalize(unicode_form, name)

    records: dict[tuple[str, int], list[dict[str, Any]]] = {}
    files: list[dict[str, Any]] = []
    position_in_class: dict[tuple[str, int], int] = {}
    for item in with_progress(plan, progress, "AI-Hub"):
        rng = image_rng(seed, item.index)
        face_size = int(rng.integers(face_size_range[0], face_size_range[1] + 1))
        rendered, (left, top, side) = render_in_frame(item.expression, rng, face_size, nuisance, frame_size)
        uploader_class = AIHUB_CLASS_NAMES[item.label]
        background = _AIHUB_BACKGROUNDS[int(rng.integers(len(_AIHUB_BACKGROUNDS)))]
        gender = "남" if rng.random() < 0.5 else "여"
        age = int(rng.integers(2, 7)) * 10
        timestamp = f"2020{rng.integers(1, 13):02d}{rng.integers(1, 29):02d}{rng.integers(0, 24):02d}"
        timestamp += f"{rng.integers(0, 60):02d}{rng.integers(0, 60):02d}"
        digest = hashlib.sha256(f"{seed}:{item.index}".encode()).hexdigest()
        sequence = f"{rng.integers(1, 1000):03d}-{rng.integers(1, 1000):03d}"
        filename = f"{digest}_{gender}_{age}_{uploader_class}_{background}_{timestamp}-{sequence}.jpg"

        key = (item.split, item.label)
        position = position_in_class.get(key, 0)
        position_in_class[key] = position + 1
        folder, tag, _ = _AIHUB_SPLITS[item.split]
        part = f"_{1 + position % train_parts:02d}" if item.split == "Training" else ""
        image_dir = f"{folder}/[원천]EMOIMG_{uploader_class}_{tag}{part}"
        disk_name = filename.replace("&", "_") if ampersand_to_underscore else filename
        relative = f"{on_disk(image_dir)}/{on_disk(disk_name)}"
        write_bytes(root / relative, encode_jpeg(rendered.image))

        record: dict[str, Any] = {
            "filename": filename,
            "gender": gender,
            "age": age,
            "isProf": "전문인" if rng.random() < 0.3 else "일반인",
            "faceExp_uploader": uploader_class,
            "bg_uploader": background,
        }
        annotator_labels = []
        for annotator in "ABC":
            if rng.random() < annotator_disagreement:
                judged = (item.clean_label + int(rng.integers(1, len(AIHUB_CLASS_NAMES)))) % len(
                    AIHUB_CLASS_NAMES
                )
            else:
                judged = item.clean_label
            annotator_labels.append(judged)
            jitter = rng.normal(0.0, box_jitter * side, size=4)
            boxes = {
                "maxX": round(float(left + side + jitter[0]), 4),
                "maxY": round(float(top + side + jitter[1]), 4),
                "minX": round(float(left + jitter[2]), 4),
                "minY": round(float(top + jitter[3]), 4),
            }
            record[f"annot_{annotator}"] = {
                "boxes": boxes,
                "faceExp": AIHUB_CLASS_NAMES[judged],
                "bg": background,
            }
        records.setdefault(key, []).append(record)
        files.append(
            {
                "file": relative,
                "filename": filename,
                "split": item.split,
                "label": item.label,
                "clean_label": item.clean_label,
                "annotator_labels": annotator_labels,
                "expression": item.expression,
                "box": [left, top, left + side, top + side],
            }
        )

    # The first ``list_boxes`` records in plan order get the list form some real records have.
    list_form = {file["filename"] for file in files[:list_boxes]}
    for split, (folder, tag, json_stem) in _AIHUB_SPLITS.items():
        for label, class_name in enumerate(AIHUB_CLASS_NAMES):
            split_records = records.get((split, label), [])
            if not split_records:
                continue
            for record in split_records:
                if record["filename"] in list_form:
                    for annotator in "ABC":
                        record[f"annot_{annotator}"]["boxes"] = [record[f"annot_{annotator}"]["boxes"]]
            label_dir = root / on_disk(f"{folder}/[라벨]EMOIMG_{class_name}_{tag}")
            label_dir.mkdir(parents=True, exist_ok=True)
            text = json.dumps(split_records, ensure_ascii=False, indent=1)
            (label_dir / on_disk(f"{json_stem}({class_name}).json")).write_bytes(text.encode(json_encoding))

    summary = summarise("aihub", root, seed, AIHUB_CLASS_NAMES, plan, started)
    parameters = dict(
        num_images=num_images,
        validation_fraction=validation_fraction,
        imbalance=imbalance,
        label_noise=label_noise,
        frame_size=list(frame_size),
        face_size_range=list(face_size_range),
        nuisance=nuisance,
        unicode_form=unicode_form,
        list_boxes=list_boxes,
        annotator_disagreement=annotator_disagreement,
        box_jitter=box_jitter,
        ampersand_to_underscore=ampersand_to_underscore,
        json_encoding=json_encoding,
        train_parts=train_parts,
    )
    write_manifest(summary, parameters, files, {"list_form_boxes": sorted(list_form)})
    return summary
