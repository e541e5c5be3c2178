"""Atomic writes: the result is complete or absent, with the permissions any new file would get, whatever the
name's length; names from user data are checked."""
import os
import stat
from pathlib import Path

import pytest

from nnunet_suprem.fileio import atomic_path, check_name, staged_directory, write_json


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


@pytest.mark.parametrize("name", ["liver\x85", "\u202eliver.nii.gz", "liv\u200ber", "a\u2066b\u2069", "\ufeffliver",
                                  "liver\u2028"])
def test_names_with_control_or_invisible_characters_are_refused(name):
    """C0 and C1 controls, bidi overrides and isolates, zero-width characters, a byte-order mark, line separators."""
    with pytest.raises(ValueError, match=r"source: case identifier .* contains control characters"):
        check_name(name, "case identifier", "source")


def test_legal_names_near_the_file_system_limit_get_short_temporary_names(tmp_path):
    """Measured: a 242-character case name aborted a whole conversion (its temporary name was too long)."""
    long = "c" * 230 + ".v1"
    write_json({"a": 1}, tmp_path / f"{long}.json")
    with atomic_path(tmp_path / f"{long}.nii.gz") as tmp:
        assert tmp.endswith(".nii.gz") and len(os.path.basename(tmp)) < 100
        Path(tmp).write_bytes(b"x")
    with staged_directory(tmp_path / ("D" * 250)) as staging:
        (staging / "x").write_bytes(b"x")
    with staged_directory(tmp_path / ("D" * 250), overwrite=True) as staging:
        (staging / "y").write_bytes(b"y")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["D" * 250, f"{long}.json", f"{long}.nii.gz"]
    assert [p.name for p in (tmp_path / ("D" * 250)).iterdir()] == ["y"]
