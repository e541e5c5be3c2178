"""Training-transform throughput with many left/right pairs: SuPreMTrainer vs nnUNetTrainer, side by side.

    python benchmarks/label_swap.py [--pairs 35] [--size 128] [--samples 20] [--out DIR]

Both trainers are built on the same preprocessed dataset (a real phantom case for the geometry; plans
with a --size^3 3d_fullres patch; 2 x --pairs lateral classes, TotalSegmentator-sized by default) and
build their training transforms as nnU-Net's data loader does. Each sample (a crop of nnU-Net's
initial patch size with a label map of every class) goes through both pipelines with the same random
seed, so both draw the same augmentation; SuPreMTrainer's differs only in swapping the pairs whenever
it mirrors left-right. Printed: seconds per sample of each, the ratio SuPreMTrainer / nnUNetTrainer
(target <= 1.05) and the time of one label swap.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import shutil
import time

import numpy as np
import torch

from common import derived_dataset, nnunet_folders, planned_source, source_case
from nnunet_suprem.training.laterality import swap_labels


def trainers(pairs: int, size: int):
    """nnUNetTrainer and SuPreMTrainer on the dataset, rotation and mirroring configured."""
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    from common import make_trainer
    from nnunet_suprem.training.suprem_trainer import SuPreMTrainer

    source = planned_source()
    names = [f"structure{i}_{side}" for i in range(pairs) for side in ("left", "right")]
    _, data = derived_dataset(source, "Dataset702_LabelSwap", {"background": 0, **{n: i + 1 for i, n in
                                                                                  enumerate(names)}}, [size] * 3)
    stem, _ = source_case(source)
    for suffix in (".b2nd", "_seg.b2nd", ".pkl"):
        shutil.copyfile(f"{stem}{suffix}", data / f"case{suffix}")
    built = []
    for cls in (nnUNetTrainer, SuPreMTrainer):
        trainer = make_trainer(cls, "Dataset702_LabelSwap", torch.device("cpu"))
        rotation, dummy_2d, initial, mirror_axes = trainer.configure_rotation_dummyDA_mirroring_and_inital_patch_size()
        transforms = trainer.get_training_transforms(
            trainer.configuration_manager.patch_size, rotation, trainer._get_deep_supervision_scales(), mirror_axes,
            dummy_2d, use_mask_for_norm=trainer.configuration_manager.use_mask_for_norm, is_cascaded=False,
            foreground_labels=trainer.label_manager.foreground_labels, regions=None, ignore_label=None)
        built.append((cls.__name__, trainer, transforms, tuple(int(s) for s in initial)))
    return built


def sample(shape: tuple[int, ...], labels: int, rng: np.random.Generator) -> dict[str, torch.Tensor]:
    """An image and a label map of blocks with every label (int16, as nnU-Net loads segmentations)."""
    cells = rng.integers(0, labels + 1, (8, 8, 8))
    seg = np.kron(cells, np.ones([int(np.ceil(s / 8)) for s in shape]))[tuple(slice(0, s) for s in shape)]
    image = seg + rng.normal(0, 1, shape)
    return {"image": torch.from_numpy(image[None].astype(np.float32)),
            "segmentation": torch.from_numpy(seg[None].astype(np.int16))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=35)
    parser.add_argument("--size", type=int, default=128, help="patch edge in voxels")
    parser.add_argument("--samples", type=int, default=20)
    parser.add_argument("--out", help="folder for the datasets (default: a temporary folder, removed)")
    args = parser.parse_args()
    root = nnunet_folders(args.out, "suprem_label_swap_")
    try:
        torch.set_num_threads(1)  # as in nnU-Net's data loader workers
        with contextlib.redirect_stdout(io.StringIO()):  # nnU-Net's and our trainers' log lines
            built = trainers(args.pairs, args.size)
        lateral = built[1][1].lateral_swap
        assert lateral is not None and len(lateral[1]) == args.pairs, lateral
        rng = np.random.default_rng(0)
        seconds = {name: 0.0 for name, *_ in built}
        for i in range(args.samples):
            data = sample(built[0][3], 2 * args.pairs, rng)
            for name, _, transforms, _ in built:
                np.random.seed(i)
                torch.manual_seed(i)
                start = time.perf_counter()
                transforms(**{k: v.clone() for k, v in data.items()})
                seconds[name] += time.perf_counter() - start
        per_sample = {name: s / args.samples for name, s in seconds.items()}
        print(f"training transforms at {args.size}^3, {args.pairs} left/right pairs, {args.samples} samples "
              f"(initial patch {built[0][3]}), s/sample: "
              + ", ".join(f"{name} {s:.3f}" for name, s in per_sample.items()))
        print(f"SuPreMTrainer / nnUNetTrainer: {per_sample['SuPreMTrainer'] / per_sample['nnUNetTrainer']:.3f}")
        seg = sample((args.size,) * 3, 2 * args.pairs, rng)["segmentation"]
        start = time.perf_counter()
        for _ in range(5):
            swap_labels(seg, lateral[1])
        print(f"one label swap at {args.size}^3 with {args.pairs} pairs: "
              f"{(time.perf_counter() - start) / 5 * 1e3:.1f} ms")
    finally:
        if not args.out:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
