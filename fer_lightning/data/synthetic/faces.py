"""The face renderer: OpenCV polygons in face units, posed, lit and degraded like a photograph.

A face's expression changes its geometry (:mod:`.expressions`); everything else (identity, pose,
hair, background, occluders, lighting, blur, noise, JPEG artefacts) is nuisance variation scaled by
``nuisance``. Landmarks come from the same geometry that is drawn, so the two always agree.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import cv2
import numpy as np

from fer_lightning.data.synthetic.expressions import ExpressionGeometry, sample_expression_geometry

# Drawing at twice the output size and area-downsampling gives smooth sub-pixel edges on small faces.
_SUPERSAMPLE = 2
_SUBPIXEL_BITS = 4  # cv2 fixed-point coordinates: 1/16 pixel
_SUBPIXEL_SCALE = 1 << _SUBPIXEL_BITS

# Skin tones from light to dark (RGB); a face interpolates between two neighbours.
_SKIN_TONES = np.array(
    [(250, 220, 195), (235, 195, 160), (215, 170, 130), (190, 140, 100), (150, 100, 65), (105, 70, 45)],
    dtype=np.float32,
)
_HAIR_COLOURS = np.array(
    [(25, 20, 18), (60, 40, 25), (110, 75, 40), (170, 130, 80), (215, 185, 130), (140, 140, 140)],
    dtype=np.float32,
)
_IRIS_COLOURS = np.array([(60, 40, 25), (35, 25, 20), (70, 100, 130), (80, 110, 70)], dtype=np.float32)


@dataclasses.dataclass
class _Pose:
    """Where and how the face sits in the picture (canvas pixels, radians)."""

    center_x: float
    center_y: float
    half_width: float  # face half-width in pixels
    roll: float
    yaw: float
    pitch: float


class _FacePainter:
    """Draws polygons given in face units onto a canvas.

    Face units: origin at the face centre, x to the picture's right, y down, face half-width 1. Each
    point carries a depth ``z`` (how far it sticks out of the face plane) so that head yaw and pitch
    move the nose more than the cheeks, a cheap stand-in for a 3-D head.
    """

    def __init__(self, canvas: np.ndarray, pose: _Pose) -> None:
        self.canvas = canvas
        self.pose = pose
        cos_roll, sin_roll = math.cos(pose.roll), math.sin(pose.roll)
        scale = pose.half_width
        self._linear = np.array([[cos_roll, -sin_roll], [sin_roll, cos_roll]], dtype=np.float64) * scale
        self._offset = np.array([pose.center_x, pose.center_y], dtype=np.float64)

    @property
    def pixels_per_unit(self) -> float:
        return self.pose.half_width

    def project(self, points: np.ndarray, depth: float | np.ndarray = 0.0) -> np.ndarray:
        """Face units (N, 2) → canvas pixel coordinates (N, 2) as floats."""
        points = np.asarray(points, dtype=np.float64)
        x = points[:, 0] * math.cos(self.pose.yaw) + depth * math.sin(self.pose.yaw)
        y = points[:, 1] * math.cos(self.pose.pitch) - depth * math.sin(self.pose.pitch)
        return np.stack([x, y], axis=1) @ self._linear.T + self._offset

    def _fixed_point(self, points: np.ndarray, depth: float | np.ndarray) -> np.ndarray:
        return np.round(self.project(points, depth) * _SUBPIXEL_SCALE).astype(np.int32).reshape(-1, 1, 2)

    def fill(self, points: np.ndarray, colour: Sequence[float], depth: float | np.ndarray = 0.0) -> None:
        cv2.fillPoly(
            self.canvas, [self._fixed_point(points, depth)], _as_colour(colour), cv2.LINE_AA, _SUBPIXEL_BITS
        )

    def line(
        self,
        points: np.ndarray,
        colour: Sequence[float],
        width: float,
        depth: float | np.ndarray = 0.0,
        closed: bool = False,
    ) -> None:
        """Polyline of ``width`` face units (at least one pixel wide)."""
        thickness = max(1, round(width * self.pixels_per_unit))
        cv2.polylines(
            self.canvas,
            [self._fixed_point(points, depth)],
            closed,
            _as_colour(colour),
            thickness,
            cv2.LINE_AA,
            _SUBPIXEL_BITS,
        )


def _as_colour(colour: Sequence[float]) -> tuple[float, float, float]:
    return (float(colour[0]), float(colour[1]), float(colour[2]))


def _ellipse(
    center_x: float, center_y: float, radius_x: float, radius_y: float, count: int = 32
) -> np.ndarray:
    angles = np.linspace(0.0, 2.0 * math.pi, count, endpoint=False)
    return np.stack([center_x + radius_x * np.cos(angles), center_y + radius_y * np.sin(angles)], axis=1)


def _mix(colour_a: np.ndarray, colour_b: np.ndarray, amount: float) -> np.ndarray:
    """Linear blend; how wrinkles and folds fade in with expression intensity without alpha blending."""
    amount = float(np.clip(amount, 0.0, 1.0))
    return colour_a * (1.0 - amount) + colour_b * amount


@dataclasses.dataclass
class _Identity:
    """Who the face belongs to: shape and colours, independent of the expression."""

    face_width: float
    face_height: float
    jaw_narrowing: float
    eye_y: float
    eye_spacing: float
    eye_size: float
    brow_thickness: float
    brow_arch: float
    nose_length: float
    mouth_y: float
    mouth_size: float
    lip_thickness: float
    skin: np.ndarray
    lips: np.ndarray
    hair: np.ndarray
    iris: np.ndarray
    hair_style: str  # "bald", "short", "long", "fringe"
    gaze_x: float
    clothes: np.ndarray


def _sample_identity(rng: np.random.Generator, nuisance: float) -> _Identity:
    """Face shape and colours; ``nuisance`` scales how far they stray from an average face."""

    def vary(mean: float, spread: float) -> float:
        return mean + nuisance * rng.uniform(-spread, spread)

    tone_position = np.clip(0.3 + nuisance * rng.uniform(-0.3, 0.7), 0.0, 1.0) * (len(_SKIN_TONES) - 1)
    low = math.floor(tone_position)
    high = min(low + 1, len(_SKIN_TONES) - 1)
    skin = _mix(_SKIN_TONES[low], _SKIN_TONES[high], tone_position - low)
    skin = np.clip(skin * (1.0 + nuisance * rng.normal(0.0, 0.04, size=3)), 0, 255)
    lips = np.clip(skin * np.array([0.85, 0.55, 0.55]) + np.array([20.0, 0.0, 5.0]), 0, 255)
    hair = _HAIR_COLOURS[rng.integers(len(_HAIR_COLOURS))] if nuisance > 0 else _HAIR_COLOURS[1]
    hair = np.clip(hair * (1.0 + nuisance * rng.normal(0.0, 0.08, size=3)), 0, 255)
    iris = _IRIS_COLOURS[rng.integers(len(_IRIS_COLOURS))]
    styles = ("short", "long", "fringe", "bald")
    style = styles[int(rng.choice(4, p=(0.45, 0.3, 0.15, 0.1)))] if nuisance > 0 else "short"
    clothes = rng.uniform(20, 235, size=3).astype(np.float32)
    return _Identity(
        face_width=vary(1.0, 0.07),
        face_height=vary(1.3, 0.09),
        jaw_narrowing=vary(0.18, 0.1),
        eye_y=vary(-0.12, 0.04),
        eye_spacing=vary(0.4, 0.04),
        eye_size=vary(1.0, 0.12),
        brow_thickness=vary(0.055, 0.02),
        brow_arch=vary(0.05, 0.03),
        nose_length=vary(0.33, 0.04),
        mouth_y=vary(0.62, 0.05),
        mouth_size=vary(1.0, 0.1),
        lip_thickness=vary(1.0, 0.25),
        skin=skin.astype(np.float32),
        lips=lips.astype(np.float32),
        hair=hair.astype(np.float32),
        iris=iris,
        hair_style=style,
        gaze_x=nuisance * rng.uniform(-0.03, 0.03),
        clothes=clothes,
    )


# Depth (out of the face plane) of each feature, used by the pose projection.
_DEPTH_BROW = 0.55
_DEPTH_EYE = 0.5
_DEPTH_NOSE_BRIDGE = 0.7
_DEPTH_NOSE_TIP = 0.95
_DEPTH_MOUTH = 0.6


def _face_outline(identity: _Identity, count: int = 48) -> np.ndarray:
    """Head outline: an ellipse whose lower half narrows towards the chin."""
    angles = np.linspace(0.0, 2.0 * math.pi, count, endpoint=False)
    sin = np.sin(angles)
    narrowing = 1.0 - identity.jaw_narrowing * np.clip(sin, 0.0, None) ** 2
    x = identity.face_width * np.cos(angles) * narrowing
    y = identity.face_height * sin
    return np.stack([x, y], axis=1)


def _draw_hair_back(painter: _FacePainter, identity: _Identity) -> None:
    if identity.hair_style == "long":
        width, height = identity.face_width, identity.face_height
        outline = np.concatenate(
            [
                _ellipse(0.0, -0.05, width * 1.18, height * 1.1, 40)[20:],  # upper half, left → right
                np.array([[width * 1.25, height * 0.95], [-width * 1.25, height * 0.95]]),
            ]
        )
        painter.fill(outline, identity.hair * 0.85)


def _draw_hair_front(painter: _FacePainter, identity: _Identity, rng: np.random.Generator) -> None:
    if identity.hair_style == "bald":
        return
    width, height = identity.face_width, identity.face_height
    cap = _ellipse(0.0, -0.02, width * 1.06, height * 1.06, 48)[24:]  # top arc from left to right
    hairline_depth = 0.45 if identity.hair_style == "fringe" else 0.62
    xs = np.linspace(width * 1.02, -width * 1.02, 13)
    hairline_y = -height * (hairline_depth + 0.12 * (1.0 - (xs / width) ** 2)) + rng.normal(0, 0.015, 13)
    if identity.hair_style == "fringe":
        hairline_y = np.maximum(hairline_y, -height * 0.95) + 0.1 * (1 - (xs / width) ** 2)
    hairline = np.stack([xs, hairline_y], axis=1)
    painter.fill(np.concatenate([cap, hairline]), identity.hair)


def _draw_brows(
    painter: _FacePainter, identity: _Identity, geometry: ExpressionGeometry, skin: np.ndarray
) -> float:
    """Brows plus the wrinkles they cause; returns the brows' resting height (for the forehead lines)."""
    brow_y = identity.eye_y - 0.2 - 0.12 * geometry.brow_raise
    inner_lift = 0.1 * geometry.brow_inner
    for side in (-1.0, 1.0):
        inner = np.array([side * 0.11, brow_y + 0.02 - inner_lift])
        middle = np.array([side * 0.36, brow_y - identity.brow_arch - 0.1 * inner_lift])
        outer = np.array([side * 0.64, brow_y + 0.03 + 0.3 * inner_lift])
        t = np.linspace(0.0, 1.0, 9)[:, None]
        centre = (1 - t) ** 2 * inner + 2 * (1 - t) * t * middle + t**2 * outer  # quadratic Bézier
        half_thickness = identity.brow_thickness * (1.0 - 0.45 * t)
        outline = np.concatenate([centre - [0, 1] * half_thickness, (centre + [0, 1] * half_thickness)[::-1]])
        painter.fill(outline, identity.hair * 0.9, _DEPTH_BROW)

    crease_colour = skin * 0.6
    frown = geometry.brow_inner * -1.0 - 0.3  # vertical glabella lines of a frown
    if frown > 0:
        for x in (-0.045, 0.045):
            line = np.array([[x * 1.2, brow_y - 0.02], [x, brow_y + 0.1]])
            painter.line(line, _mix(skin, crease_colour, 0.9 * frown), 0.018, _DEPTH_BROW)
    lift = geometry.brow_raise - 0.35  # horizontal forehead lines of raised brows
    if lift > 0:
        xs = np.linspace(-0.42, 0.42, 9)
        for row in range(3):
            ys = brow_y - 0.16 - 0.075 * row + 0.05 * (xs / 0.42) ** 2
            painter.line(np.stack([xs, ys], axis=1), _mix(skin, crease_colour, 0.8 * lift), 0.014, 0.3)
    return brow_y


def _draw_eyes(painter: _FacePainter, identity: _Identity, geometry: ExpressionGeometry) -> None:
    half_width = 0.17 * identity.eye_size
    upper_height = 0.085 * identity.eye_size * geometry.eye_open
    lower_height = 0.055 * identity.eye_size * geometry.eye_open
    u = np.linspace(-1.0, 1.0, 15)
    upper = -upper_height * (1.0 - u**2) ** 0.7
    # A raised cheek pushes the lower lid up; at full strength it curves upward: the crescent eye of a smile.
    lower = lower_height * (1.0 - u**2) * (1.0 - 1.5 * geometry.lower_lid)
    lower = np.maximum(lower, upper + 0.006)
    lid_colour = identity.hair * 0.5 + identity.skin * 0.2
    for side in (-1.0, 1.0):
        centre_x = side * identity.eye_spacing
        xs = centre_x + half_width * u
        eye_white = np.concatenate(
            [np.stack([xs, identity.eye_y + upper], 1), np.stack([xs, identity.eye_y + lower], 1)[::-1]]
        )
        painter.fill(eye_white, (235, 232, 228), _DEPTH_EYE)
        # The iris is clipped to the eye opening by clamping each of its points between the lids.
        iris_x = centre_x + identity.gaze_x
        for radius, colour in ((0.068, identity.iris), (0.03, (15, 12, 12))):
            circle = _ellipse(iris_x, identity.eye_y - 0.008, radius, radius, 20)
            offsets = np.clip((circle[:, 0] - centre_x) / half_width, -1.0, 1.0)
            top = identity.eye_y - upper_height * (1.0 - offsets**2) ** 0.7
            bottom = identity.eye_y + np.interp(offsets, u, lower)
            circle[:, 1] = np.clip(circle[:, 1], top, bottom)
            painter.fill(circle, colour, _DEPTH_EYE)
        painter.line(np.stack([xs, identity.eye_y + upper], 1), lid_colour, 0.028, _DEPTH_EYE)
        painter.line(np.stack([xs, identity.eye_y + lower], 1), identity.skin * 0.7, 0.012, _DEPTH_EYE)


def _draw_nose(
    painter: _FacePainter, identity: _Identity, geometry: ExpressionGeometry, skin: np.ndarray
) -> float:
    """Nose base, nostrils and the disgust wrinkle; returns the nose base height."""
    base_y = identity.eye_y + identity.nose_length + 0.12 - 0.035 * geometry.nose_wrinkle
    shade = skin * 0.72
    bridge = np.array([[0.06, identity.eye_y + 0.1], [0.08, base_y - 0.12], [0.11, base_y - 0.03]])
    painter.line(bridge, _mix(skin, shade, 0.5), 0.016, _DEPTH_NOSE_BRIDGE)
    xs = np.linspace(-0.14, 0.14, 9)
    base = np.stack([xs, base_y + 0.035 * (1 - (xs / 0.14) ** 2) - 0.02], axis=1)
    painter.line(base, shade, 0.022, _DEPTH_NOSE_TIP)
    nostril_width = 0.032 * (1.0 + 0.5 * geometry.nose_wrinkle)
    for side in (-1.0, 1.0):
        painter.fill(_ellipse(side * 0.065, base_y, nostril_width, 0.016, 12), skin * 0.35, _DEPTH_NOSE_TIP)
    if geometry.nose_wrinkle > 0.2:
        wrinkle_colour = _mix(skin, skin * 0.55, geometry.nose_wrinkle)
        for row in range(3):
            y = identity.eye_y + 0.06 + 0.05 * row
            wrinkle = np.array([[-0.08, y + 0.012], [0.0, y - 0.008], [0.08, y + 0.012]])
            painter.line(wrinkle, wrinkle_colour, 0.014, _DEPTH_NOSE_BRIDGE)
    return base_y


@dataclasses.dataclass
class _MouthCurves:
    """Lip contours (face units) sampled at positions ``t`` in [-1, 1] from corner to corner."""

    half_width: float
    x: np.ndarray
    middle: np.ndarray  # where the lips meet when closed
    upper_inner: np.ndarray
    lower_inner: np.ndarray
    upper_outer: np.ndarray
    lower_outer: np.ndarray


def _mouth_curves(
    identity: _Identity, geometry: ExpressionGeometry, asymmetry_side: float, t: np.ndarray
) -> _MouthCurves:
    """The mouth shape, shared by the drawing and the landmarks so the two always agree."""
    half_width = 0.3 * geometry.mouth_width * identity.mouth_size
    raised_side = np.clip(asymmetry_side * t, 0.0, None)
    corner_lift = 0.13 * geometry.mouth_curve * t**2 + 0.17 * geometry.mouth_asym * raised_side**1.5
    middle = identity.mouth_y - corner_lift
    # Squarer opening for a stretched (fear) mouth, rounder for an O.
    bulge = (1.0 - t**2) ** (0.5 - 0.35 * geometry.mouth_stretch)
    opening = 0.22 * geometry.mouth_open
    # Disgust raises the upper lip, more on one side.
    lip_raise = 0.07 * geometry.upper_lip * bulge * (1.0 + 0.6 * asymmetry_side * t)
    upper_inner = middle - 0.4 * opening * bulge - lip_raise
    lower_inner = middle + 0.6 * opening * bulge
    thinning = 1.0 - 0.65 * geometry.lip_press
    return _MouthCurves(
        half_width=half_width,
        x=t * half_width,
        middle=middle,
        upper_inner=upper_inner,
        lower_inner=lower_inner,
        upper_outer=upper_inner - 0.05 * identity.lip_thickness * thinning * bulge**0.5,
        lower_outer=lower_inner + 0.065 * identity.lip_thickness * thinning * bulge**0.5,
    )


def _draw_mouth(
    painter: _FacePainter,
    identity: _Identity,
    geometry: ExpressionGeometry,
    skin: np.ndarray,
    nose_base_y: float,
    asymmetry_side: float,
) -> None:
    t = np.linspace(-1.0, 1.0, 21)
    mouth = _mouth_curves(identity, geometry, asymmetry_side, t)
    half_width, xs, middle_y = mouth.half_width, mouth.x, mouth.middle
    upper_inner, lower_inner = mouth.upper_inner, mouth.lower_inner
    upper_outer, lower_outer = mouth.upper_outer, mouth.lower_outer

    # Cheek folds from the nose wings to the mouth corners deepen with a smile or a sneer.
    fold_strength = 0.8 * max(geometry.mouth_curve, 0.0) + 0.8 * geometry.upper_lip + 0.3 * geometry.lower_lid
    if fold_strength > 0.15:
        for side_index, side in enumerate((-1.0, 1.0)):
            corner_y = middle_y[0] if side_index == 0 else middle_y[-1]
            fold = np.array(
                [
                    [side * 0.17, nose_base_y - 0.02],
                    [side * (half_width + 0.07), (nose_base_y + corner_y) / 2],
                    [side * (half_width + 0.06), corner_y + 0.05],
                ]
            )
            painter.line(fold, _mix(skin, skin * 0.6, fold_strength * 0.8), 0.016, _DEPTH_MOUTH)

    lips = np.concatenate([np.stack([xs, upper_outer], 1), np.stack([xs, lower_outer], 1)[::-1]])
    painter.fill(lips, identity.lips, _DEPTH_MOUTH)
    gap = lower_inner - upper_inner
    if gap.max() > 0.012:
        inner = np.concatenate([np.stack([xs, upper_inner], 1), np.stack([xs, lower_inner], 1)[::-1]])
        painter.fill(inner, (60, 20, 25), _DEPTH_MOUTH)
        if geometry.teeth > 0.1:
            teeth_bottom = upper_inner + gap * min(0.55, 0.6 * geometry.teeth)
            teeth = np.concatenate([np.stack([xs, upper_inner], 1), np.stack([xs, teeth_bottom], 1)[::-1]])
            painter.fill(teeth, (238, 235, 225), _DEPTH_MOUTH)
    painter.line(
        np.stack([xs, middle_y], 1) if gap.max() <= 0.012 else np.stack([xs, upper_inner], 1),
        identity.lips * 0.55,
        0.016,
        _DEPTH_MOUTH,
    )


def _draw_occluders(
    painter: _FacePainter, identity: _Identity, rng: np.random.Generator, nuisance: float
) -> None:
    """Glasses, a hand near the face, or a bar across the picture: things that hide facial cues."""
    if rng.random() < 0.15 * nuisance:
        sunglasses = rng.random() < 0.2
        frame = np.array([20, 20, 20]) + rng.uniform(0, 60, size=3)
        for side in (-1.0, 1.0):
            rim = _ellipse(side * identity.eye_spacing, identity.eye_y, 0.24, 0.16, 24)
            if sunglasses:
                painter.fill(rim, (30, 30, 35), _DEPTH_EYE + 0.1)
            painter.line(rim, frame, 0.03, _DEPTH_EYE + 0.1, closed=True)
        bridge = np.array(
            [[-identity.eye_spacing + 0.24, identity.eye_y], [identity.eye_spacing - 0.24, identity.eye_y]]
        )
        painter.line(bridge, frame, 0.03, _DEPTH_EYE + 0.1)
    if rng.random() < 0.08 * nuisance:
        side = rng.choice((-1.0, 1.0))
        palm_x, palm_y = side * rng.uniform(0.3, 0.8), rng.uniform(0.7, 1.1)
        hand_colour = np.clip(identity.skin * rng.uniform(0.85, 1.05), 0, 255)
        painter.fill(_ellipse(palm_x, palm_y, 0.3, 0.26, 24), hand_colour, 0.8)
        for finger in range(4):
            finger_x = palm_x - side * (0.2 - 0.12 * finger)
            painter.fill(_ellipse(finger_x, palm_y - 0.33, 0.055, 0.17, 14), hand_colour, 0.8)
    if rng.random() < 0.1 * nuisance:
        height, width = painter.canvas.shape[:2]
        centre = (rng.uniform(0, width), rng.uniform(0, height))
        size = (rng.uniform(0.3, 1.5) * width, rng.uniform(0.06, 0.18) * height)
        corners = cv2.boxPoints((centre, size, rng.uniform(0, 180)))
        colour = rng.uniform(0, 255, size=3)
        cv2.fillPoly(painter.canvas, [np.round(corners).astype(np.int32)], _as_colour(colour), cv2.LINE_AA)


def _linear_ramp(height: int, width: int, angle: float) -> np.ndarray:
    """Position along direction ``angle``, zero at the centre, in units of the longer side (float32)."""
    xs = (np.arange(width, dtype=np.float32) - width / 2) * math.cos(angle)
    ys = (np.arange(height, dtype=np.float32) - height / 2) * math.sin(angle)
    return (ys[:, None] + xs[None, :]) / max(height, width)


def _background(rng: np.random.Generator, height: int, width: int, nuisance: float) -> np.ndarray:
    """Flat colour, linear gradient, or blotchy texture (float32 RGB)."""
    base = rng.uniform(40, 220, size=3).astype(np.float32)
    if nuisance <= 0:
        return np.full((height, width, 3), 128.0, dtype=np.float32)
    kind = rng.choice(3)
    if kind == 0:
        return np.full((height, width, 3), base, dtype=np.float32)
    if kind == 1:
        other = rng.uniform(40, 220, size=3).astype(np.float32)
        angle = rng.uniform(0, 2 * math.pi)
        ramp = _linear_ramp(height, width, angle)
        ramp = (ramp - ramp.min()) / max(float(np.ptp(ramp)), 1e-6)
        return base * (1 - ramp[..., None]) + other * ramp[..., None]
    cells = int(rng.integers(3, 10))
    blotches = rng.normal(0.0, 35.0 * nuisance, size=(cells, cells, 3)).astype(np.float32)
    return base + cv2.resize(blotches, (width, height), interpolation=cv2.INTER_CUBIC)


def _landmarks_68(
    identity: _Identity,
    geometry: ExpressionGeometry,
    brow_y: float,
    nose_base_y: float,
    asymmetry_side: float,
) -> tuple[np.ndarray, np.ndarray]:
    """The 68 iBUG landmarks (face units) and their depths, from the same geometry that was drawn.

    Order as in the 300-W / AffectNet convention: jaw 0-16 from the subject's right (picture left),
    brows 17-26, nose 27-35, eyes 36-47, outer lips 48-59, inner lips 60-67.
    """
    points: list[tuple[float, float]] = []
    depths: list[float] = []

    def add(x: float, y: float, depth: float) -> None:
        points.append((x, y))
        depths.append(depth)

    angles = np.linspace(math.pi, 0.0, 17)  # picture left → chin → picture right, along the lower half
    for angle in angles:
        sin = math.sin(angle)
        narrowing = 1.0 - identity.jaw_narrowing * sin**2
        add(identity.face_width * math.cos(angle) * narrowing, identity.face_height * 0.95 * sin - 0.05, 0.0)
    inner_lift = 0.1 * geometry.brow_inner
    for side in (-1.0, 1.0):
        order = np.linspace(0.64, 0.11, 5) if side < 0 else np.linspace(0.11, 0.64, 5)
        for x in order:
            fraction = (x - 0.11) / 0.53
            y = (
                brow_y
                + 0.02
                - inner_lift * (1 - fraction)
                - identity.brow_arch * 4 * fraction * (1 - fraction)
            )
            add(side * x, y, _DEPTH_BROW)
    for fraction in np.linspace(0.0, 1.0, 4):
        add(
            0.0,
            identity.eye_y + fraction * (nose_base_y - 0.04 - identity.eye_y),
            _DEPTH_NOSE_BRIDGE + 0.25 * fraction,
        )
    for x in np.linspace(-0.12, 0.12, 5):
        add(x, nose_base_y + 0.015 * (1 - (x / 0.12) ** 2), _DEPTH_NOSE_TIP)
    half_width = 0.17 * identity.eye_size
    upper_height = 0.085 * identity.eye_size * geometry.eye_open
    lower_height = 0.055 * identity.eye_size * geometry.eye_open * (1.0 - 1.5 * geometry.lower_lid)
    for side in (-1.0, 1.0):
        centre_x = side * identity.eye_spacing
        # Each eye: outer/inner corner then round the upper lid and back along the lower one, clockwise.
        for u, on_upper in (
            (-1.0, None),
            (-0.35, True),
            (0.35, True),
            (1.0, None),
            (0.35, False),
            (-0.35, False),
        ):
            if on_upper is None:
                offset = 0.0
            elif on_upper:
                offset = -upper_height * (1.0 - u**2) ** 0.7
            else:
                offset = max(lower_height * (1.0 - u**2), -upper_height * (1.0 - u**2) ** 0.7 + 0.006)
            add(centre_x + u * half_width, identity.eye_y + offset, _DEPTH_EYE)

    def mouth_point(t: float, level: str) -> tuple[float, float]:
        curves = _mouth_curves(identity, geometry, asymmetry_side, np.array([t]))
        return float(curves.x[0]), float(getattr(curves, level)[0])

    outer_path = [(t, "upper_outer") for t in (-1.0, -0.6, -0.25, 0.0, 0.25, 0.6, 1.0)]
    outer_path += [(t, "lower_outer") for t in (0.6, 0.25, 0.0, -0.25, -0.6)]
    inner_path = [(t, "upper_inner") for t in (-0.9, -0.4, 0.0, 0.4, 0.9)]
    inner_path += [(t, "lower_inner") for t in (0.4, 0.0, -0.4)]
    for t, level in outer_path + inner_path:
        add(*mouth_point(t, level), _DEPTH_MOUTH)
    return np.array(points, dtype=np.float64), np.array(depths, dtype=np.float64)


@dataclasses.dataclass
class RenderedFace:
    """A drawn picture with the face's landmarks and bounding box in its own pixel coordinates."""

    image: np.ndarray  # RGB uint8 (H, W, 3)
    landmarks: np.ndarray  # float (68, 2), x/y pixels, iBUG order
    box: tuple[float, float, float, float]  # min_x, min_y, max_x, max_y of the head outline


def _apply_photometric_effects(image: np.ndarray, rng: np.random.Generator, nuisance: float) -> np.ndarray:
    """Lighting gradient, colour cast, contrast, blur, sensor noise and JPEG artefacts (float32 in/out)."""
    height, width = image.shape[:2]
    angle = rng.uniform(0, 2 * math.pi)
    strength = nuisance * rng.uniform(0.0, 0.6)
    ramp = _linear_ramp(height, width, angle)
    brightness = 1.0 + nuisance * rng.uniform(-0.3, 0.2)
    gain = brightness * (1.0 + strength * ramp)
    colour_cast = 1.0 + nuisance * rng.normal(0.0, 0.05, size=3)
    image = image * gain[..., None] * colour_cast.astype(np.float32)
    contrast = 1.0 + nuisance * rng.uniform(-0.3, 0.1)
    image = (image - image.mean()) * contrast + image.mean()
    blur_sigma = nuisance * rng.uniform(0.0, 1.2) if rng.random() < 0.5 else 0.0
    if blur_sigma > 0.15:
        image = cv2.GaussianBlur(image, (0, 0), blur_sigma)
    noise_sigma = nuisance * rng.uniform(0.0, 8.0)
    image = image + rng.standard_normal(size=image.shape, dtype=np.float32) * np.float32(noise_sigma)
    image = np.clip(image, 0, 255)
    if rng.random() < 0.3 * nuisance:
        quality = int(rng.integers(20, 70))
        encoded = cv2.imencode(".jpg", image.astype(np.uint8), [cv2.IMWRITE_JPEG_QUALITY, quality])[1]
        image = cv2.imdecode(encoded, cv2.IMREAD_UNCHANGED).astype(np.float32)
    return image


def _render_scene(
    expression: str | None,
    rng: np.random.Generator,
    width: int,
    height: int,
    face_center: tuple[float, float],
    face_half_width: float,
    nuisance: float,
) -> RenderedFace:
    """Draw a picture of ``width``×``height`` pixels with one face (or none, when ``expression`` is None).

    ``face_center`` and ``face_half_width`` are in output pixels; pose jitter is added here.
    """
    geometry = sample_expression_geometry(expression, rng) if expression is not None else None
    asymmetry_side = float(rng.choice((-1.0, 1.0)))
    identity = _sample_identity(rng, nuisance)
    pose = _Pose(
        center_x=face_center[0] * _SUPERSAMPLE,
        center_y=face_center[1] * _SUPERSAMPLE,
        half_width=face_half_width * _SUPERSAMPLE,
        roll=math.radians(float(np.clip(rng.normal(0.0, 9.0), -25, 25)) * nuisance),
        yaw=math.radians(float(np.clip(rng.normal(0.0, 15.0), -35, 35)) * nuisance),
        pitch=math.radians(float(np.clip(rng.normal(0.0, 8.0), -20, 20)) * nuisance),
    )
    # Backgrounds are smooth, so they are made at output size and only upsampled for drawing.
    background = _background(rng, height, width, nuisance)
    canvas = cv2.resize(
        background, (width * _SUPERSAMPLE, height * _SUPERSAMPLE), interpolation=cv2.INTER_LINEAR
    )
    painter = _FacePainter(canvas, pose)
    landmarks = np.zeros((68, 2))
    box = (0.0, 0.0, 0.0, 0.0)
    if geometry is not None:
        skin = identity.skin
        _draw_hair_back(painter, identity)
        neck = np.array([[-0.42, 0.8], [0.42, 0.8], [0.5, 2.2], [-0.5, 2.2]])
        painter.fill(neck, skin * 0.8)
        # Shoulders: a rounded top continued far downwards, so the body reaches the bottom of any frame.
        shoulders = np.concatenate([_ellipse(0.0, 2.5, 1.9, 0.9, 32)[16:], [[1.9, 12.0], [-1.9, 12.0]]])
        painter.fill(shoulders, identity.clothes)
        for side in (-1.0, 1.0):
            painter.fill(
                _ellipse(side * identity.face_width * 0.97, -0.02, 0.13, 0.22, 16), skin * 0.92, -0.3
            )
        outline = _face_outline(identity)
        painter.fill(outline, skin)
        _draw_hair_front(painter, identity, rng)
        brow_y = _draw_brows(painter, identity, geometry, skin)
        _draw_eyes(painter, identity, geometry)
        nose_base_y = _draw_nose(painter, identity, geometry, skin)
        _draw_mouth(painter, identity, geometry, skin, nose_base_y, asymmetry_side)
        _draw_occluders(painter, identity, rng, nuisance)
        face_points, depths = _landmarks_68(identity, geometry, brow_y, nose_base_y, asymmetry_side)
        landmarks = painter.project(face_points, depths) / _SUPERSAMPLE
        outline_pixels = painter.project(outline) / _SUPERSAMPLE
        box = (
            float(outline_pixels[:, 0].min()),
            float(outline_pixels[:, 1].min()),
            float(outline_pixels[:, 0].max()),
            float(outline_pixels[:, 1].max()),
        )
    image = cv2.resize(canvas, (width, height), interpolation=cv2.INTER_AREA)
    image = _apply_photometric_effects(image, rng, nuisance)
    return RenderedFace(image=image.astype(np.uint8), landmarks=landmarks, box=box)


def _render_in_box(
    expression: str | None,
    rng: np.random.Generator,
    width: int,
    height: int,
    box: tuple[float, float, float],
    nuisance: float,
) -> RenderedFace:
    """Draw a face that an aligner would crop as the square ``box`` = (left, top, side), with jitter.

    The face fills the box as in aligned datasets (RAF-DB): centred a little above the middle, its
    half-width a third of the side; ``nuisance`` moves and rescales it slightly, as alignment errs.
    """
    left, top, side = box
    scale = 1.0 + nuisance * rng.uniform(-0.12, 0.12)
    shift_x, shift_y = nuisance * rng.normal(0.0, 0.035, size=2) * side
    return _render_scene(
        expression,
        rng,
        width,
        height,
        face_center=(left + side / 2 + shift_x, top + side * 0.47 + shift_y),
        face_half_width=0.33 * side * scale,
        nuisance=nuisance,
    )


def render_face_with_landmarks(
    expression: str, rng: np.random.Generator, size: int = 100, nuisance: float = 1.0
) -> RenderedFace:
    """Like :func:`render_face`, also returning the 68 landmarks and the head box in pixels."""
    return _render_in_box(expression, rng, size, size, (0.0, 0.0, float(size)), nuisance)


def render_face(
    expression: str, rng: np.random.Generator, size: int = 100, nuisance: float = 1.0
) -> np.ndarray:
    """Draw one aligned face showing ``expression`` (one of :data:`EXPRESSIONS`).

    Returns an RGB uint8 array of shape (size, size, 3). ``nuisance`` scales the variation that does not
    depend on the expression (pose, identity, colours, lighting, background, occluders, blur, noise):
    0 gives a frontal average face on grey, 1 the default spread. The expression itself always varies in
    intensity and detail, so even at ``nuisance=0`` two draws differ.
    """
    return render_face_with_landmarks(expression, rng, size, nuisance).image


def render_no_face(rng: np.random.Generator, width: int, height: int, nuisance: float) -> np.ndarray:
    """A picture without a face (AffectNet's "No-Face" rows, FER+'s "NF" rows)."""
    return _render_scene(
        None, rng, width, height, (width / 2, height / 2), width / 3, max(nuisance, 0.5)
    ).image


def render_in_frame(
    expression: str | None,
    rng: np.random.Generator,
    face_size: int,
    nuisance: float,
    frame_size: tuple[int, int] | None = None,
) -> tuple[RenderedFace, tuple[float, float, float]]:
    """A face inside a larger picture, as in-the-wild datasets ship them; returns it with its face box.

    ``frame_size`` (width, height) fixes the picture size; by default it is the face plus random margins.
    The box is (left, top, side) of the square an aligner would crop.
    """
    if frame_size is None:
        margins = rng.uniform(0.15, 0.9, size=4) * face_size  # left, top, right, bottom
        width = round(face_size + margins[0] + margins[2])
        height = round(face_size + margins[1] + margins[3])
        left, top = float(round(margins[0])), float(round(margins[1]))
    else:
        width, height = frame_size
        left = float(round(rng.uniform(0, max(width - face_size, 0))))
        top = float(round(rng.uniform(0, max(height - face_size, 0))))
    box = (left, top, float(face_size))
    return _render_in_box(expression, rng, width, height, box, nuisance), box
