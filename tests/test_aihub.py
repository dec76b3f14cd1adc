"""AI-Hub Korean emotion images: Hangul names in NFC and NFD, JSON quirks, annotator boxes, crop cache."""

import glob
import json
import os
import unicodedata
from collections import Counter

import numpy as np
import pytest
from cli_helpers import fast_dev_run, finite_metrics

from fer_lightning.data import AIHubKoreanDataModule, io
from fer_lightning.data.aihub import AIHUB_CLASS_NAMES, closest_pair_box, decode_json_bytes, parse_box
from fer_lightning.data.io import crop_face, nfc, read_rgb
from fer_lightning.data.synthetic import read_manifest, write_synthetic

SPLITS = {"Training": ("train", "val"), "Validation": ("test",)}
WRITER_VARIANTS = {
    "nfc": dict(unicode_form="NFC"),
    "nfd-euckr-underscore": dict(unicode_form="NFD", json_encoding="euc-kr", ampersand_to_underscore=True),
    "bom-parts": dict(unicode_form="NFC", json_encoding="utf-8-sig", train_parts=2),
}


@pytest.fixture(scope="module", params=list(WRITER_VARIANTS))
def aihub_root(request, tmp_path_factory):
    root = tmp_path_factory.mktemp(f"aihub-{request.param}")
    write_synthetic(
        "aihub", root, num_images=56, seed=8, list_boxes=2, progress=False, **WRITER_VARIANTS[request.param]
    )
    return root


@pytest.fixture(scope="module")
def nfc_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("aihub-plain")
    write_synthetic("aihub", root, num_images=56, seed=8, annotator_disagreement=0.6, progress=False)
    return root


def _datamodule(root, tmp_path, **kwargs):
    options = dict(
        batch_size=4, num_workers=0, img_size=32, val_fraction=0.2, crop_cache_dir=str(tmp_path / "crops")
    )
    options.update(kwargs)
    datamodule = AIHubKoreanDataModule(root=str(root), **options)
    datamodule.setup("fit")
    return datamodule


def _by_file(datamodule, root, splits):
    """NFC relative path → (label, crop source) over ``splits``."""
    return {
        nfc(source.path.relative_to(root).as_posix()): (int(label), source)
        for split in splits
        for source, label in zip(datamodule.tables[split].sources, datamodule.tables[split].labels)
    }


def _majority_or_uploader(file):
    label, count = Counter(file["annotator_labels"]).most_common(1)[0]
    return label if count >= 2 else file["label"]


def test_round_trip_in_every_form_the_set_ships(aihub_root, tmp_path):
    manifest = read_manifest(aihub_root)
    datamodule = _datamodule(aihub_root, tmp_path)
    assert datamodule.class_names == list(AIHUB_CLASS_NAMES) == manifest["class_names"]
    uploader = _datamodule(aihub_root, tmp_path, label_source="uploader")
    for folder, splits in SPLITS.items():
        written = {nfc(f["file"]): f for f in manifest["files"] if f["split"] == folder}
        read = _by_file(datamodule, aihub_root, splits)
        assert read.keys() == written.keys()
        for key, (label, source) in read.items():
            file = written[key]
            assert label == _majority_or_uploader(file)
            # Annotator A's box: the drawn face's box plus a few pixels of annotator jitter.
            side = file["box"][2] - file["box"][0]
            assert np.abs(np.subtract(source.box, file["box"])).max() < 0.25 * side
        assert {k: label for k, (label, _) in _by_file(uploader, aihub_root, splits).items()} == {
            k: f["label"] for k, f in written.items()
        }
    assert len(datamodule.tables["test"]) == manifest["split_sizes"]["Validation"]


def test_nfd_names_on_disk_are_matched(tmp_path):
    root = tmp_path / "nfd"
    write_synthetic(
        "aihub", root, num_images=21, seed=9, validation_fraction=0.3, unicode_form="NFD", progress=False
    )
    on_disk = os.listdir(root / "Training")
    # The test is only meaningful if the names on disk really are decomposed.
    assert all(
        unicodedata.is_normalized("NFD", name) and not unicodedata.is_normalized("NFC", name)
        for name in on_disk
    )
    assert "[라벨]EMOIMG_기쁨_TRAIN" not in on_disk and nfc(on_disk[0]) != on_disk[0]
    # …and that glob on the bracketed folder names finds nothing, which is why the reader never globs.
    assert glob.glob(str(root / "Training" / "[라벨]EMOIMG_*")) == []
    datamodule = _datamodule(root, tmp_path)
    assert sum(len(table) for table in datamodule.tables.values()) == 21


def test_list_form_boxes_and_ampersands_are_read(nfc_root, tmp_path):
    manifest = read_manifest(nfc_root)
    assert len(manifest["list_form_boxes"]) == 2
    datamodule = _datamodule(nfc_root, tmp_path)
    read_names = {nfc(source.path.name) for table in datamodule.tables.values() for source in table.sources}
    assert set(manifest["list_form_boxes"]) <= read_names
    assert any("&" in name for name in read_names)


def test_label_sources(nfc_root, tmp_path):
    manifest = read_manifest(nfc_root)
    files = {nfc(f["file"]): f for f in manifest["files"]}
    annotator_b = _datamodule(nfc_root, tmp_path, label_source="annotator", annotator="B")
    for key, (label, _) in _by_file(annotator_b, nfc_root, ("train", "val", "test")).items():
        assert label == files[key]["annotator_labels"][1]
    strict = _datamodule(nfc_root, tmp_path, label_source="majority")
    no_majority = sum(len(set(f["annotator_labels"])) == 3 for f in manifest["files"])
    assert no_majority > 0  # annotator_disagreement=0.6 makes some
    assert sum(c["no annotator majority"] for c in strict.dropped_rows.values()) == no_majority
    with pytest.raises(ValueError, match=r"label_source=annotator needs data\.annotator A, B or C"):
        AIHubKoreanDataModule(root=str(nfc_root), label_source="annotator", annotator="closest_pair")


def test_box_helpers():
    assert parse_box({"minX": 1, "minY": 2, "maxX": 11, "maxY": 22}) == (1, 2, 11, 22)
    assert parse_box([{"minX": 1, "minY": 2, "maxX": 11, "maxY": 22}]) == (1, 2, 11, 22)
    assert parse_box({"minX": 11, "minY": 2, "maxX": 1, "maxY": 22}) is None  # max < min
    assert parse_box({"minX": 1, "minY": 2, "maxX": 11}) is None
    assert parse_box([]) is None
    boxes = [(0, 0, 10, 10), (1, 1, 11, 11), (50, 50, 90, 90)]  # the third annotator is off
    assert closest_pair_box(boxes) == (0.5, 0.5, 10.5, 10.5)
    assert decode_json_bytes("기쁨".encode("euc-kr")) == "기쁨"
    assert decode_json_bytes("\ufeff기쁨".encode()) == "기쁨"


def test_crop_uses_the_annotator_box_with_margin_and_is_cached(nfc_root, tmp_path, monkeypatch):
    datamodule = _datamodule(nfc_root, tmp_path, crop_margin=0.2, crop_size=None)
    source = datamodule.tables["test"].sources[0]
    expected = crop_face(read_rgb(source.path), source.box, margin=0.2)
    assert np.array_equal(datamodule.load_image(source), expected)
    cached = list((tmp_path / "crops").rglob("*.jpg"))
    assert len(cached) == 1
    # The second read decodes the cached crop: no frame is cropped again.
    with monkeypatch.context() as patched:
        patched.setattr(io, "crop_face", lambda *args: pytest.fail("cropped the frame again"))
        again = datamodule.load_image(source)
    assert again.shape == expected.shape and np.abs(again.astype(int) - expected).mean() < 3  # JPEG q95
    # Another margin is another cache entry.
    _datamodule(nfc_root, tmp_path, crop_margin=0.3, crop_size=None).load_image(source)
    assert len(list((tmp_path / "crops").rglob("*.jpg"))) == 2


def test_closest_pair_box(nfc_root, tmp_path):
    datamodule = _datamodule(nfc_root, tmp_path, annotator="closest_pair")
    [source] = datamodule.tables["test"].sources[:1]
    records = [
        r for path in (nfc_root / "Validation").rglob("*.json") for r in json.loads(path.read_text("utf-8"))
    ]
    [record] = [r for r in records if nfc(r["filename"]) == nfc(source.path.name)]
    boxes = [parse_box(record[f"annot_{a}"]["boxes"]) for a in "ABC"]
    assert source.box == closest_pair_box(boxes)


def test_fit_fast_dev_run_on_synthetic_data(tmp_path):
    cli = fast_dev_run(
        "quickstart_aihub.yaml",
        tmp_path,
        "--data.synthetic_size=60",
        f"--data.crop_cache_dir={tmp_path / 'crops'}",
    )
    assert list((tmp_path / "crops").rglob("*.jpg"))
    assert cli.model.class_names == ["기쁨", "당황", "분노", "불안", "상처", "슬픔", "중립"]
    finite_metrics(cli, "train/loss_epoch", "val/loss", "val/acc", "val/class_acc/중립")
