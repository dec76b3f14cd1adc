"""Expression geometry: the facial-action parameters that make each drawn expression what it is.

Each expression is a prototype of brow, eye, mouth and nose movements; a sample scales it by a random
intensity and adds jitter, so weak expressions of neighbouring classes overlap as in real data.
"""

from __future__ import annotations

import dataclasses

import numpy as np

#: Canonical expression names the renderer knows; each dataset maps its own class names onto these.
EXPRESSIONS = ("neutral", "happiness", "sadness", "surprise", "fear", "disgust", "anger", "contempt")


@dataclasses.dataclass
class ExpressionGeometry:
    """Facial-action parameters of one drawn face; 0/1 are the neutral face's values.

    Units are loose multiples of a typical full-intensity movement, so one jitter scale fits all.
    """

    brow_raise: float = 0.0  # whole brow up (+) or down (-)
    brow_inner: float = 0.0  # inner brow ends up (+, sadness/fear) or down (-, anger)
    eye_open: float = 1.0  # eye aperture; >1 wide (surprise/fear), <1 narrowed
    lower_lid: float = 0.0  # cheek raise pushing the lower lid up (happiness crescent eyes)
    mouth_width: float = 1.0
    mouth_curve: float = 0.0  # corners up (+, smile) or down (-, frown)
    mouth_open: float = 0.0  # lip separation
    mouth_stretch: float = 0.0  # squarer, horizontally stretched opening (fear)
    mouth_asym: float = 0.0  # one corner raised (contempt)
    upper_lip: float = 0.0  # upper-lip raise, stronger on one side (disgust)
    nose_wrinkle: float = 0.0
    lip_press: float = 0.0  # lips pressed thin (anger)
    teeth: float = 0.0  # how much of the opening shows teeth


_NEUTRAL_GEOMETRY = ExpressionGeometry()

# Full-intensity prototypes; each sample is neutral + intensity * (prototype - neutral) + jitter.
_EXPRESSION_PROTOTYPES: dict[str, ExpressionGeometry] = {
    "neutral": ExpressionGeometry(),
    "happiness": ExpressionGeometry(
        brow_raise=0.1,
        eye_open=0.75,
        lower_lid=0.8,
        mouth_width=1.25,
        mouth_curve=1.0,
        mouth_open=0.35,
        mouth_stretch=0.3,
        teeth=1.0,
    ),
    "sadness": ExpressionGeometry(
        brow_raise=-0.1,
        brow_inner=1.0,
        eye_open=0.75,
        mouth_width=0.9,
        mouth_curve=-0.9,
        lip_press=0.3,
    ),
    "surprise": ExpressionGeometry(
        brow_raise=1.1,
        brow_inner=0.2,
        eye_open=1.6,
        mouth_width=0.68,
        mouth_open=1.0,
        teeth=0.15,
    ),
    "fear": ExpressionGeometry(
        brow_raise=0.6,
        brow_inner=0.9,
        eye_open=1.5,
        mouth_width=1.25,
        mouth_curve=-0.35,
        mouth_open=0.45,
        mouth_stretch=1.0,
        teeth=0.6,
    ),
    "disgust": ExpressionGeometry(
        brow_raise=-0.45,
        brow_inner=-0.3,
        eye_open=0.65,
        lower_lid=0.4,
        mouth_width=0.9,
        mouth_curve=-0.45,
        mouth_open=0.15,
        mouth_stretch=0.5,
        upper_lip=1.0,
        nose_wrinkle=1.0,
        teeth=0.7,
    ),
    "anger": ExpressionGeometry(
        brow_raise=-0.65,
        brow_inner=-1.1,
        eye_open=0.95,
        lower_lid=0.25,
        mouth_width=0.85,
        mouth_curve=-0.2,
        lip_press=1.0,
    ),
    "contempt": ExpressionGeometry(eye_open=0.9, mouth_asym=1.0, lip_press=0.35),
}

# Per-sample jitter (standard deviations), independent of the nuisance level: real expressions vary.
_EXPRESSION_JITTER = ExpressionGeometry(
    brow_raise=0.2,
    brow_inner=0.2,
    eye_open=0.12,
    lower_lid=0.12,
    mouth_width=0.08,
    mouth_curve=0.2,
    mouth_open=0.08,
    mouth_stretch=0.15,
    mouth_asym=0.15,
    upper_lip=0.12,
    nose_wrinkle=0.12,
    lip_press=0.15,
    teeth=0.2,
)

# Expression intensity range: weak expressions make neighbouring classes overlap, as in real data.
_INTENSITY_RANGE = (0.45, 1.15)

_GEOMETRY_LIMITS: dict[str, tuple[float, float]] = {
    "eye_open": (0.15, 2.2),
    "lower_lid": (0.0, 1.0),
    "mouth_width": (0.5, 1.6),
    "mouth_open": (0.0, 1.4),
    "mouth_stretch": (0.0, 1.0),
    "mouth_asym": (-0.3, 1.4),
    "upper_lip": (0.0, 1.4),
    "nose_wrinkle": (0.0, 1.0),
    "lip_press": (0.0, 1.0),
    "teeth": (0.0, 1.0),
}


def sample_expression_geometry(expression: str, rng: np.random.Generator) -> ExpressionGeometry:
    """Draw the facial-action parameters of one face showing ``expression``."""
    if expression not in _EXPRESSION_PROTOTYPES:
        raise ValueError(f"unknown expression {expression!r}; expected one of {', '.join(EXPRESSIONS)}")
    prototype = _EXPRESSION_PROTOTYPES[expression]
    intensity = rng.uniform(*_INTENSITY_RANGE)
    values = {}
    for field in dataclasses.fields(ExpressionGeometry):
        neutral = getattr(_NEUTRAL_GEOMETRY, field.name)
        target = getattr(prototype, field.name)
        jitter = getattr(_EXPRESSION_JITTER, field.name)
        value = neutral + intensity * (target - neutral) + rng.normal(0.0, jitter)
        low, high = _GEOMETRY_LIMITS.get(field.name, (-2.0, 2.0))
        values[field.name] = float(np.clip(value, low, high))
    return ExpressionGeometry(**values)
