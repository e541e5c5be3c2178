"""Small file helpers shared by every reader and writer of user data.

- names from user data and the output paths built from them (``check_name``, ``path_inside``);
- atomic writes (temporary name beside the target, then rename);
- NIfTI integrity: every image is fully decoded before it is accepted (``check_image_file``),
  because SimpleITK zero-fills a truncated gzip stream and reads NaN as 0 without a word.
"""
from __future__ import annotations

import io
import json
import os
import re
import shutil
import tempfile
import unicodedata
import zlib
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import SimpleITK as sitk

NIFTI_ENDINGS = (".nii.gz", ".nii")
_CHUNK = 1 << 22  # bytes decoded at a time by check_image_file


def hidden_characters(text: str) -> list[str]:
    """The characters of ``text`` that do not show as themselves: controls (C0, DEL, C1), format characters
    (bidi overrides and isolates, zero-width characters, soft hyphen, byte-order mark), line and paragraph
    separators, surrogates, private-use and unassigned code points (Unicode categories C*, Zl, Zp)."""
    return [c for c in text if unicodedata.category(c)[0] == "C" or unicodedata.category(c) in ("Zl", "Zp")]


def check_text(value: object, what: str, source: str | os.PathLike) -> str:
    """``value`` if it is a non-empty string without control or invisible characters (``hidden_characters``);
    else ValueError naming ``source``."""
    if not isinstance(value, str) or not value:
        raise ValueError(f"{source}: {what} {value!r} is not a non-empty string")
    if hidden := hidden_characters(value):
        shown = ", ".join(sorted({f"U+{ord(c):04X}" for c in hidden}))
        raise ValueError(f"{source}: {what} {value!r} contains control characters or invisible ones ({shown})")
    return value


def check_name(name: object, what: str, source: str | os.PathLike) -> str:
    """``name`` if it is safe as one file-name component; else ValueError naming ``source``.

    Refused: what ``check_text`` refuses, hidden names (leading dot, so also ``.`` and ``..``)
    and path separators.
    """
    check_text(name, what, source)
    if name.startswith("."):
        raise ValueError(f"{source}: {what} {name!r} starts with '.' (hidden names and '..' are not allowed)")
    if "/" in name or "\\" in name:
        raise ValueError(f"{source}: {what} {name!r} contains a path separator")
    return name


def check_file_ending(ending: object, source: str | os.PathLike) -> str:
    """A dataset.json ``file_ending`` such as ``.nii.gz``: a dot, then letters and digits (ValueError otherwise)."""
    if not (isinstance(ending, str) and ending.startswith(".") and len(ending) > 1
            and all(part.isalnum() and part.isascii() for part in ending[1:].split("."))):
        raise ValueError(f"{source}: file_ending {ending!r} is not an ending like '.nii.gz'")
    return ending


def path_inside(root: str | os.PathLike, *parts: str) -> Path:
    """``root/part/...`` after checking that it resolves to a path inside ``root`` (ValueError otherwise)."""
    root = Path(root)
    path = root.joinpath(*parts)
    resolved, base = path.resolve(), root.resolve()
    if resolved == base or not resolved.is_relative_to(base):
        raise ValueError(f"refusing to write {path}: it lies outside {root}")
    return path


def source_fingerprint(paths: Iterable[Path]) -> dict[str, list[int]]:
    """``{path: [size, modification time in ns]}`` of the files a case is converted from (missing: [-1, -1])."""
    fingerprint = {}
    for path in paths:
        try:
            stat = os.stat(path)
            fingerprint[str(path)] = [stat.st_size, stat.st_mtime_ns]
        except OSError:
            fingerprint[str(path)] = [-1, -1]
    return fingerprint


def files_in(paths: Iterable[Path]) -> list[Path]:
    """``paths`` with every folder replaced by the files under it (recursively, sorted); other paths as given."""
    files = []
    for path in map(Path, paths):
        if path.is_dir():
            files += sorted(Path(root, name) for root, _, names in os.walk(path) for name in names)
        else:
            files.append(path)
    return files


def _new_mode(directory: bool = False) -> int:
    """Permissions of a new file (0666) or folder (0777) under the current umask."""
    umask = os.umask(0)
    os.umask(umask)
    return (0o777 if directory else 0o666) & ~umask


_KEPT_CHARACTERS = 32
"""Of a final name, what a temporary name beside it keeps (at most 128 bytes): any name the file system allows
then has a temporary name it allows too."""


def _temporary_prefix(name: str, purpose: str = "") -> str:
    """A hidden prefix for a temporary name beside ``name``, showing what it becomes, bounded in length."""
    return f".{name[:_KEPT_CHARACTERS]}.{purpose}"


def _temporary_suffix(name: str) -> str:
    """The ending a writer may choose its format by: the last two suffixes (``.nii.gz``), else the last, if short."""
    suffixes = Path(name).suffixes
    for ending in ("".join(suffixes[-2:]), "".join(suffixes[-1:])):
        if 0 < len(ending) <= _KEPT_CHARACTERS // 2:
            return ending
    return ".tmp"


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[str]:
    """Yield a temporary path beside ``path`` (same ending, a bounded name) and move it into place on success.

    The temporary file is removed if the body raises, so ``path`` is either complete or absent.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=_temporary_prefix(path.name.split(".")[0]),
                               suffix=_temporary_suffix(path.name), dir=path.parent)
    os.close(fd)
    try:
        yield tmp
        os.chmod(tmp, _new_mode())  # mkstemp makes 0600; the result gets the mode any new file would
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def write_image(image: sitk.Image, path: str | os.PathLike) -> None:
    """Write ``image`` atomically (compressed when the name ends in .gz)."""
    with atomic_path(path) as tmp:
        sitk.WriteImage(image, tmp, useCompression=str(path).endswith(".gz"))


def read_json(path: str | os.PathLike) -> object:
    """The content of the JSON file ``path``; ValueError naming it when it is not UTF-8 JSON."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None


def write_json(obj, path: str | os.PathLike) -> None:
    """Write ``obj`` as indented JSON, atomically."""
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(obj, f, indent=2)
            f.write("\n")


@contextmanager
def staged_directory(final: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Build a directory under a temporary name beside ``final``; move it into place on success.

    Refuses to replace an existing ``final`` unless ``overwrite``; on failure the partial
    directory is removed and an existing ``final`` is left untouched.
    """
    final = Path(final)
    if final.exists() and not overwrite:
        raise FileExistsError(f"{final} already exists; pass --overwrite to replace it")
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=_temporary_prefix(final.name, "partial-"), dir=final.parent))
    os.chmod(staging, _new_mode(directory=True))  # mkdtemp makes 0700
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    move_directory_into_place(staging, final)


def move_directory_into_place(staging: Path, final: Path) -> None:
    """Rename ``staging`` to ``final``; an existing ``final`` is moved aside first and deleted only afterwards."""
    if final.exists():
        retired = Path(tempfile.mkdtemp(prefix=_temporary_prefix(final.name, "old-"), dir=final.parent))
        os.replace(final, retired / final.name)
        os.replace(staging, final)
        shutil.rmtree(retired)
    else:
        os.replace(staging, final)


def read_header(path: str | os.PathLike) -> sitk.ImageFileReader:
    """SimpleITK's reader of ``path`` after ReadImageInformation: size, spacing, origin, direction, no voxels."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.ReadImageInformation()
    return reader


def check_single_volume(image: sitk.Image | sitk.ImageFileReader, path: str | os.PathLike) -> None:
    """ValueError naming ``path`` unless ``image`` (or a header from ``read_header``) is 3D with one channel."""
    channels = (image.GetNumberOfComponents() if isinstance(image, sitk.ImageFileReader)
                else image.GetNumberOfComponentsPerPixel())
    if image.GetDimension() != 3 or channels != 1:
        raise ValueError(f"{path}: expected a 3D single-channel image, got {image.GetDimension()}D with "
                         f"{channels} channel(s)")


def check_image_file(path: str | os.PathLike) -> None:
    """Decode all of a NIfTI file (``.nii``/``.nii.gz``); ValueError naming it when it is damaged.

    Checked: a complete gzip stream with valid checksums, a NIfTI-1/2 header, at least as many
    voxel bytes as the header promises, and no NaN or infinite voxel in floating-point data.
    Other formats are left to their reader.
    """
    path = Path(path)
    if path.name.endswith(NIFTI_ENDINGS):
        _decode_nifti(path, keep=False)


Grid = sitk.Image | sitk.ImageFileReader  # an image, or a header from read_header: the same geometry getters
Geometry = tuple[tuple[int, ...], tuple[float, ...], tuple[float, ...], tuple[float, ...]]
GEOMETRY_TOLERANCE = 1e-4  # absolute, in mm (spacing, origin) and direction-cosine units
Tolerance = tuple[float, float]  # (rtol, atol) of np.allclose
CONVERSION_TOLERANCE: Tolerance = (0.0, GEOMETRY_TOLERANCE)
NNUNET_TOLERANCE: Tolerance = (1e-5, 1e-8)
"""np.allclose's defaults, with which nnU-Net's verify_dataset_integrity compares a label map's spacing, origin and
direction with its image's (it requires the same shape)."""


def geometry(grid: Grid) -> Geometry:
    """Size, spacing, origin and direction of ``grid``."""
    return grid.GetSize(), grid.GetSpacing(), grid.GetOrigin(), grid.GetDirection()


def grid_mismatch(image: Geometry, reference: Geometry, tolerance: Tolerance = CONVERSION_TOLERANCE) -> str | None:
    """Why ``image`` is not on ``reference``'s voxel grid (``"spacing (..) != (..)"``), or None.

    One grid: the same size, and spacing, origin and direction within ``tolerance``.
    """
    if tuple(image[0]) != tuple(reference[0]):
        return f"size {tuple(image[0])} != {tuple(reference[0])}"
    rtol, atol = tolerance
    for what, a, b in zip(("spacing", "origin", "direction"), image[1:], reference[1:]):
        if len(a) != len(b) or not np.allclose(a, b, rtol=rtol, atol=atol):
            return f"{what} {tuple(round(v, 5) for v in a)} != {tuple(round(v, 5) for v in b)}"
    return None


def check_same_grid(a: Geometry, a_path: str | os.PathLike, b: Geometry, b_path: str | os.PathLike) -> None:
    """ValueError naming both files unless ``a`` and ``b`` are one voxel grid (see :func:`grid_mismatch`)."""
    mismatch = grid_mismatch(a, b)
    if mismatch:
        raise ValueError(f"geometry mismatch between {a_path} and {b_path}: {mismatch}")


def read_image_array(path: str | os.PathLike) -> tuple[np.ndarray, Grid]:
    """The voxels of ``path`` (SimpleITK's array order, [z, y, x]) and its geometry, checked as by
    ``check_image_file``. NIfTI files are decoded once (SimpleITK reads only their header)."""
    path = Path(path)
    if not path.name.endswith(NIFTI_ENDINGS):
        image = sitk.ReadImage(str(path))
        return sitk.GetArrayFromImage(image), image
    header, data = _decode_nifti(path, keep=True)
    grid = read_header(path)
    array = np.frombuffer(data, header.get_data_dtype(), count=int(np.prod(grid.GetSize()))).reshape(
        grid.GetSize()[::-1])
    if not array.dtype.isnative:
        array = array.astype(array.dtype.newbyteorder("="))
    slope, intercept = header.get_slope_inter()  # (None, None) when the header asks for no scaling
    if slope is not None and (slope, intercept or 0) != (1, 0):
        array = array * slope + (intercept or 0)
    return array, grid


def read_volume(path: str | os.PathLike) -> tuple[np.ndarray, Grid]:
    """``read_image_array`` of a 3D single-channel image; ValueError naming ``path`` when it is unreadable,
    damaged or not one volume."""
    try:
        array, grid = read_image_array(path)
    except RuntimeError as e:  # SimpleITK's reader
        raise ValueError(f"{path}: unreadable: {str(e).strip().splitlines()[-1]}") from None
    check_single_volume(grid, path)
    return array, grid


def _gunzip(raw: io.BufferedIOBase, path: Path) -> Iterator[bytes]:
    """The decompressed chunks of a (multi-member) gzip file; zlib checks each member's CRC and length."""
    decompressor, started = zlib.decompressobj(31), False
    try:
        while compressed := raw.read(_CHUNK):
            started = True
            while compressed:
                if output := decompressor.decompress(compressed):
                    yield output
                compressed = b""
                if decompressor.eof and decompressor.unused_data:  # another gzip member follows
                    compressed, decompressor = decompressor.unused_data, zlib.decompressobj(31)
    except zlib.error as e:
        raise ValueError(f"{path}: not a valid gzip file ({e})") from None
    if started and not decompressor.eof:
        raise ValueError(f"{path}: truncated (the gzip stream ends early)")


def _decode_nifti(path: Path, keep: bool):
    """Decode and check a NIfTI file (see ``check_image_file``); with ``keep``, return its header and voxel bytes."""
    with open(path, "rb") as raw:
        chunks = _gunzip(raw, path) if path.name.endswith(".gz") else iter(lambda: raw.read(_CHUNK), b"")
        return _check_nifti_stream(chunks, path, keep)


def _check_nifti_stream(chunks: Iterator[bytes], path: Path, keep: bool):
    from nibabel.nifti1 import Nifti1Header
    from nibabel.nifti2 import Nifti2Header

    pieces, size = [], 0
    while size < 540 and (chunk := next(chunks, b"")):
        pieces.append(chunk)
        size += len(chunk)
    head = b"".join(pieces)  # no copy when one chunk holds the header (the usual case)
    if len(head) < 348:
        state = "empty" if not head else "truncated"
        raise ValueError(f"{path}: {state} ({len(head)} bytes, no complete NIfTI header)")
    sizes = {int.from_bytes(head[:4], order) for order in ("little", "big")}
    header_class = Nifti1Header if 348 in sizes else Nifti2Header if 540 in sizes else None
    if header_class is None or (header_class is Nifti2Header and len(head) < 540):
        raise ValueError(f"{path}: not a NIfTI file (no NIfTI-1/2 header)")
    header = header_class.from_fileobj(io.BytesIO(head[:540]), check=False)
    if bytes(header["magic"]).rstrip(b"\0") not in (b"n+1", b"n+2"):
        raise ValueError(f"{path}: not a single-file NIfTI image (magic {bytes(header['magic'])!r})")
    dtype = header.get_data_dtype()
    offset = int(header["vox_offset"])
    expected = offset + int(np.prod(header.get_data_shape(), dtype=np.int64)) * dtype.itemsize
    check_finite = dtype.kind in "fc"
    voxels: list[memoryview] = []
    start, buffer, pending = 0, head, b""
    while buffer:
        end = start + len(buffer)
        if end > offset and start < expected:
            data = memoryview(buffer)[max(offset - start, 0):expected - start]
            if keep:
                voxels.append(data)
            if check_finite:
                data = pending + data if pending else data
                usable = len(data) - len(data) % dtype.itemsize
                if not np.isfinite(np.frombuffer(data, dtype, count=usable // dtype.itemsize)).all():
                    raise ValueError(f"{path}: holds NaN or infinite voxel values")
                pending = bytes(data[usable:])
        start, buffer = end, next(chunks, b"")
    if start < expected:
        raise ValueError(f"{path}: truncated ({max(start - offset, 0)} of {expected - offset} voxel bytes)")
    if keep:
        return header, voxels[0] if len(voxels) == 1 else b"".join(voxels)
    return None


def input_cases(folder: Path, file_ending: str, num_channels: int) -> dict[str, list[Path]]:
    """``{case: [channel files]}`` of an nnU-Net input folder (``CASE_XXXX<file_ending>``): case names checked,
    every case with all ``num_channels`` channels."""
    pattern = re.compile(rf"(.+)_(\d{{4}}){re.escape(file_ending)}")
    cases: dict[str, dict[int, Path]] = {}
    for path in sorted(folder.iterdir()):
        match = pattern.fullmatch(path.name)
        if match and path.is_file():
            cases.setdefault(check_name(match.group(1), "case identifier", path), {})[int(match.group(2))] = path
    if not cases:
        raise ValueError(f"{folder}: no images named CASE_XXXX{file_ending}")
    for case, channels in cases.items():
        if sorted(channels) != list(range(num_channels)):
            raise ValueError(f"{folder}: case {case} has channels {sorted(channels)}, expected "
                             f"{list(range(num_channels))}")
    return {case: [channels[c] for c in sorted(channels)] for case, channels in cases.items()}
