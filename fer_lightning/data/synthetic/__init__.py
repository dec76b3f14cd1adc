"""Procedural synthetic faces, written to disk in the real layouts of the FER datasets.

No FER dataset can be downloaded where this project is developed and tested, so every default run and
every test trains on faces drawn here and read back through the *real* dataset readers
(docs/datasets.md#synthetic-faces). The package:

* :mod:`.expressions` and :mod:`.faces`, the **renderer** (:func:`render_face`): a face drawn with
  OpenCV polygons whose expression changes its geometry (brow height and slant, eye openness, mouth
  curvature/opening/asymmetry, nose wrinkle, cheek folds), plus nuisance variation (pose, scale, skin
  tone, hair, lighting, background, occluders, blur, noise, JPEG artefacts) so the classes are learnable
  but not trivial;
* :mod:`.planning`: which image gets which class, split and (possibly noisy) label, and the seeded
  random streams;
* :mod:`.output`: what every writer shares (output folder, JPEG encoding, summary, manifest);
* the **writers** (:data:`WRITERS`, in :mod:`.rafdb`, :mod:`.affectnet`, :mod:`.aihub`, :mod:`.fer2013`)
  lay the images and annotation files out exactly as each dataset ships them (docs/datasets.md):
  ``rafdb``, ``affectnet_csv``, ``affectnet_npy``, ``aihub``, ``fer2013`` and ``ferplus``;
* :mod:`.cache`: datasets generated once and kept under ``$FER_LIGHTNING_CACHE``.

Everything is determined by the seed: each image draws from its own generator seeded with
``(seed, image index)``, so the bytes on disk do not depend on generation order, and the same arguments
always give the same files. Every writer also leaves ``synthetic_manifest.json`` at the dataset root
(not part of any real format): generator version, all parameters, class names and, per file, the label
written to disk and the clean label, so tests can check that readers round-trip what was written.

Only numpy, OpenCV, tqdm and the standard library are used here, so the generator can run in data
workers and in scripts without importing torch or any model code.
"""

from fer_lightning.data.formats import (
    AFFECTNET_CLASS_NAMES,
    AIHUB_CLASS_NAMES,
    FER2013_CLASS_NAMES,
    FERPLUS_CLASS_NAMES,
    RAFDB_CLASS_NAMES,
)
from fer_lightning.data.synthetic.affectnet import write_affectnet_csv, write_affectnet_npy
from fer_lightning.data.synthetic.aihub import write_aihub
from fer_lightning.data.synthetic.cache import (
    default_cache_dir,
    ensure_synthetic_dataset,
    synthetic_dataset_path,
)
from fer_lightning.data.synthetic.expressions import (
    EXPRESSIONS,
    ExpressionGeometry,
    sample_expression_geometry,
)
from fer_lightning.data.synthetic.faces import RenderedFace, render_face, render_face_with_landmarks
from fer_lightning.data.synthetic.fer2013 import write_fer2013, write_ferplus
from fer_lightning.data.synthetic.output import (
    GENERATOR_VERSION,
    JPEG_QUALITY,
    MANIFEST_NAME,
    SyntheticSummary,
    read_manifest,
)
from fer_lightning.data.synthetic.planning import (
    PlannedImage,
    allocate_counts,
    class_frequencies,
    image_rng,
    plan_dataset,
)
from fer_lightning.data.synthetic.rafdb import write_rafdb
from fer_lightning.data.synthetic.registry import WRITERS, write_synthetic

__all__ = [
    "AFFECTNET_CLASS_NAMES",
    "AIHUB_CLASS_NAMES",
    "EXPRESSIONS",
    "FER2013_CLASS_NAMES",
    "FERPLUS_CLASS_NAMES",
    "GENERATOR_VERSION",
    "JPEG_QUALITY",
    "MANIFEST_NAME",
    "RAFDB_CLASS_NAMES",
    "WRITERS",
    "ExpressionGeometry",
    "PlannedImage",
    "RenderedFace",
    "SyntheticSummary",
    "allocate_counts",
    "class_frequencies",
    "default_cache_dir",
    "ensure_synthetic_dataset",
    "image_rng",
    "plan_dataset",
    "read_manifest",
    "render_face",
    "render_face_with_landmarks",
    "sample_expression_geometry",
    "synthetic_dataset_path",
    "write_affectnet_csv",
    "write_affectnet_npy",
    "write_aihub",
    "write_fer2013",
    "write_ferplus",
    "write_rafdb",
    "write_synthetic",
]
