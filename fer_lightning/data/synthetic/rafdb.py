"""Synthetic RAF-DB "basic": aligned faces and the EmoLabel list file."""

from __future__ import annotations

import os
import time

from fer_lightning.data.formats import RAFDB_CLASS_NAMES, RAFDB_IMAGE_DIR, RAFDB_LIST_FILE
from fer_lightning.data.synthetic.faces import render_face
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

RAFDB_EXPRESSIONS = ("surprise", "fear", "disgust", "happiness", "sadness", "anger", "neutral")


def write_rafdb(
    out_dir: str | os.PathLike,
    num_images: int = 600,
    seed: int = 0,
    test_fraction: float = 0.2,
    imbalance: float = 3.0,
    label_noise: float = 0.0,
    image_size: int = 100,
    nuisance: float = 1.0,
    progress: bool | None = None,
    overwrite: bool = False,
) -> SyntheticSummary:
    """Write a RAF-DB "basic" dataset exactly as shipped (docs/datasets.md#raf-db).

    Layout::

        <out>/EmoLabel/list_patition_label.txt    train_00001.jpg 5 ... then test_0001.jpg 7 ...
        <out>/Image/aligned/train_00001_aligned.jpg   (image_size × image_size, RGB JPEG)

    Labels are RAF ids 1..7 (Surprise, Fear, Disgust, Happiness, Sadness, Anger, Neutral). The real
    test split is 20 % of the basic set, hence the default ``test_fraction``; ``imbalance`` is the ratio
    of the most (Happiness) to the least (Fear) frequent class; ``label_noise`` flips that fraction of
    training labels to another class (the manifest keeps the clean ones).
    """
    started = time.perf_counter()
    root = prepare_output_dir(out_dir, overwrite)
    plan = plan_dataset(
        num_images,
        seed,
        RAFDB_EXPRESSIONS,
        FREQUENCY_ORDER["rafdb"],
        imbalance,
        label_noise,
        train_split="train",
        eval_splits={"test": test_fraction},
    )
    counters = {"train": 0, "test": 0}
    digits = {"train": 5, "test": 4}  # upstream numbering: train_00001.jpg, test_0001.jpg
    names = []
    for item in plan:
        counters[item.split] += 1
        names.append(f"{item.split}_{counters[item.split]:0{digits[item.split]}d}.jpg")

    for item, name in zip(with_progress(plan, progress, "RAF-DB"), names):
        image = render_face(item.expression, image_rng(seed, item.index), image_size, nuisance)
        stem = name[: -len(".jpg")]
        write_bytes(root / RAFDB_IMAGE_DIR / f"{stem}_aligned.jpg", encode_jpeg(image))

    list_file = root / RAFDB_LIST_FILE
    list_file.parent.mkdir(parents=True, exist_ok=True)
    # Training lines first, then test, each in numbering order: the plan is already in that order.
    list_file.write_text("".join(f"{name} {item.label + 1}\n" for item, name in zip(plan, names)))

    summary = summarise("rafdb", root, seed, RAFDB_CLASS_NAMES, plan, started)
    parameters = dict(
        num_images=num_images,
        test_fraction=test_fraction,
        imbalance=imbalance,
        label_noise=label_noise,
        image_size=image_size,
        nuisance=nuisance,
    )
    files = [
        {
            "file": name,
            "image": f"{RAFDB_IMAGE_DIR}/{name[:-4]}_aligned.jpg",
            "split": item.split,
            "label": item.label,
            "clean_label": item.clean_label,
            "expression": item.expression,
        }
        for item, name in zip(plan, names)
    ]
    write_manifest(summary, parameters, files)
    return summary
