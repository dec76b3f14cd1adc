"""A plain timm image classifier: the quickstart model and a baseline for any timm architecture."""

from __future__ import annotations

from fer_lightning.errors import ConfigurationError
from fer_lightning.models.base import FERClassifier


class TimmClassifier(FERClassifier):
    """Any ``timm.create_model`` architecture with a ``num_classes`` head.

    Args:
        backbone: timm model name, e.g. ``resnet18``.
        pretrained: load timm's pretrained weights. Off by default: nothing can be downloaded on machines
            without internet; set it where the weights are in the local Hugging Face cache.
        drop_rate: dropout before the classifier.
        model_kwargs: further ``timm.create_model`` arguments, e.g. narrower ``channels`` for a ResNet.
        **kwargs: :class:`~fer_lightning.models.base.FERClassifier` arguments (classes, optimiser, …).
    """

    def __init__(
        self,
        backbone: str = "resnet18",
        pretrained: bool = False,
        drop_rate: float = 0.0,
        model_kwargs: dict | None = None,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        for name in ("num_classes", "pretrained", "drop_rate"):
            if name in (model_kwargs or {}):
                hint = (
                    "the number of classes comes from the data"
                    if name == "num_classes"
                    else f"set model.init_args.{name} instead"
                )
                raise ConfigurationError(
                    f"model.init_args.model_kwargs.{name}: not a timm argument here; {hint}"
                )
        # Imported here: timm (and the wandb it imports) cost every CLI start, --help included.
        import timm

        self.network = timm.create_model(
            backbone,
            pretrained=pretrained,
            num_classes=self.num_classes,
            drop_rate=drop_rate,
            **(model_kwargs or {}),
        )

    def forward(self, images):
        return self.network(images)
