"""The synthetic face generator: renderer, class/noise planning, and each writer's on-disk layout."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import cv2
import numpy as np
import pytest

from fer_lightning.data import synthetic
from fer_lightning.data.synthetic import (
    EXPRESSIONS,
    MANIFEST_NAME,
    RAFDB_CLASS_NAMES,
    ensure_synthetic_dataset,
    plan_dataset,
    read_manifest,
    render_face,
    write_rafdb,
    write_synthetic,
)
from fer_lightning.data.synthetic.output import encode_jpeg
from fer_lightning.data.synthetic.planning import FREQUENCY_ORDER
from fer_lightning.data.synthetic.rafdb import RAFDB_EXPRESSIONS


def _tree_digest(root: Path) -> dict[str, str]:
    """Relative path → sha256 of every file under ``root``."""
    return {
        path.relative_to(root).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


def _read_rgb(path: Path) -> np.ndarray:
    return cv2.cvtColor(cv2.imdecode(np.fromfile(path, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


# ------------------------------------------------------------------------------------------- renderer


@pytest.mark.parametrize("expression", EXPRESSIONS)
def test_render_face_shape_dtype_and_seed(expression):
    image = render_face(expression, np.random.default_rng(3), size=64)
    assert image.shape == (64, 64, 3) and image.dtype == np.uint8
    again = render_face(expression, np.random.default_rng(3), size=64)
    other = render_face(expression, np.random.default_rng(4), size=64)
    assert np.array_equal(image, again)
    assert not np.array_equal(image, other)


def test_render_face_rejects_unknown_expression():
    with pytest.raises(ValueError, match="unknown expression 'smug'"):
        render_face("smug", np.random.default_rng(0))


def test_expressions_change_the_face_geometry():
    """Without nuisance, each expression moves the feature that defines it well beyond seed-to-seed noise."""

    def mean_face(expression, first_seed=0):
        seeds = range(first_seed, first_seed + 12)
        return np.mean([render_face(expression, np.random.default_rng(i), 100, 0.0) for i in seeds], axis=0)

    regions = {
        "mouth": (slice(58, 80), slice(28, 72)),
        "brows": (slice(20, 45), slice(20, 80)),
        "eyes": (slice(38, 52), slice(20, 80)),
        "nose": (slice(45, 65), slice(35, 65)),
    }
    neutral = mean_face("neutral")
    noise_floor = np.abs(neutral - mean_face("neutral", first_seed=100)).mean(axis=2)
    defining_region = {
        "happiness": "mouth",
        "sadness": "brows",
        "surprise": "brows",
        "fear": "eyes",
        "disgust": "nose",
        "anger": "brows",
        "contempt": "mouth",
    }
    for expression, region_name in defining_region.items():
        region = regions[region_name]
        change = np.abs(mean_face(expression) - neutral).mean(axis=2)[region].mean()
        assert change > 2.0 * noise_floor[region].mean(), (expression, region_name)


def test_nuisance_zero_is_far_less_varied_than_default():
    def spread(nuisance):
        faces = [
            render_face("neutral", np.random.default_rng(i), 64, nuisance).astype(float) for i in range(10)
        ]
        return np.std(faces, axis=0).mean()

    assert spread(1.0) > 3 * spread(0.0)


# ------------------------------------------------------------------------------------------- planning


def test_plan_honours_imbalance_ratio_and_order():
    plan = plan_dataset(
        2000,
        0,
        RAFDB_EXPRESSIONS,
        FREQUENCY_ORDER["rafdb"],
        imbalance=8.0,
        label_noise=0.0,
        train_split="train",
        eval_splits={"test": 0.2},
    )
    counts = np.bincount([item.clean_label for item in plan], minlength=7)
    assert counts.sum() == 2000
    assert counts.max() / counts.min() == pytest.approx(8.0, rel=0.03)
    assert RAFDB_CLASS_NAMES[int(counts.argmax())] == "Happiness"
    assert RAFDB_CLASS_NAMES[int(counts.argmin())] == "Fear"
    # The test split is stratified: the same class mix as the whole set.
    test_counts = np.bincount([item.clean_label for item in plan if item.split == "test"], minlength=7)
    assert test_counts.sum() == 400
    assert np.allclose(test_counts / 400, counts / 2000, atol=0.01)


def test_plan_label_noise_fraction_only_in_training():
    plan = plan_dataset(
        1000,
        1,
        RAFDB_EXPRESSIONS,
        FREQUENCY_ORDER["rafdb"],
        imbalance=1.0,
        label_noise=0.25,
        train_split="train",
        eval_splits={"test": 0.2},
    )
    train = [item for item in plan if item.split == "train"]
    assert sum(item.is_noisy for item in train) == round(0.25 * len(train))
    assert not any(item.is_noisy for item in plan if item.split == "test")
    # A noisy label is always a different class, and the drawn expression follows the clean label.
    for item in plan:
        assert item.expression == RAFDB_EXPRESSIONS[item.clean_label]
        assert 0 <= item.label < 7


def test_plan_balanced_eval_is_equal_per_class():
    plan = plan_dataset(
        800,
        0,
        EXPRESSIONS,
        FREQUENCY_ORDER["affectnet"],
        imbalance=10.0,
        label_noise=0.0,
        train_split="train",
        eval_splits={"val": 0.2},
        balanced_eval=True,
    )
    val_counts = np.bincount([item.label for item in plan if item.split == "val"], minlength=8)
    assert set(val_counts.tolist()) == {20}
    train_counts = np.bincount([item.label for item in plan if item.split == "train"], minlength=8)
    assert train_counts.max() / train_counts.min() == pytest.approx(10.0, rel=0.1)


def test_plan_rejects_bad_arguments():
    args = (RAFDB_EXPRESSIONS, FREQUENCY_ORDER["rafdb"])
    with pytest.raises(ValueError, match="imbalance"):
        plan_dataset(10, 0, *args, imbalance=0.5, label_noise=0, train_split="train", eval_splits={})
    with pytest.raises(ValueError, match="label_noise"):
        plan_dataset(10, 0, *args, imbalance=1, label_noise=1.5, train_split="train", eval_splits={})


# ------------------------------------------------------------------------------------------- RAF-DB

_RAF_LINE = re.compile(r"^(train_\d{5}|test_\d{4})\.jpg ([1-7])$")


@pytest.fixture(scope="module")
def rafdb_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("raf") / "RAF-DB"
    summary = write_rafdb(root, num_images=70, seed=11, imbalance=3.0, label_noise=0.2, progress=False)
    assert summary.split_sizes == {"train": 56, "test": 14}
    return root


def test_rafdb_list_file_format(rafdb_root):
    lines = (rafdb_root / "EmoLabel" / "list_patition_label.txt").read_text().splitlines()
    assert len(lines) == 70
    matches = [_RAF_LINE.match(line) for line in lines]
    assert all(matches), [line for line, match in zip(lines, matches) if not match]
    names = [match.group(1) for match in matches]
    # Training lines first, then test; each numbered from 1 without gaps.
    assert names[:56] == [f"train_{i:05d}" for i in range(1, 57)]
    assert names[56:] == [f"test_{i:04d}" for i in range(1, 15)]
    assert {int(match.group(2)) for match in matches} == set(range(1, 8))


def test_rafdb_images_are_100px_and_match_the_list(rafdb_root):
    lines = (rafdb_root / "EmoLabel" / "list_patition_label.txt").read_text().splitlines()
    image_dir = rafdb_root / "Image" / "aligned"
    expected = {line.split()[0].replace(".jpg", "_aligned.jpg") for line in lines}
    assert {path.name for path in image_dir.iterdir()} == expected
    for name in sorted(expected)[:5]:
        assert _read_rgb(image_dir / name).shape == (100, 100, 3)


def test_rafdb_manifest_round_trips_labels(rafdb_root):
    manifest = read_manifest(rafdb_root)
    assert manifest["format"] == "rafdb" and manifest["seed"] == 11
    assert manifest["class_names"] == list(RAFDB_CLASS_NAMES)
    on_disk = dict(
        line.split() for line in (rafdb_root / "EmoLabel/list_patition_label.txt").read_text().splitlines()
    )
    for entry in manifest["files"]:
        assert int(on_disk[entry["file"]]) == entry["label"] + 1
        assert (rafdb_root / entry["image"]).is_file()
    noisy = [entry for entry in manifest["files"] if entry["label"] != entry["clean_label"]]
    assert len(noisy) == round(0.2 * 56) == manifest["num_noisy_labels"]
    assert all(entry["split"] == "train" for entry in noisy)


def test_rafdb_same_seed_same_bytes_other_seed_differs(tmp_path):
    first = write_rafdb(tmp_path / "a", num_images=12, seed=4, progress=False).root
    second = write_rafdb(tmp_path / "b", num_images=12, seed=4, progress=False).root
    third = write_rafdb(tmp_path / "c", num_images=12, seed=5, progress=False).root
    assert _tree_digest(first) == _tree_digest(second)
    images = [path for path in _tree_digest(first) if path.endswith(".jpg")]
    differing = [path for path in images if _tree_digest(first)[path] != _tree_digest(third)[path]]
    assert len(differing) == len(images)


def test_each_image_depends_only_on_seed_and_index(tmp_path):
    """Image k is drawn from its own (seed, k) generator, so generation order cannot change it."""
    root = write_rafdb(tmp_path / "r", num_images=9, seed=2, image_size=64).root
    manifest = read_manifest(root)
    for index in (8, 0, 4):  # any order
        entry = manifest["files"][index]
        image = render_face(entry["expression"], synthetic.image_rng(2, index), 64)
        assert (root / entry["image"]).read_bytes() == encode_jpeg(image)
    # Distinct indices mean distinct generators: no two images repeat, even of the same class.
    contents = [(root / entry["image"]).read_bytes() for entry in manifest["files"]]
    assert len(set(contents)) == len(contents)


def test_red_patch_survives_jpeg_bgr_rgb_round_trip(tmp_path):
    """Writers convert RGB→BGR before cv2.imencode, so cv2.imread + BGR→RGB gives the original colours."""
    image = np.zeros((100, 100, 3), np.uint8)
    image[20:60, 20:60] = (255, 0, 0)  # pure red in RGB
    path = tmp_path / "red.jpg"
    path.write_bytes(encode_jpeg(image))
    decoded = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
    red, green, blue = decoded[30:50, 30:50].reshape(-1, 3).mean(axis=0)
    assert red > 200 and green < 50 and blue < 50


def test_writer_refuses_a_non_empty_foreign_folder(tmp_path):
    (tmp_path / "precious.txt").write_text("not synthetic")
    with pytest.raises(FileExistsError, match="not empty"):
        write_rafdb(tmp_path, num_images=5)
    assert (tmp_path / "precious.txt").exists()


def test_writer_overwrites_only_with_permission(tmp_path):
    write_rafdb(tmp_path / "d", num_images=5, seed=0)
    with pytest.raises(FileExistsError, match="overwrite=True"):
        write_rafdb(tmp_path / "d", num_images=5, seed=1)
    write_rafdb(tmp_path / "d", num_images=6, seed=1, overwrite=True)
    assert read_manifest(tmp_path / "d")["seed"] == 1


# ------------------------------------------------------------------------------------------- registry, cache


def test_unknown_format_lists_known_ones(tmp_path):
    with pytest.raises(ValueError, match=r"unknown synthetic format 'kdef'; known formats: .*rafdb"):
        write_synthetic("kdef", tmp_path, num_images=3)
    with pytest.raises(ValueError, match="known formats"):
        ensure_synthetic_dataset("kdef", 3, cache_dir=tmp_path)


def test_ensure_synthetic_dataset_generates_once(tmp_path, monkeypatch):
    calls = []
    real_writer = synthetic.WRITERS["rafdb"]

    def counting_writer(*args, **kwargs):
        calls.append(kwargs)
        return real_writer(*args, **kwargs)

    monkeypatch.setitem(synthetic.WRITERS, "rafdb", counting_writer)
    first = ensure_synthetic_dataset("rafdb", 8, seed=3, cache_dir=tmp_path, imbalance=2.0)
    second = ensure_synthetic_dataset("rafdb", 8, seed=3, cache_dir=tmp_path, imbalance=2.0)
    assert first == second and len(calls) == 1
    assert first.parent == tmp_path / "synthetic" and first.name.startswith("rafdb-n8-s3-")
    assert (first / MANIFEST_NAME).is_file()
    assert not [path for path in first.parent.iterdir() if path.name.startswith(".")]  # no scratch left
    # Different options or seed → a different folder, generated anew.
    other = ensure_synthetic_dataset("rafdb", 8, seed=3, cache_dir=tmp_path, imbalance=4.0)
    assert other != first and len(calls) == 2
    # Options that do not change content share the cache entry.
    assert (
        ensure_synthetic_dataset("rafdb", 8, seed=3, cache_dir=tmp_path, imbalance=2.0, progress=True)
        == first
    )
    assert len(calls) == 2


def test_ensure_synthetic_dataset_uses_env_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FER_LIGHTNING_CACHE", str(tmp_path / "env-cache"))
    root = ensure_synthetic_dataset("rafdb", 4, seed=0)
    assert root.is_relative_to(tmp_path / "env-cache" / "synthetic")


def test_ensure_synthetic_dataset_loses_a_race_gracefully(tmp_path, monkeypatch):
    """If another process renames its copy into place first, this one keeps theirs and cleans up."""
    target = synthetic.synthetic_dataset_path("rafdb", 4, 0, tmp_path)
    real_writer = synthetic.WRITERS["rafdb"]

    def writer_racing_another_process(out_dir, **kwargs):
        summary = real_writer(out_dir, **kwargs)
        real_writer(target, **kwargs)  # the "other process" finishes first
        (target / "winner").write_text("")
        return summary

    monkeypatch.setitem(synthetic.WRITERS, "rafdb", writer_racing_another_process)
    assert ensure_synthetic_dataset("rafdb", 4, seed=0, cache_dir=tmp_path) == target
    assert (target / "winner").exists()
    assert [path.name for path in target.parent.iterdir()] == [target.name]


@pytest.mark.parametrize("fmt", sorted(synthetic.WRITERS))
def test_every_writer_is_deterministic(tmp_path, fmt):
    options = {"validation_fraction": 0.3} if fmt.startswith(("affectnet", "aihub")) else {}
    first = write_synthetic(fmt, tmp_path / "a", num_images=10, seed=7, **options).root
    second = write_synthetic(fmt, tmp_path / "b", num_images=10, seed=7, **options).root
    other = write_synthetic(fmt, tmp_path / "c", num_images=10, seed=8, **options).root
    assert _tree_digest(first) == _tree_digest(second)
    assert _tree_digest(first) != _tree_digest(other)
    assert read_manifest(first)["format"] == fmt


# ------------------------------------------------------------------------------------------- AffectNet


@pytest.fixture(scope="module")
def affectnet_csv_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("affectnet") / "AffectNet"
    synthetic.write_affectnet_csv(root, num_images=48, seed=3, validation_fraction=1 / 3, invalid_rows=5)
    return root


def _read_csv(path: Path) -> tuple[list[str], list[list[str]]]:
    import csv

    with open(path, newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle))
    return rows[0], rows[1:]


def test_affectnet_csv_layout_and_rows(affectnet_csv_root):
    lists = affectnet_csv_root / "Manually_Annotated_file_lists"
    manifest = read_manifest(affectnet_csv_root)
    for split in ("training", "validation"):
        header, rows = _read_csv(lists / f"{split}.csv")
        assert ",".join(header) == (
            "subDirectory_filePath,face_x,face_y,face_width,face_height,facial_landmarks,expression,valence,arousal"
        )
        assert len(rows) == manifest["split_sizes"][split] + 5
        for path, x, y, width, height, landmarks, expression, valence, arousal in rows:
            assert re.fullmatch(r"\d+/[0-9a-f]{56}\.jpg", path)
            assert 0 <= int(expression) <= 10
            image = _read_rgb(affectnet_csv_root / "Manually_Annotated_Images" / path)
            if int(width) > 0 and int(expression) < 8:
                # The face box lies inside the frame, which is larger than the box.
                assert int(x) >= 0 and int(y) >= 0 and int(width) == int(height)
                assert int(x) + int(width) <= image.shape[1] and int(y) + int(height) <= image.shape[0]
                assert image.shape[0] > int(height) and image.shape[1] > int(width)
                points = np.array(landmarks.split(";"), dtype=float).reshape(68, 2)
                centre = points.mean(axis=0)
                assert abs(centre[0] - (int(x) + int(width) / 2)) < 0.3 * int(width)
                assert abs(centre[1] - (int(y) + int(height) / 2)) < 0.3 * int(height)
                assert -1 <= float(valence) <= 1 and -1 <= float(arousal) <= 1


def test_affectnet_csv_invalid_rows_and_balanced_validation(affectnet_csv_root):
    lists = affectnet_csv_root / "Manually_Annotated_file_lists"
    manifest = read_manifest(affectnet_csv_root)
    for split in ("training", "validation"):
        _, rows = _read_csv(lists / f"{split}.csv")
        non_expression = sorted(int(row[6]) for row in rows if int(row[6]) >= 8)
        bad_box = [row for row in rows if int(row[3]) <= 0]
        assert non_expression == [8, 9, 10]
        assert len(bad_box) == 2 and all(int(row[6]) < 8 for row in bad_box)
        # Valid rows keep the manifest's order; the invalid ones are interleaved among them.
        valid = [int(row[6]) for row in rows if int(row[6]) < 8 and int(row[3]) > 0]
        assert valid == [entry["label"] for entry in manifest["files"] if entry["split"] == split]
    _, validation = _read_csv(lists / "validation.csv")
    counts = np.bincount(
        [int(row[6]) for row in validation if int(row[6]) < 8 and int(row[3]) > 0], minlength=8
    )
    assert set(counts.tolist()) == {2}  # 48 / 3 = 16 images, 2 per class
    assert manifest["num_invalid_rows"] == 10


@pytest.mark.parametrize(("val_dir_name", "exp_dtype"), [("val_set", "str"), ("valid_set", "int")])
def test_affectnet_npy_layout(tmp_path, val_dir_name, exp_dtype):
    root = synthetic.write_affectnet_npy(
        tmp_path / "an",
        num_images=24,
        seed=1,
        validation_fraction=1 / 3,
        image_size=64,
        val_dir_name=val_dir_name,
        exp_dtype=exp_dtype,
    ).root
    manifest = read_manifest(root)
    labels_on_disk = {}
    for split_dir, split in (("train_set", "train"), (val_dir_name, "val")):
        images = sorted((root / split_dir / "images").iterdir(), key=lambda path: int(path.stem))
        assert [path.name for path in images] == [f"{i}.jpg" for i in range(manifest["split_sizes"][split])]
        for image in images:
            annotations = root / split_dir / "annotations"
            expression = np.load(annotations / f"{image.stem}_exp.npy")
            assert expression.shape == ()
            assert expression.dtype.kind == ("U" if exp_dtype == "str" else "i")
            labels_on_disk[f"{split_dir}/images/{image.name}"] = int(expression)
            assert -1 <= float(np.load(annotations / f"{image.stem}_val.npy")) <= 1
            assert -1 <= float(np.load(annotations / f"{image.stem}_aro.npy")) <= 1
            landmarks = np.load(annotations / f"{image.stem}_lnd.npy")
            assert landmarks.shape == (136,) and landmarks.min() > -10 and landmarks.max() < 74
            assert _read_rgb(image).shape == (64, 64, 3)
    assert labels_on_disk == {entry["file"]: entry["label"] for entry in manifest["files"]}
    val_counts = np.bincount(
        [entry["label"] for entry in manifest["files"] if entry["split"] == "val"], minlength=8
    )
    assert set(val_counts.tolist()) == {1}


# ------------------------------------------------------------------------------------------- AI-Hub

_HANGUL = "기쁨 당황 분노 불안 상처 슬픔 중립".split()


@pytest.fixture(scope="module", params=["NFC", "NFD"])
def aihub_root(request, tmp_path_factory):
    root = tmp_path_factory.mktemp(f"aihub-{request.param}") / "aihub"
    synthetic.write_aihub(
        root,
        num_images=35,
        seed=2,
        validation_fraction=0.2,
        unicode_form=request.param,
        list_boxes=3,
        annotator_disagreement=0.3,
        train_parts=2,
    )
    return root, request.param


def test_aihub_folders_and_unicode_form(aihub_root):
    import unicodedata

    root, form = aihub_root
    expected = {f"Training/[라벨]EMOIMG_{name}_TRAIN" for name in _HANGUL}
    expected |= {f"Training/[원천]EMOIMG_{name}_TRAIN_{part}" for name in _HANGUL for part in ("01", "02")}
    expected |= {f"Validation/[라벨]EMOIMG_{name}_VALID" for name in _HANGUL}
    expected |= {f"Validation/[원천]EMOIMG_{name}_VALID" for name in _HANGUL}
    on_disk = {
        f"{split.name}/{folder.name}"
        for split in root.iterdir()
        if split.is_dir()
        for folder in split.iterdir()
    }
    assert on_disk == {unicodedata.normalize(form, name) for name in expected}
    # NFD names really are decomposed: they differ from the NFC spelling until normalised.
    assert ("Training/[라벨]EMOIMG_기쁨_TRAIN" in on_disk) == (form == "NFC")
    assert {unicodedata.normalize("NFC", name) for name in on_disk} == expected


def _aihub_records(root: Path) -> dict[str, dict]:
    """filename (NFC) → record, over every JSON file, with the split and class folder it came from."""
    import json
    import unicodedata

    records = {}
    for json_path in root.glob("*/*/*.json"):
        folder = unicodedata.normalize("NFC", json_path.parent.name)
        assert unicodedata.normalize("NFC", json_path.name) == (
            f"img_emotion_{'training' if 'TRAIN' in folder else 'validation'}_data({folder.split('_')[1]}).json"
        )
        data = json.loads(json_path.read_text(encoding="utf-8"))
        assert isinstance(data, list)
        for record in data:
            assert unicodedata.is_normalized("NFC", json.dumps(record, ensure_ascii=False))
            records[record["filename"]] = {**record, "_class_folder": folder.split("_")[1]}
    return records


def test_aihub_json_records_match_images(aihub_root):
    import unicodedata

    root, _ = aihub_root
    records = _aihub_records(root)
    manifest = read_manifest(root)
    assert len(records) == 35
    images = {unicodedata.normalize("NFC", path.name): path for path in root.glob("*/*/*.jpg")}
    assert set(images) == set(records)
    list_form = 0
    for filename, record in records.items():
        assert set(record) - {"_class_folder"} == {
            "filename",
            "gender",
            "age",
            "isProf",
            "faceExp_uploader",
            "bg_uploader",
            "annot_A",
            "annot_B",
            "annot_C",
        }
        assert record["faceExp_uploader"] == record["_class_folder"] in _HANGUL
        assert record["gender"] in ("남", "여") and record["age"] in (20, 30, 40, 50, 60)
        assert re.fullmatch(r"[0-9a-f]{64}_[남여]_\d0_\w+_[^_]+_\d{14}-\d{3}-\d{3}\.jpg", filename)
        height, width = _read_rgb(images[filename]).shape[:2]
        assert (width, height) == (320, 240)
        for annotator in "ABC":
            annotation = record[f"annot_{annotator}"]
            assert annotation["faceExp"] in _HANGUL
            boxes = annotation["boxes"]
            if isinstance(boxes, list):
                list_form += 1
                (boxes,) = boxes
            assert list(boxes) == ["maxX", "maxY", "minX", "minY"]
            assert (
                -20 < boxes["minX"] < boxes["maxX"] < width + 20
                and -20 < boxes["minY"] < boxes["maxY"] < height + 20
            )
    assert list_form == 3 * 3
    assert any("&" in filename for filename in records)
    disagreements = [
        annotator != entry["clean_label"]
        for entry in manifest["files"]
        for annotator in entry["annotator_labels"]
    ]
    assert 0.1 < np.mean(disagreements) < 0.5  # 0.3 requested, 105 draws


def test_aihub_encoding_and_ampersand_options(tmp_path):
    root = synthetic.write_aihub(
        tmp_path / "k",
        num_images=14,
        seed=0,
        validation_fraction=0.0,
        json_encoding="euc-kr",
        ampersand_to_underscore=True,
    ).root
    json_path = next(root.glob("Training/*/*.json"))
    with pytest.raises(UnicodeDecodeError):
        json_path.read_text(encoding="utf-8")
    assert "faceExp_uploader" in json_path.read_text(encoding="euc-kr")
    names_on_disk = [path.name for path in root.glob("Training/*/*.jpg")]
    assert len(names_on_disk) == 14 and not any("&" in name for name in names_on_disk)
    assert any("&" in entry["filename"] for entry in read_manifest(root)["files"])


def test_aihub_rejects_unknown_unicode_form(tmp_path):
    with pytest.raises(ValueError, match="unicode_form"):
        synthetic.write_aihub(tmp_path, num_images=7, unicode_form="NFKC")


# ------------------------------------------------------------------------------------------- FER2013 / FER+


def test_fer2013_csv(tmp_path):
    root = synthetic.write_fer2013(tmp_path / "fer", num_images=40, seed=0, label_noise=0.25).root
    header, rows = _read_csv(root / "fer2013.csv")
    assert header == ["emotion", "pixels", "Usage"]
    assert len(rows) == 40
    usages = [row[2] for row in rows]
    assert usages == sorted(usages, key=["Training", "PublicTest", "PrivateTest"].index)
    assert set(usages) == {"Training", "PublicTest", "PrivateTest"}
    for emotion, pixels, _ in rows:
        assert 0 <= int(emotion) <= 6
        values = np.array(pixels.split(), dtype=int)
        assert values.shape == (2304,) and 0 <= values.min() and values.max() <= 255
    manifest = read_manifest(root)
    assert [int(row[0]) for row in rows] == [entry["label"] for entry in manifest["files"]]
    assert manifest["num_noisy_labels"] == round(0.25 * usages.count("Training"))


@pytest.fixture(scope="module")
def ferplus_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("ferplus") / "fer"
    synthetic.write_ferplus(root, num_images=40, seed=4, label_noise=0.2, not_face_rows=3, unknown_rows=2)
    return root


def test_ferplus_label_file_aligned_with_fer2013(ferplus_root):
    _, fer_rows = _read_csv(ferplus_root / "fer2013.csv")
    header, rows = _read_csv(ferplus_root / "fer2013new.csv")
    assert (
        ",".join(header)
        == "Usage,Image name,neutral,happiness,surprise,sadness,anger,disgust,fear,contempt,unknown,NF"
    )
    assert len(rows) == len(fer_rows) == 45
    assert [row[0] for row in rows] == [row[2] for row in fer_rows]
    for index, row in enumerate(rows):
        votes = [int(vote) for vote in row[2:]]
        assert len(votes) == 10 and sum(votes) == 10 and min(votes) >= 0
        assert row[1] in ("", f"fer{index:07d}.png")
        assert (row[1] == "") == (votes[-1] == 10)
    assert sum(row[1] == "" for row in rows) == 3


def test_ferplus_majority_is_the_drawn_class(ferplus_root):
    _, fer_rows = _read_csv(ferplus_root / "fer2013.csv")
    _, rows = _read_csv(ferplus_root / "fer2013new.csv")
    manifest = read_manifest(ferplus_root)
    assert len(manifest["files"]) == 40
    for entry in manifest["files"]:
        votes = np.array(rows[entry["row"]][2:], dtype=int)
        assert rows[entry["row"]][1] == entry["image_name"]
        assert votes.tolist() == entry["votes"]
        assert int(np.argmax(votes)) == entry["label"] == entry["clean_label"]
        assert (votes == votes.max()).sum() == 1  # a strict plurality
        assert int(fer_rows[entry["row"]][0]) == entry["fer2013_label"]
    unknown_majority = [row for row in rows if row[1] and int(np.argmax(np.array(row[2:], dtype=int))) == 8]
    assert len(unknown_majority) == 2
    # Label noise corrupts only the original FER2013 column: it then disagrees with the drawn class.
    fer2013_name = {
        "neutral": "Neutral",
        "happiness": "Happy",
        "surprise": "Surprise",
        "sadness": "Sad",
        "anger": "Angry",
        "disgust": "Disgust",
        "fear": "Fear",
        "contempt": "Disgust",
    }
    fer_names = manifest["fer2013_class_names"]
    corrupted = [
        entry
        for entry in manifest["files"]
        if fer_names[entry["fer2013_label"]] != fer2013_name[entry["expression"]]
    ]
    assert all(entry["split"] == "Training" for entry in corrupted)
    assert len(corrupted) == manifest["num_noisy_labels"] > 0
