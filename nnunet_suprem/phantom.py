"""Synthetic CT-like abdominal phantoms with per-organ labels.

A phantom is defined in patient space (ITK's LPS millimetres: +x = patient left,
+y = posterior, +z = superior; the body centre is the origin) and sampled onto the voxel
grid of a :class:`Hospital`, which fixes size, spacing, orientation and noise. Because the
anatomy lives in patient space, a left organ stays on the patient's left whatever the
array orientation, exactly as in real scans.

Every case is drawn from its own random stream (seed, hospital, case index), so a case is
reproducible on its own and cases can be generated in parallel.
"""
from __future__ import annotations

import dataclasses
import zlib
from dataclasses import dataclass
from typing import Mapping

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from nnunet_suprem.taxonomy import in_taxonomy_order


@dataclass(frozen=True)
class Organ:
    """An ellipsoid organ: centre and semi-axes in mm (LPS), mean intensity in HU."""
    name: str
    center: tuple[float, float, float]
    radii: tuple[float, float, float]
    hu: float
    presence: float = 1.0  # probability that a case has this organ (e.g. after cholecystectomy)
    scaled_axes: tuple[bool, bool, bool] = (True, True, True)  # the semi-axes that ``organ_scale`` enlarges

    def scaled_radii(self, organ_scale: float) -> np.ndarray:
        """Semi-axes with ``organ_scale`` applied along ``scaled_axes``."""
        return np.asarray(self.radii) * np.where(self.scaled_axes, organ_scale, 1.0)


_BODY_SIZED = (False, False, False)  # liver and lungs already span a coarse grid
_TUBE = (True, True, False)  # vessels: thicker, not longer

# Painted in this order: a later organ overwrites an earlier one where they touch.
ORGANS: tuple[Organ, ...] = (
    Organ("lung_left", (75, 15, 105), (55, 65, 55), -850, scaled_axes=_BODY_SIZED),
    Organ("lung_right", (-75, 15, 105), (55, 65, 55), -850, scaled_axes=_BODY_SIZED),
    Organ("liver", (-60, -5, 45), (70, 60, 50), 60, scaled_axes=_BODY_SIZED),
    Organ("spleen", (80, 35, 45), (28, 40, 40), 48),
    Organ("stomach", (40, -40, 50), (38, 28, 35), 20),
    Organ("gall_bladder", (-45, -50, 5), (17, 17, 28), 8, presence=0.85),
    Organ("adrenal_gland_left", (45, 35, 35), (11, 9, 18), 30),
    Organ("adrenal_gland_right", (-40, 35, 32), (11, 9, 18), 30),
    Organ("kidney_left", (62, 45, -5), (26, 24, 48), 160),
    Organ("kidney_right", (-62, 45, -15), (26, 24, 48), 160),
    Organ("pancreas", (10, 5, 10), (52, 12, 14), 45),
    Organ("aorta", (12, 28, 0), (13, 13, 120), 190, scaled_axes=_TUBE),
    Organ("postcava", (-22, 22, 5), (15, 13, 100), 130, scaled_axes=_TUBE),
    Organ("bladder", (0, -35, -100), (35, 30, 28), 5),
    Organ("femur_left", (80, 10, -122), (22, 22, 38), 650),
    Organ("femur_right", (-80, 10, -122), (22, 22, 38), 650),
)
PHANTOM_CLASSES: tuple[str, ...] = tuple(in_taxonomy_order(o.name for o in ORGANS))
"""Class names a phantom can contain, in AbdomenAtlas order (the label order of its label maps)."""

ORGAN_SCALE_RANGE = (0.5, 2.0)
"""Allowed ``organ_scale``: beyond it organs swallow their neighbours or vanish on coarse grids."""

BODY_RADII = (140.0, 105.0)  # body cross-section semi-axes (x, y) in mm
BODY_HALF_LENGTH = 150.0  # the body fills z in [-150, 150] mm
FAT_HU, MUSCLE_HU, AIR_HU, BONE_HU = -100.0, 50.0, -1000.0, 500.0

_AXIS_VECTORS = {"L": (1, 0, 0), "R": (-1, 0, 0), "P": (0, 1, 0), "A": (0, -1, 0), "S": (0, 0, 1), "I": (0, 0, -1)}


def direction_from_orientation(code: str) -> np.ndarray:
    """3x3 direction matrix (columns = array axes in LPS) for an orientation code.

    The code names where each array axis points to, as nibabel's ``aff2axcodes`` does:
    "LPS" is ITK's identity direction, "RAS" the NIfTI convention.
    """
    code = code.upper()
    if len(code) != 3 or any(c not in _AXIS_VECTORS for c in code):
        raise ValueError(f"orientation {code!r} must be 3 letters out of L/R, P/A, S/I")
    direction = np.array([_AXIS_VECTORS[c] for c in code], dtype=float).T
    if abs(np.linalg.det(direction)) != 1:
        raise ValueError(f"orientation {code!r} names an anatomical axis twice")
    return direction


@dataclass(frozen=True)
class Hospital:
    """Acquisition protocol of one simulated source: grid, orientation, noise and annotations.

    ``annotated`` lists the classes this source labels (None: all phantom classes); the
    others are present in the image but left unlabelled, as in partially labelled datasets.
    """
    name: str
    shape: tuple[int, int, int]  # voxels along the array axes (x, y, z in ITK index order)
    spacing: tuple[float, float, float]  # mm
    orientation: str = "LPS"
    noise_hu: float = 20.0
    annotated: tuple[str, ...] | None = None

    def __post_init__(self):
        direction_from_orientation(self.orientation)
        if self.annotated is not None:
            unknown = sorted(set(self.annotated) - set(PHANTOM_CLASSES))
            if unknown:
                raise ValueError(f"hospital {self.name!r}: unknown phantom classes {unknown}; "
                                 f"choose from {list(PHANTOM_CLASSES)}")

    @property
    def annotated_classes(self) -> tuple[str, ...]:
        return PHANTOM_CLASSES if self.annotated is None else tuple(in_taxonomy_order(self.annotated))

    def with_shape(self, shape: tuple[int, int, int]) -> "Hospital":
        """Same field of view on a grid of ``shape`` voxels (spacing rescaled)."""
        spacing = tuple(s * n / m for s, n, m in zip(self.spacing, self.shape, shape))
        return dataclasses.replace(self, shape=tuple(shape), spacing=spacing)


HOSPITALS: dict[str, Hospital] = {h.name: h for h in (
    Hospital("hospA", (48, 48, 40), (6.6, 6.6, 7.5), "LPS", noise_hu=15),
    Hospital("hospB", (44, 44, 48), (7.2, 7.2, 6.0), "RAS", noise_hu=25),
    Hospital("hospC", (52, 52, 36), (6.0, 6.0, 8.4), "RPS", noise_hu=35),
)}
"""Built-in acquisition protocols (about 31 cm field of view, coarse enough for CPU tests)."""


@dataclass
class Phantom:
    """One synthetic case: the CT and its full label map (values = ``classes`` positions + 1)."""
    ct: sitk.Image
    labels: sitk.Image
    classes: tuple[str, ...]

    def mask(self, name: str) -> sitk.Image:
        """Binary uint8 mask of class ``name`` (empty if the case lacks the organ)."""
        return sitk.Cast(self.labels == (self.classes.index(name) + 1), sitk.sitkUInt8)

    def label_map(self, values: Mapping[str, int]) -> sitk.Image:
        """Label map with ``values[name]`` for each listed class; every other organ becomes 0."""
        lut = np.zeros(len(self.classes) + 1, dtype=np.uint8)
        for name, value in values.items():
            lut[self.classes.index(name) + 1] = value
        out = sitk.GetImageFromArray(lut[sitk.GetArrayViewFromImage(self.labels)])
        out.CopyInformation(self.labels)
        return out


def case_rng(seed: int, hospital: Hospital, index: int) -> np.random.Generator:
    """The random stream of one case, independent of every other case."""
    return np.random.default_rng([seed, zlib.crc32(hospital.name.encode()), index])


def check_organ_scale(organ_scale: float) -> float:
    low, high = ORGAN_SCALE_RANGE
    if not low <= organ_scale <= high:
        raise ValueError(f"organ scale {organ_scale} is outside [{low}, {high}]")
    return organ_scale


def synthesize_case(hospital: Hospital, rng: np.random.Generator, organ_scale: float = 1.0) -> Phantom:
    """Draw one patient and image it with ``hospital``'s protocol.

    ``organ_scale`` enlarges every organ smaller than the liver and lungs (vessels in cross-section only), so that
    small organs span more voxels on coarse grids (the fast demo's phantoms); 1 is the reference anatomy.
    """
    check_organ_scale(organ_scale)
    direction = direction_from_orientation(hospital.orientation)
    shape = np.asarray(hospital.shape)
    spacing = np.asarray(hospital.spacing, dtype=float)
    # centre the grid on the body, with a random table offset
    centre = rng.uniform(-8, 8, 3)
    origin = centre - direction @ (spacing * (shape - 1) / 2)

    # patient-space coordinates (mm) of every voxel, arrays indexed [x, y, z]
    index = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), axis=-1)
    points = (index * spacing) @ direction.T + origin
    scale = rng.uniform(0.9, 1.1, 3)  # patient size
    x, y, z = (points / scale).transpose(3, 0, 1, 2)

    hu = np.full(shape, AIR_HU)
    body = ((x / BODY_RADII[0]) ** 2 + (y / BODY_RADII[1]) ** 2 <= 1) & (np.abs(z) <= BODY_HALF_LENGTH)
    inner = (x / (BODY_RADII[0] - 15)) ** 2 + (y / (BODY_RADII[1] - 15)) ** 2 <= 1
    hu[body] = FAT_HU
    hu[body & ~inner] = MUSCLE_HU  # abdominal wall
    hu[body & inner] = rng.uniform(-20, 20)  # soft-tissue background
    spine = ((x / 20) ** 2 + ((y - 70) / 20) ** 2 <= 1) & body
    hu[spine] = BONE_HU

    labels = np.zeros(shape, dtype=np.uint8)
    for organ in ORGANS:
        if rng.random() >= organ.presence:
            continue
        c = np.asarray(organ.center) + rng.uniform(-6, 6, 3)
        r = organ.scaled_radii(organ_scale) * rng.uniform(0.85, 1.15, 3)
        inside = ((x - c[0]) / r[0]) ** 2 + ((y - c[1]) / r[1]) ** 2 + ((z - c[2]) / r[2]) ** 2 <= 1
        inside &= body
        hu[inside] = organ.hu + rng.normal(0, 8)
        labels[inside] = PHANTOM_CLASSES.index(organ.name) + 1

    # partial-volume blur, a smooth bias field and acquisition noise
    hu = ndimage.gaussian_filter(hu, sigma=0.6)
    bias = ndimage.zoom(rng.normal(0, 12, (4, 4, 4)), shape / 4, order=1)
    hu = hu + bias + rng.normal(0, hospital.noise_hu, shape)
    ct = np.clip(np.round(hu), -1024, 3071).astype(np.int16)

    def to_image(array: np.ndarray) -> sitk.Image:
        image = sitk.GetImageFromArray(np.ascontiguousarray(array.transpose(2, 1, 0)))  # sitk arrays are [z, y, x]
        image.SetSpacing(tuple(float(s) for s in spacing))
        image.SetOrigin(tuple(float(o) for o in origin))
        image.SetDirection(tuple(float(d) for d in direction.ravel()))
        return image

    return Phantom(to_image(ct), to_image(labels), PHANTOM_CLASSES)
