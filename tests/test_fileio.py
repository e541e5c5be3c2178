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
