"""Everything ``fer-lightning predict`` needs, written into every checkpoint as plain values.

With it a checkpoint alone rebuilds the model and prepares pictures as the model's evaluation split was
prepared, without the training config, and it stays readable by ``torch.load(weights_only=True)``: only
dicts, lists, strings, numbers, booleans and None (no pickled classes or functions).
"""

from __future__ import annotations

import warnings
from typing import Any

import lightning as L

#: The checkpoint key (a dict; see :func:`inference_metadata`).
INFERENCE_KEY = "fer_lightning_inference"
INFERENCE_FORMAT = 1

_PLAIN_SCALARS = (str, int, float, bool, type(None))


def is_plain(value: Any) -> bool:
    """Whether ``value`` is made only of dicts with string keys, lists, tuples and plain scalars."""
    if isinstance(value, _PLAIN_SCALARS):
        return True
    if isinstance(value, list | tuple):
        return all(is_plain(item) for item in value)
    if isinstance(value, dict):
        return all(isinstance(key, str) and is_plain(item) for key, item in value.items())
    return False


def class_path(obj: Any) -> str:
    cls = type(obj)
    return f"{cls.__module__}.{cls.__qualname__}"


def inference_metadata(model: L.LightningModule, preprocessing: dict, **extra: Any) -> dict:
    """``{format, model: {class_path, init_args}, class_names, preprocessing, **extra}`` for ``model``;
    ``preprocessing`` is :meth:`~fer_lightning.data.preprocessing.EvalPreprocessing.to_dict`'s."""
    init_args = {}
    for name, value in model.hparams.items():
        if name.startswith("_"):  # LightningCLI's bookkeeping (_class_path, _instantiator)
            continue
        if not is_plain(value):
            warnings.warn(
                f"model option {name}={value!r} is not a plain value and is left out of the checkpoint's "
                "predict metadata; predict rebuilds the model with its default",
                stacklevel=2,
            )
            continue
        init_args[name] = value
    return {
        "format": INFERENCE_FORMAT,
        "model": {"class_path": class_path(model), "init_args": init_args},
        "class_names": [str(name) for name in model.class_names],
        "preprocessing": dict(preprocessing),
        **extra,
    }


class InferenceMetadata(L.Callback):
    """Adds :func:`inference_metadata` under :data:`INFERENCE_KEY` to every checkpoint the trainer saves."""

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        datamodule = trainer.datamodule
        if datamodule is None or not hasattr(datamodule, "hparams") or "img_size" not in datamodule.hparams:
            return  # not one of our datamodules: predict then asks for the preprocessing itself
        from fer_lightning.data.preprocessing import eval_preprocessing_of

        preprocessing = eval_preprocessing_of(datamodule).to_dict()
        checkpoint[INFERENCE_KEY] = inference_metadata(
            pl_module, preprocessing, datamodule_class_path=class_path(datamodule)
        )
