"""Model files: missing files name the command, hashes catch changed files."""

from __future__ import annotations

import os

import pytest

from facestream import assets
from facestream.errors import AssetError, InputError


def test_missing_asset_names_the_command(tmp_path):
    with pytest.raises(AssetError, match="run `facestream models pull`"):
        assets.require(tmp_path, "models/age-v1.onnx")
    with pytest.raises(AssetError, match="models pull --samples"):
        assets.sample(tmp_path, "single_face.mp4")


def test_an_unknown_sample_is_named_with_the_known_ones(tmp_path):
    """A name the manifest does not list is not "missing": pulling would not bring it."""
    with pytest.raises(InputError) as caught:
        assets.sample(tmp_path, "nope.mp4")
    message = str(caught.value)
    assert message.startswith("unknown sample 'nope.mp4'") and "models pull" not in message
    for f in assets.Manifest.bundled().files.values():
        assert (f.name.split("/", 1)[1] in message) == f.sample, f.name


def test_hash_check_catches_a_file_changed_in_place(tmp_path):
    f = tmp_path / "m.bin"
    f.write_bytes(b"weights" * 1000)
    good = assets.sha256_of(f)
    assert assets._verified(f, good)                 # hashed, stamp written
    stamp = f.with_name("m.bin.sha256").read_text()
    assert stamp.startswith(good) and assets._verified(f, good)      # the stamp is trusted
    with open(f, "r+b") as fh:                       # one byte, same size, same inode
        fh.seek(3000)
        fh.write(b"W")
    assert f.with_name("m.bin.sha256").read_text() == stamp          # the stamp is stale
    assert not assets._verified(f, good)


def test_a_stamp_does_not_vouch_for_another_file(tmp_path):
    f = tmp_path / "m.bin"
    f.write_bytes(b"weights")
    good = assets.sha256_of(f)
    assert assets._verified(f, good)
    replacement = tmp_path / "other.bin"
    replacement.write_bytes(b"WEIGHTS")              # same size
    os.utime(replacement, ns=(f.stat().st_atime_ns, f.stat().st_mtime_ns))   # same mtime
    replacement.replace(f)                           # another inode
    assert not assets._verified(f, good)


def test_manifest_is_consistent():
    manifest = assets.Manifest.bundled()
    for f in manifest.files.values():
        assert f.package in manifest.packages
        assert len(f.sha256) == 64 and int(f.sha256, 16) >= 0
    assert all("==" in p.requirement for p in manifest.packages.values())


def test_a_conversion_whose_modules_are_not_installed_is_skipped_with_the_fix(tmp_path):
    """The compact profile installs without torch: ``models pull`` then skips the torch
    runtime's conversion, saying which extra brings it, and still does the others."""
    (tmp_path / "src.bin").write_bytes(b"x")
    done = []

    def convert(source, target):
        target.write_bytes(source.read_bytes())
        done.append(target.name)
        return target

    notes = []
    written = assets._convert(tmp_path, [
        assets.Conversion("src.bin", "needs-absent.bin", "converting A", convert,
                          needs=("json", "facestream_no_such_module"), extra="torch",
                          used_by="description_runtime=torch"),
        assets.Conversion("src.bin", "plain.bin", "converting B", convert, needs=("json",)),
    ], changed=set(), log=notes.append)
    assert done == ["plain.bin"] and written == [tmp_path / "plain.bin"]
    assert notes[0] == ("  skipped needs-absent.bin (only description_runtime=torch reads it): "
                        "converting it needs facestream_no_such_module; `pip install "
                        "'facestream[torch]'`, then pull again")
    assert notes[1:] == ["converting B"]
