"""Orientation at prediction: the sides a model learnt from array position stay right on new images.

A network that learns left and right from where organs lie in nnU-Net's arrays (see ``training.laterality``)
depends on the index order its reader presents. ``NibabelIOWithReorient`` and ``SimpleITKIOWithReorient``
present every image in RAS, so any test image comes out right. Readers that keep the file's index order
(SimpleITKIO, NibabelIO) present an image whose left-right axis points the other way mirrored, and stock
``nnUNetv2_predict`` then swaps left and right. SuPreMTrainer records the training orientation in its
checkpoints (``ORIENTATION_KEY``); ``nnunet-suprem check-orientation`` compares a folder of test images with it
before ``nnUNetv2_predict`` and refuses, or writes reoriented copies (the same physical image in the training
cases' index order, through SimpleITK's ``DICOMOrient``) that predict right. The record also says where
left-right lies in the network's patches (``PATCH_KEY``), which the weight transfer compares with the target's
(:func:`nnunet_suprem.transfer.head.lateral_rows`).
"""
from __future__ import annotations

import argparse
import shutil
from pathlib import Path
from typing import Iterable, Mapping, Sequence

ORIENTATION_KEY = "nnunet_suprem_training_orientation"
REORIENTING_READERS = ("NibabelIOWithReorient", "SimpleITKIOWithReorient")
"""nnU-Net readers that present every image in RAS, whatever its file's orientation."""

Orientation = tuple[int, int]  # (array axis, sign) of the patient's left-right, see laterality.left_right_axis
PatchOrientation = tuple[int | None, int]
"""(patch axis, sign) of the patient's left-right in the network's patches, i.e. after the plans' ``transpose_forward``
(see laterality.patch_axis); the axis is None when left-right is the slicing axis of 2D patches."""
PATCH_KEY = "patch_left_right"


def training_orientation(orientations: Iterable[Orientation | None], reader: str, transpose_forward: Sequence[int],
                         patch_dim: int) -> dict | None:
    """The record of what a model's left and right depend on: its reader, the left-right (array axis, sign) every
    training case shares and where that lies in the network's patches (``PATCH_KEY``: patch axis after
    ``transpose_forward``, sign). None when the cases disagree or some geometry is unknown: the network then
    cannot tie the sides to array position (it learns them from anatomy, or not at all)."""
    from nnunet_suprem.training.laterality import patch_axis

    found = set(orientations)
    if len(found) != 1 or None in found:
        return None
    (axis, sign), = found
    return {"reader": reader, "left_right": [int(axis), int(sign)],
            PATCH_KEY: [patch_axis(axis, transpose_forward, patch_dim), int(sign)]}


def patch_orientation(record: object) -> PatchOrientation | None:
    """The (patch axis, sign) of left-right that an orientation record holds; None without a record, for a record
    written before nnunet-suprem recorded it (check-orientation's fields only) and for a malformed one."""
    value = record.get(PATCH_KEY) if isinstance(record, Mapping) else None
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        return None
    axis, sign = value
    valid_axis = axis is None or (type(axis) is int and 0 <= axis < 3)
    return (axis, sign) if valid_axis and type(sign) is int and sign in (1, -1) else None


def needs_check(record: Mapping | None) -> bool:
    """Whether test images must share the recorded orientation (the reader keeps each file's index order)."""
    return record is not None and record["reader"] not in REORIENTING_READERS


def describe(orientation: Sequence[int]) -> str:
    axis, sign = orientation
    return f"array axis {axis} ({'zyx'[axis]}) grows towards the patient's {'left' if sign > 0 else 'right'}"


def describe_patch(orientation: PatchOrientation) -> str:
    axis, sign = orientation
    if axis is None:
        return "left-right is the slicing axis of the 2D patches"
    return f"patch axis {axis} grows towards the patient's {'left' if sign > 0 else 'right'}"


def image_orientation(reader: str, file: str) -> Orientation | None:
    """Left-right (array axis, sign) of ``file`` as nnU-Net's ``reader`` presents it (None: no geometry)."""
    from nnunetv2.imageio.reader_writer_registry import recursive_find_reader_writer_by_name

    from nnunet_suprem.training.laterality import left_right_axis

    _, properties = recursive_find_reader_writer_by_name(reader)().read_images((file,))
    return left_right_axis(properties)


def reorient_code(current: str, orientation: Sequence[int]) -> str:
    """The DICOM orientation code (SimpleITK's ``DICOMOrient``, e.g. "LPS": index x grows towards the left) that
    puts the patient's left-right on ``orientation``'s array axis, pointing its way, with the fewest changes."""
    axis, sign = orientation
    letters = list(current)
    lateral = next(i for i, letter in enumerate(letters) if letter in "LR")
    target = 2 - axis  # nnU-Net's arrays are [z, y, x] of SimpleITK's (x, y, z) index
    letters[lateral], letters[target] = letters[target], letters[lateral]
    letters[target] = "L" if sign > 0 else "R"
    return "".join(letters)


def write_reoriented(source: Path, destination: Path, orientation: Sequence[int]) -> None:
    """Write ``source`` with its index order changed so that left-right lies as in ``orientation``; the physical
    image (every voxel's position and value) is unchanged."""
    import SimpleITK as sitk

    from nnunet_suprem.fileio import write_image

    image = sitk.ReadImage(str(source))
    current = sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(image.GetDirection())
    write_image(sitk.DICOMOrient(image, reorient_code(current, orientation)), destination)


def model_record(model_folder: Path, fold: str | None, checkpoint_name: str) -> tuple[dict | None, Path]:
    """The training orientation recorded in a model folder's checkpoint (``fold_<fold>``, default: the first fold
    that has ``checkpoint_name``; None: no record) and that checkpoint's path. The record's reader must be one of
    nnU-Net's (:func:`~nnunet_suprem.plans_safety.check_lookup`): it is looked up by name and called."""
    from nnunet_suprem.plans_safety import check_lookup, key_path
    from nnunet_suprem.transfer.checkpoint import load_weights_only

    folds = [model_folder / f"fold_{fold}"] if fold is not None else sorted(model_folder.glob("fold_*"))
    checkpoints = [f / checkpoint_name for f in folds if (f / checkpoint_name).is_file()]
    if not checkpoints:
        raise FileNotFoundError(f"{model_folder}: no {checkpoint_name} in "
                                f"{', '.join(f.name for f in folds) or 'any fold_* folder'}")
    record = load_weights_only(checkpoints[0]).get(ORIENTATION_KEY)
    if record is not None:
        check_lookup("image_reader_writer", record.get("reader") if isinstance(record, Mapping) else record,
                     checkpoints[0], key_path(ORIENTATION_KEY, "reader"))
    return record, checkpoints[0]


def add_subparser(subparsers) -> None:
    p = subparsers.add_parser(
        "check-orientation", help="before nnUNetv2_predict: do the test images share the orientation the model "
                                  "learnt left and right in? (refuse, or write reoriented copies)",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model_folder", type=Path, help="the trained model folder (.../Trainer__Plans__configuration)")
    p.add_argument("-i", dest="input", type=Path, required=True,
                   help="folder of test images named as for nnUNetv2_predict (CASE_0000.nii.gz, ...)")
    p.add_argument("-f", dest="fold", help="fold whose checkpoint to read (default: the first one there)")
    p.add_argument("-chk", dest="checkpoint", default="checkpoint_final.pth", help="checkpoint file name")
    p.add_argument("--reorient", type=Path, metavar="OUT",
                   help="write every case to this new folder, the ones oriented otherwise reoriented (same physical "
                        "image, the training cases' index order); then run nnUNetv2_predict -i OUT")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from nnunet_suprem.fileio import check_image_file, input_cases, read_json, staged_directory

    record, checkpoint = model_record(args.model_folder, args.fold, args.checkpoint)
    if record is None:
        print(f"{checkpoint} records no training orientation: its left and right were not learnt from array "
              f"position by SuPreMTrainer (or it was trained by stock nnU-Net or an older nnunet-suprem, and cannot "
              f"be checked)")
        return 0
    if not needs_check(record):
        print(f"{checkpoint}: trained with {record['reader']}, which reorients every image: any orientation "
              f"predicts right")
        return 0
    dataset_json = read_json(args.model_folder / "dataset.json")
    cases = input_cases(args.input, dataset_json["file_ending"], len(dataset_json["channel_names"]))
    for files in cases.values():
        for file in files:
            check_image_file(file)  # else a truncated or NaN image would be reoriented into a clean-looking one
    expected = tuple(record["left_right"])
    found = {case: image_orientation(record["reader"], str(files[0])) for case, files in cases.items()}
    unknown = sorted(case for case, o in found.items() if o is None)
    if unknown:
        raise ValueError(f"{args.input}: {', '.join(unknown)} store no image geometry, so their left and right "
                         f"cannot be known")
    other = sorted(case for case, o in found.items() if o != expected)
    print(f"{checkpoint}: trained with {record['reader']}, {describe(expected)}; {len(cases) - len(other)} of "
          f"{len(cases)} case(s) in {args.input} are oriented the same way")
    if args.reorient is None:
        if not other:
            return 0
        listed = ", ".join(f"{case} ({describe(found[case])})" for case in other[:10])
        raise ValueError(f"{len(other)} case(s) would come out with left and right swapped: {listed}"
                         f"{f' and {len(other) - 10} more' if len(other) > 10 else ''}. Run again with "
                         f"--reorient OUT and predict from OUT")
    if args.reorient.exists() and any(args.reorient.iterdir()):
        raise ValueError(f"{args.reorient} exists and is not empty: choose a new folder for the reoriented images")
    with staged_directory(args.reorient, overwrite=args.reorient.exists()) as staging:  # exists: it is empty
        for case, files in cases.items():
            for file in files:
                if case in other:
                    write_reoriented(file, staging / file.name, expected)
                else:
                    shutil.copyfile(file, staging / file.name)
            if case in other and image_orientation(record["reader"], str(staging / files[0].name)) != expected:
                raise RuntimeError(f"{args.reorient / files[0].name}: reorientation did not give "
                                   f"{describe(expected)}")
    print(f"{len(other)} case(s) reoriented, {len(cases) - len(other)} copied, into {args.reorient}: "
          f"nnUNetv2_predict -i {args.reorient} ...")
    return 0
