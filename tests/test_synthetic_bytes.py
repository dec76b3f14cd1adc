"""The synthetic writers' output, byte for byte, pinned to recorded digests.

Any change to the renderer, the planner or a writer that alters a single written byte fails here; such a
change must also bump ``GENERATOR_VERSION`` (so cached datasets are regenerated) and re-record these
digests. The digests hold for the numpy and OpenCV versions pinned in ``constraints.txt`` (JPEG bytes
depend on the encoder build).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from fer_lightning.data.synthetic import write_synthetic

# Small but exercising every option that changes what is written (noise, imbalance, invalid rows, quirks).
CASES = {
    "rafdb": dict(num_images=10, seed=1, image_size=40, label_noise=0.2, imbalance=2.0),
    "affectnet_csv": dict(num_images=10, seed=2, face_size=32, invalid_rows=5, label_noise=0.2),
    "affectnet_npy": dict(num_images=10, seed=3, image_size=32, val_dir_name="valid_set"),
    "affectnet_npy_int": dict(num_images=8, seed=3, image_size=32, exp_dtype="int"),
    "aihub": dict(num_images=9, seed=4, frame_size=(96, 80), face_size_range=(40, 60), train_parts=2),
    "aihub_quirks": dict(
        num_images=8,
        seed=5,
        frame_size=(96, 80),
        face_size_range=(40, 60),
        unicode_form="NFD",
        ampersand_to_underscore=True,
        json_encoding="euc-kr",
        label_noise=0.3,
    ),
    "fer2013": dict(num_images=10, seed=6, label_noise=0.2),
    "ferplus": dict(num_images=10, seed=7, label_noise=0.2, not_face_rows=2, unknown_rows=2),
}

RECORDED = {
    "affectnet_csv": "658af9054a46a65efa3c1694e9538db6ff65a2e0fa4e67cf8d19373a871091a0",
    "affectnet_npy": "a0be5203a8dff53b97b0e497ed7ca0c73adcdf5433580c3b868710edc25e7ca4",
    "affectnet_npy_int": "e6fe2fa02f8b9adb2adfc0c59c4c88b4760e7587afbbd977c0f7222fb39039ab",
    "aihub": "bd28c3d470cddb3a5d1164d498810356ab5f8337adfb7ed3d5616bdd088e7956",
    "aihub_quirks": "cd1324f8464839dd81161435ba19f5777ba6922a1780c0abd0857bedcd5e5bf7",
    "fer2013": "4ba85b0ea74b6aef241999673e339a5ecbb3d7b04f9df6f6d34c7f2ea019418a",
    "ferplus": "7904a6155d5580473149eef6e42bf708e3756b090c850a6caa7cbf949da78bc4",
    "rafdb": "63e3a6a242690955672490dda182925a11a6c0c3184a386fc0bf253d473b6fd2",
}


def tree_sha256(root: Path) -> str:
    """One digest over every file under ``root``: sorted relative paths and their bytes."""
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*"), key=lambda path: path.relative_to(root).as_posix()):
        if path.is_file():
            digest.update(path.relative_to(root).as_posix().encode("utf-8") + b"\0")
            digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


@pytest.mark.parametrize("case", sorted(CASES))
def test_writer_bytes_unchanged(tmp_path, case):
    fmt = case.removesuffix("_int").removesuffix("_quirks")
    options = dict(CASES[case])
    summary = write_synthetic(fmt, tmp_path / case, progress=False, **options)
    assert tree_sha256(summary.root) == RECORDED[case]
