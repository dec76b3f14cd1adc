"""Synthetic FER2013 (Kaggle's pixel CSV) and FER+ (Microsoft's ten-vote relabelling of it)."""

from __future__ import annotations

import csv
import os
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from fer_lightning.data.formats import FER2013_CLASS_NAMES, FERPLUS_CLASS_NAMES, FERPLUS_HEADER
from fer_lightning.data.synthetic.expressions import EXPRESSIONS
from fer_lightning.data.synthetic.faces import render_face, render_no_face
from fer_lightning.data.synthetic.output import (
    SyntheticSummary,
    prepare_output_dir,
    summarise,
    with_progress,
    write_manifest,
)
from fer_lightning.data.synthetic.planning import (
    EXTRA_STREAM,
    FREQUENCY_ORDER,
    PlannedImage,
    image_rng,
    plan_dataset,
)

_FER2013_EXPRESSIONS = ("anger", "disgust", "fear", "happiness", "sadness", "surprise", "neutral")
_FER_IMAGE_SIZE = 48
_FERPLUS_VOTERS = 10

# Which classes crowd workers confuse a face with, for FER+'s vote distributions.
_FERPLUS_CONFUSIONS = {
    "neutral": ("sadness", "contempt"),
    "happiness": ("neutral", "surprise"),
    "surprise": ("fear", "happiness"),
    "sadness": ("neutral", "fear"),
    "anger": ("disgust", "contempt"),
    "disgust": ("anger", "contempt"),
    "fear": ("surprise", "sadness"),
    "contempt": ("neutral", "disgust"),
}


def _fer_pixels(image: np.ndarray) -> str:
    """48×48 RGB → FER2013's space-separated grey pixel string."""
    grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    return " ".join(map(str, grey.reshape(-1).tolist()))


def _fer_plan(
    num_images: int,
    seed: int,
    class_expressions: Sequence[str],
    frequency_order: Sequence[str],
    imbalance: float,
    label_noise: float,
    public_test_fraction: float,
    private_test_fraction: float,
) -> list[PlannedImage]:
    return plan_dataset(
        num_images,
        seed,
        class_expressions,
        frequency_order,
        imbalance,
        label_noise,
        train_split="Training",
        eval_splits={"PublicTest": public_test_fraction, "PrivateTest": private_test_fraction},
    )


def _write_fer2013_csv(path: Path, rows: Iterable[tuple[int, str, str]]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(("emotion", "pixels", "Usage"))
        writer.writerows(rows)


def write_fer2013(
    out_dir: str | os.PathLike,
    num_images: int = 700,
    seed: int = 0,
    public_test_fraction: float = 0.1,
    private_test_fraction: float = 0.1,
    imbalance: float = 4.0,
    label_noise: float = 0.0,
    nuisance: float = 1.0,
    progress: bool | None = None,
    overwrite: bool = False,
) -> SyntheticSummary:
    """Write ``<out>/fer2013.csv`` as Kaggle ships it (docs/datasets.md#fer2013).

    Header ``emotion,pixels,Usage``; ``emotion`` in FER2013 order (0 Angry … 6 Neutral), ``pixels``
    2,304 space-separated grey values of a 48×48 face, ``Usage`` Training, PublicTest or PrivateTest
    (rows in that order, as in the real file; real proportions are about 80/10/10). Split names are the
    Usage values.
    """
    started = time.perf_counter()
    root = prepare_output_dir(out_dir, overwrite)
    plan = _fer_plan(
        num_images,
        seed,
        _FER2013_EXPRESSIONS,
        FREQUENCY_ORDER["fer2013"],
        imbalance,
        label_noise,
        public_test_fraction,
        private_test_fraction,
    )
    rows = []
    for item in with_progress(plan, progress, "FER2013"):
        image = render_face(item.expression, image_rng(seed, item.index), _FER_IMAGE_SIZE, nuisance)
        rows.append((item.label, _fer_pixels(image), item.split))
    _write_fer2013_csv(root / "fer2013.csv", rows)
    summary = summarise("fer2013", root, seed, FER2013_CLASS_NAMES, plan, started)
    parameters = dict(
        num_images=num_images,
        public_test_fraction=public_test_fraction,
        private_test_fraction=private_test_fraction,
        imbalance=imbalance,
        label_noise=label_noise,
        nuisance=nuisance,
    )
    files = [
        {
            "row": row,
            "split": item.split,
            "label": item.label,
            "clean_label": item.clean_label,
            "expression": item.expression,
        }
        for row, item in enumerate(plan)
    ]
    write_manifest(summary, parameters, files)
    return summary


def _ferplus_votes(expression: str, rng: np.random.Generator) -> list[int]:
    """Ten crowd votes (8 classes, unknown, NF) whose strict majority is ``expression``."""
    num_columns = len(FERPLUS_CLASS_NAMES) + 2
    target = FERPLUS_CLASS_NAMES.index(expression)
    agreement = rng.uniform(0.45, 0.95)
    probabilities = np.full(num_columns, 0.0)
    probabilities[target] = agreement
    for confused in _FERPLUS_CONFUSIONS[expression]:
        probabilities[FERPLUS_CLASS_NAMES.index(confused)] = 0.35 * (1.0 - agreement)
    probabilities[: len(FERPLUS_CLASS_NAMES)] += 0.25 * (1.0 - agreement) / len(FERPLUS_CLASS_NAMES)
    probabilities[-2] = 0.05 * (1.0 - agreement)  # unknown
    probabilities /= probabilities.sum()
    votes = rng.multinomial(_FERPLUS_VOTERS, probabilities)
    # Move votes from the strongest rival until the drawn class holds a strict majority (plurality).
    while votes[target] <= np.delete(votes, target).max():
        rival = int(np.argmax(np.where(np.arange(num_columns) == target, -1, votes)))
        votes[rival] -= 1
        votes[target] += 1
    return [int(vote) for vote in votes]


def write_ferplus(
    out_dir: str | os.PathLike,
    num_images: int = 700,
    seed: int = 0,
    public_test_fraction: float = 0.1,
    private_test_fraction: float = 0.1,
    imbalance: float = 4.0,
    label_noise: float = 0.0,
    nuisance: float = 1.0,
    not_face_rows: int = 3,
    unknown_rows: int = 2,
    progress: bool | None = None,
    overwrite: bool = False,
) -> SyntheticSummary:
    """Write FER2013 plus Microsoft's FER+ label file (docs/datasets.md#fer2013).

    Layout::

        <out>/fer2013.csv       emotion,pixels,Usage (as :func:`write_fer2013`)
        <out>/fer2013new.csv    Usage,Image name,neutral,happiness,surprise,sadness,anger,disgust,fear,
                                contempt,unknown,NF — one row per fer2013.csv row, in the same order

    Each FER+ row holds ten annotators' votes (summing to 10) and the image name ``fer%07d.png`` of its
    row index. Classes are planned in FER+ order (8, with contempt); the drawn class always holds the
    strict plurality of votes. The FER2013 ``emotion`` column gets the FER2013 id of the drawn class
    (contempt, absent from FER2013, becomes Disgust); ``label_noise`` corrupts that column only, mimicking
    the noisy original labels that FER+ re-annotated — the votes stay truthful.

    Extra rows a FER+ reader must drop, placed at seeded positions among the Training rows: ``not_face_rows``
    with an empty image name and all ten votes on NF (Microsoft's script skips rows without a name),
    and ``unknown_rows`` whose plurality is ``unknown``. Split names are the Usage values; the summary's
    ``num_noisy_labels`` counts corrupted FER2013 labels.
    """
    started = time.perf_counter()
    root = prepare_output_dir(out_dir, overwrite)
    plan = _fer_plan(
        num_images,
        seed,
        FERPLUS_CLASS_NAMES,
        FREQUENCY_ORDER["ferplus"],
        imbalance,
        0.0,
        public_test_fraction,
        private_test_fraction,
    )
    noise_rng = np.random.default_rng([seed, EXTRA_STREAM, 0])
    training = [item.index for item in plan if item.split == "Training"]
    num_corrupted = round(label_noise * len(training))
    corrupted = set(noise_rng.choice(training, size=num_corrupted, replace=False).tolist())

    # Rows: (kind, planned image or None). The plan lists Training first, so the Training block is the
    # first ``training_rows`` rows; extra rows go to random places inside it.
    rows: list[tuple[str, PlannedImage | None]] = [("image", item) for item in plan]
    training_rows = len(training)
    for kind, count in (("not_face", not_face_rows), ("unknown", unknown_rows)):
        for _ in range(count):
            rows.insert(int(noise_rng.integers(training_rows + 1)), (kind, None))
            training_rows += 1

    fer_rows: list[tuple[int, str, str]] = []
    ferplus_rows: list[list[Any]] = []
    files: list[dict[str, Any]] = []
    extra_index = 0
    for row_index, (kind, item) in enumerate(with_progress(rows, progress, "FER+")):
        image_name = f"fer{row_index:07d}.png"
        if item is not None:
            rng = image_rng(seed, item.index)
            image = render_face(item.expression, rng, _FER_IMAGE_SIZE, nuisance)
            votes = _ferplus_votes(item.expression, rng)
            fer_label = _FER2013_EXPRESSIONS.index(
                "disgust" if item.expression == "contempt" else item.expression
            )
            if item.index in corrupted:
                fer_label = (fer_label + int(rng.integers(1, len(FER2013_CLASS_NAMES)))) % len(
                    FER2013_CLASS_NAMES
                )
            usage = item.split
            files.append(
                {
                    "row": row_index,
                    "image_name": image_name,
                    "split": usage,
                    "label": item.label,
                    "clean_label": item.clean_label,
                    "fer2013_label": fer_label,
                    "votes": votes,
                    "expression": item.expression,
                }
            )
        else:
            rng = np.random.default_rng([seed, EXTRA_STREAM, 1, extra_index])
            extra_index += 1
            usage = "Training"
            fer_label = int(rng.integers(len(FER2013_CLASS_NAMES)))
            if kind == "not_face":
                image = render_no_face(rng, _FER_IMAGE_SIZE, _FER_IMAGE_SIZE, nuisance)
                votes = [0] * len(FERPLUS_CLASS_NAMES) + [0, _FERPLUS_VOTERS]
                image_name = ""
            else:
                image = render_face(
                    EXPRESSIONS[int(rng.integers(len(EXPRESSIONS)))], rng, _FER_IMAGE_SIZE, nuisance
                )
                unknown = int(rng.integers(6, 9))
                spread = rng.multinomial(_FERPLUS_VOTERS - unknown, np.full(len(FERPLUS_CLASS_NAMES), 0.125))
                votes = [int(vote) for vote in spread] + [unknown, 0]
        fer_rows.append((fer_label, _fer_pixels(image), usage))
        ferplus_rows.append([usage, image_name, *votes])

    _write_fer2013_csv(root / "fer2013.csv", fer_rows)
    with open(root / "fer2013new.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(FERPLUS_HEADER)
        writer.writerows(ferplus_rows)

    summary = summarise(
        "ferplus", root, seed, FERPLUS_CLASS_NAMES, plan, started, not_face_rows + unknown_rows
    )
    summary.num_noisy_labels = len(corrupted)
    parameters = dict(
        num_images=num_images,
        public_test_fraction=public_test_fraction,
        private_test_fraction=private_test_fraction,
        imbalance=imbalance,
        label_noise=label_noise,
        nuisance=nuisance,
        not_face_rows=not_face_rows,
        unknown_rows=unknown_rows,
    )
    invalid = [{"row": index, "reason": kind} for index, (kind, _) in enumerate(rows) if kind != "image"]
    write_manifest(
        summary,
        parameters,
        files,
        {"invalid_rows": invalid, "fer2013_class_names": list(FER2013_CLASS_NAMES)},
    )
    return summary
