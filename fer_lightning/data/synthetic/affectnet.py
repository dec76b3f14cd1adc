"""Synthetic AffectNet in both releases: the original CSV lists and the newer npy annotations."""

from __future__ import annotations

import csv
import hashlib
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from fer_lightning.data.formats import (
    AFFECTNET_CLASS_NAMES,
    AFFECTNET_CSV_HEADER,
    AFFECTNET_CSV_IMAGE_DIR,
    AFFECTNET_CSV_LIST_DIR,
)
from fer_lightning.data.synthetic.expressions import EXPRESSIONS
from fer_lightning.data.synthetic.faces import render_face_with_landmarks, render_in_frame
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
    EXTRA_STREAM,
    FREQUENCY_ORDER,
    image_rng,
    plan_dataset,
)

# Valence/arousal centres of each expression (circumplex model), for AffectNet's continuous labels.
_VALENCE_AROUSAL = {
    "neutral": (0.0, 0.0),
    "happiness": (0.7, 0.35),
    "sadness": (-0.6, -0.3),
    "surprise": (0.2, 0.75),
    "fear": (-0.5, 0.7),
    "disgust": (-0.65, 0.35),
    "anger": (-0.6, 0.65),
    "contempt": (-0.45, 0.25),
}


def _valence_arousal(expression: str | None, rng: np.random.Generator) -> tuple[float, float]:
    if expression is None:
        return -2.0, -2.0  # AffectNet marks faceless pictures with -2
    centre = np.array(_VALENCE_AROUSAL[expression])
    valence, arousal = np.clip(centre + rng.normal(0.0, 0.15, size=2), -1.0, 1.0)
    return round(float(valence), 6), round(float(arousal), 6)


_AFFECTNET_EXPRESSIONS = (
    "neutral",
    "happiness",
    "sadness",
    "surprise",
    "fear",
    "disgust",
    "anger",
    "contempt",
)

# Kinds of invalid rows a reader must drop, cycled through when writing ``invalid_rows`` of them.
_AFFECTNET_INVALID_KINDS = ("none", "uncertain", "no_face", "zero_width_box", "negative_width_box")


def _affectnet_file_name(seed: int, key: str) -> str:
    """56 hex digits, like the real release's file names (which look like SHA-224 digests)."""
    return hashlib.sha224(f"{seed}:{key}".encode()).hexdigest() + ".jpg"


def write_affectnet_csv(
    out_dir: str | os.PathLike,
    num_images: int = 800,
    seed: int = 0,
    validation_fraction: float = 0.1,
    imbalance: float = 5.0,
    label_noise: float = 0.0,
    face_size: int = 96,
    nuisance: float = 1.0,
    invalid_rows: int = 5,
    progress: bool | None = None,
    overwrite: bool = False,
) -> SyntheticSummary:
    """Write AffectNet's original CSV release (docs/datasets.md#affectnet).

    Layout::

        <out>/Manually_Annotated_file_lists/training.csv     header: subDirectory_filePath,face_x,...
        <out>/Manually_Annotated_file_lists/validation.csv
        <out>/Manually_Annotated_Images/<subDirectory>/<56 hex digits>.jpg

    Each picture is a face inside a larger frame; ``face_x, face_y, face_width, face_height`` is its
    square face box (``face_size`` pixels), ``facial_landmarks`` 68 ``x;y`` points on the drawn face,
    ``expression`` the AffectNet id 0..7 (all 8 classes are written; 7-class readers drop Contempt),
    ``valence``/``arousal`` in [-1, 1]. Validation is balanced per class, as the real one (500 each).

    ``num_images`` counts the valid labelled rows. Each CSV also gets ``invalid_rows`` extra rows a
    reader must drop, cycling through: expression 8 (None), 9 (Uncertain), 10 (No-Face, a picture
    without a face, valence/arousal -2), ``face_width`` 0 and ``face_width`` -1. Their images exist.
    Split names in the summary and manifest: ``training`` and ``validation`` (the CSV stems).
    """
    started = time.perf_counter()
    root = prepare_output_dir(out_dir, overwrite)
    plan = plan_dataset(
        num_images,
        seed,
        _AFFECTNET_EXPRESSIONS,
        FREQUENCY_ORDER["affectnet"],
        imbalance,
        label_noise,
        train_split="training",
        eval_splits={"validation": validation_fraction},
        balanced_eval=True,
    )
    rows: dict[str, list[list[Any]]] = {"training": [], "validation": []}
    files: list[dict[str, Any]] = []
    for item in with_progress(plan, progress, "AffectNet (CSV)"):
        rng = image_rng(seed, item.index)
        relative = f"{1 + item.index % 10}/{_affectnet_file_name(seed, str(item.index))}"
        row = _affectnet_csv_row(root, relative, item.expression, item.label, rng, face_size, nuisance)
        rows[item.split].append(row)
        files.append(
            {
                "file": relative,
                "split": item.split,
                "label": item.label,
                "clean_label": item.clean_label,
                "expression": item.expression,
                "box": row[1:5],
            }
        )

    invalid: list[dict[str, Any]] = []
    extra_rng = np.random.default_rng([seed, EXTRA_STREAM])
    for split in ("training", "validation"):
        for position in range(invalid_rows):
            kind = _AFFECTNET_INVALID_KINDS[position % len(_AFFECTNET_INVALID_KINDS)]
            key = f"{split}-invalid-{position}"
            rng = np.random.default_rng([seed, EXTRA_STREAM, len(invalid)])
            relative = f"{1 + len(invalid) % 10}/{_affectnet_file_name(seed, key)}"
            expression = None if kind == "no_face" else EXPRESSIONS[int(rng.integers(len(EXPRESSIONS)))]
            non_expression_ids = {"none": 8, "uncertain": 9, "no_face": 10}
            if kind in non_expression_ids:
                label = non_expression_ids[kind]
            else:  # a valid expression with a broken face box
                label = _AFFECTNET_EXPRESSIONS.index(expression)
            row = _affectnet_csv_row(root, relative, expression, label, rng, face_size, nuisance)
            if kind == "zero_width_box":
                row[3] = 0
            elif kind == "negative_width_box":
                row[3] = -1
            # Real files interleave these with valid rows; put each at a seeded random position.
            rows[split].insert(int(extra_rng.integers(len(rows[split]) + 1)), row)
            invalid.append({"file": relative, "split": split, "reason": kind, "expression_id": label})

    list_dir = root / AFFECTNET_CSV_LIST_DIR
    list_dir.mkdir(parents=True, exist_ok=True)
    for split, split_rows in rows.items():
        with open(list_dir / f"{split}.csv", "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle, lineterminator="\n")
            writer.writerow(AFFECTNET_CSV_HEADER)
            writer.writerows(split_rows)

    summary = summarise("affectnet_csv", root, seed, AFFECTNET_CLASS_NAMES, plan, started, len(invalid))
    parameters = dict(
        num_images=num_images,
        validation_fraction=validation_fraction,
        imbalance=imbalance,
        label_noise=label_noise,
        face_size=face_size,
        nuisance=nuisance,
        invalid_rows=invalid_rows,
    )
    write_manifest(summary, parameters, files, {"invalid_rows": invalid})
    return summary


def _affectnet_csv_row(
    root: Path,
    relative: str,
    expression: str | None,
    label: int,
    rng: np.random.Generator,
    face_size: int,
    nuisance: float,
) -> list[Any]:
    """Render one framed face, save it under ``Manually_Annotated_Images/`` and return its CSV row."""
    rendered, (left, top, side) = render_in_frame(expression, rng, face_size, nuisance)
    write_bytes(root / AFFECTNET_CSV_IMAGE_DIR / relative, encode_jpeg(rendered.image))
    landmarks = ";".join(f"{value:.2f}" for value in rendered.landmarks.reshape(-1)) if expression else ""
    valence, arousal = _valence_arousal(expression, rng)
    return [relative, int(left), int(top), int(side), int(side), landmarks, label, valence, arousal]


def write_affectnet_npy(
    out_dir: str | os.PathLike,
    num_images: int = 800,
    seed: int = 0,
    validation_fraction: float = 0.1,
    imbalance: float = 5.0,
    label_noise: float = 0.0,
    image_size: int = 112,
    nuisance: float = 1.0,
    val_dir_name: str = "val_set",
    exp_dtype: str = "str",
    progress: bool | None = None,
    overwrite: bool = False,
) -> SyntheticSummary:
    """Write AffectNet's newer npy-annotation release (docs/datasets.md#affectnet).

    Layout::

        <out>/train_set/images/<id>.jpg                  aligned faces (real: 224×224; here image_size)
        <out>/train_set/annotations/<id>_exp.npy         expression id 0..7
        <out>/train_set/annotations/<id>_val.npy         valence
        <out>/train_set/annotations/<id>_aro.npy         arousal
        <out>/train_set/annotations/<id>_lnd.npy         68 landmarks, float64 (136,) = x1, y1, x2, y2, ...
        <out>/val_set/...                                same; ``val_dir_name="valid_set"`` for POSTER's name

    The real files hold 0-d numpy *string* arrays (``np.array('3')``, dtype ``<U1``; valence and arousal
    likewise as decimal strings), which ``int(np.load(f))`` / ``float(np.load(f))`` read; that is the
    default here. ``exp_dtype="int"`` writes 0-d int64 arrays instead, for readers that must accept both.
    Ids are numbered from 0 within each split. Validation is balanced per class. Split names: ``train``
    and ``val``.
    """
    if exp_dtype not in ("str", "int"):
        raise ValueError(f"exp_dtype must be 'str' or 'int', got {exp_dtype!r}")
    if val_dir_name not in ("val_set", "valid_set"):
        raise ValueError(f"val_dir_name must be 'val_set' or 'valid_set', got {val_dir_name!r}")
    started = time.perf_counter()
    root = prepare_output_dir(out_dir, overwrite)
    plan = plan_dataset(
        num_images,
        seed,
        _AFFECTNET_EXPRESSIONS,
        FREQUENCY_ORDER["affectnet"],
        imbalance,
        label_noise,
        train_split="train",
        eval_splits={"val": validation_fraction},
        balanced_eval=True,
    )
    split_dirs = {"train": "train_set", "val": val_dir_name}
    next_id = {"train": 0, "val": 0}
    files: list[dict[str, Any]] = []
    for item in with_progress(plan, progress, "AffectNet (npy)"):
        rng = image_rng(seed, item.index)
        rendered = render_face_with_landmarks(item.expression, rng, image_size, nuisance)
        valence, arousal = _valence_arousal(item.expression, rng)
        image_id = next_id[item.split]
        next_id[item.split] += 1
        split_dir = root / split_dirs[item.split]
        write_bytes(split_dir / "images" / f"{image_id}.jpg", encode_jpeg(rendered.image))
        annotations = split_dir / "annotations"
        annotations.mkdir(parents=True, exist_ok=True)
        if exp_dtype == "str":
            expression_array = np.array(str(item.label))
            valence_array, arousal_array = np.array(repr(valence)), np.array(repr(arousal))
        else:
            expression_array = np.array(item.label, dtype=np.int64)
            valence_array, arousal_array = np.array(valence), np.array(arousal)
        np.save(annotations / f"{image_id}_exp.npy", expression_array)
        np.save(annotations / f"{image_id}_val.npy", valence_array)
        np.save(annotations / f"{image_id}_aro.npy", arousal_array)
        np.save(annotations / f"{image_id}_lnd.npy", rendered.landmarks.reshape(-1).astype(np.float64))
        files.append(
            {
                "file": f"{split_dirs[item.split]}/images/{image_id}.jpg",
                "split": item.split,
                "label": item.label,
                "clean_label": item.clean_label,
                "expression": item.expression,
            }
        )
    summary = summarise("affectnet_npy", root, seed, AFFECTNET_CLASS_NAMES, plan, started)
    parameters = dict(
        num_images=num_images,
        validation_fraction=validation_fraction,
        imbalance=imbalance,
        label_noise=label_noise,
        image_size=image_size,
        nuisance=nuisance,
        val_dir_name=val_dir_name,
        exp_dtype=exp_dtype,
    )
    write_manifest(summary, parameters, files)
    return summary
