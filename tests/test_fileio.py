"""Atomic writes: the result is complete or absent, with the permissions any new file would get."""
import os
import stat

import pytest

from nnunet_suprem.fileio import atomic_path, write_json


def test_atomic_write_gets_the_umask_mode_and_leaves_nothing_on_failure(tmp_path):
    old = os.umask(0o022)
    try:
        write_json({"a": 1}, tmp_path / "x.json")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "x.json").stat().st_mode) == 0o644  # not mkstemp's 0600

    with pytest.raises(RuntimeError):
        with atomic_path(tmp_path / "y.nii.gz") as tmp:
            open(tmp, "w").write("half")
            raise RuntimeError("interrupted")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.json"]


def test_input_cases_groups_channels_and_refuses_bad_names_and_missing_channels(tmp_path):
    from nnunet_suprem.fileio import input_cases

    for name in ("a_0000.nii.gz", "a_0001.nii.gz", "b_0000.nii.gz", "b_0001.nii.gz", "notes.txt"):
        (tmp_path / name).write_bytes(b"")
    assert input_cases(tmp_path, ".nii.gz", 2) == {
        case: [tmp_path / f"{case}_000{c}.nii.gz" for c in range(2)] for case in ("a", "b")}
    with pytest.raises(ValueError, match="case a has channels \\[0, 1\\], expected \\[0\\]"):
        input_cases(tmp_path, ".nii.gz", 1)
    (tmp_path / ".hidden_0000.nii.gz").write_bytes(b"")
    with pytest.raises(ValueError, match="hidden_0000.nii.gz: case identifier '.hidden' starts with '.'"):
        input_cases(tmp_path, ".nii.gz", 2)
    with pytest.raises(ValueError, match="no images named CASE_XXXX.mha"):
        input_cases(tmp_path, ".mha", 1)
