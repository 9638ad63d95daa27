"""Writing into an artifact folder never writes or deletes outside it (issue 24): the files a previous
condense.json lists are removed only when they resolve inside the folder and are not symlinks."""
import json

import pytest

from condense.artifacts import META_NAME, WEIGHTS_NAME, load, save
from condense.core.io import OutsideFolderError


@pytest.fixture
def tiny_model():
    """A zoo model: its folder opens without trusting any code."""
    import condense

    return condense.build_model("mlp", in_features=64, num_classes=10, hidden=[16])


def _list_in_meta(folder, *names):
    meta = json.loads((folder / META_NAME).read_text())
    for n in names:
        meta["files"][n] = {"bytes": 1, "sha256": "0" * 64}
    (folder / META_NAME).write_text(json.dumps(meta))


def _tree(folder):
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("listed", ["lnk/keep.txt", "ln", "../elsewhere/keep.txt", "ABS"])
def test_saving_over_a_folder_deletes_nothing_outside_it(tmp_path, tiny_model, listed):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "keep.txt").write_text("user's file")
    folder = save(tiny_model, tmp_path / "m")
    (folder / "lnk").symlink_to(elsewhere, target_is_directory=True)
    (folder / "ln").symlink_to(elsewhere / "keep.txt")
    _list_in_meta(folder, str(elsewhere / "keep.txt") if listed == "ABS" else listed)
    before = _tree(folder)
    with pytest.raises(OutsideFolderError, match=rf"{META_NAME} lists .* as one of its files; .*refusing"):
        save(tiny_model, folder)
    assert (elsewhere / "keep.txt").read_text() == "user's file"
    assert _tree(folder) == before  # refused before the folder changed
    assert not list(tmp_path.glob(".m.*"))  # no staging folder left behind


def test_a_listed_file_inside_the_folder_is_still_removed(tmp_path, tiny_model):
    folder = save(tiny_model, tmp_path / "m")
    (folder / "sub").mkdir()
    (folder / "sub" / "old.bin").write_bytes(b"x")
    _list_in_meta(folder, "sub/old.bin")
    save(tiny_model, folder)
    assert not (folder / "sub" / "old.bin").exists()
    load(folder)


def test_a_weights_symlink_is_replaced_not_written_through(tmp_path, tiny_model):
    outside = tmp_path / "outside.safetensors"
    outside.write_bytes(b"user's bytes")
    folder = save(tiny_model, tmp_path / "m")
    (folder / WEIGHTS_NAME).unlink()
    (folder / WEIGHTS_NAME).symlink_to(outside)
    save(tiny_model, folder)
    assert outside.read_bytes() == b"user's bytes"
    assert not (folder / WEIGHTS_NAME).is_symlink()
    load(folder)


def test_the_refusal_is_an_input_error_naming_both_paths(tmp_path, tiny_model):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "keep.txt").write_text("x")
    folder = save(tiny_model, tmp_path / "m")
    (folder / "lnk").symlink_to(elsewhere, target_is_directory=True)
    _list_in_meta(folder, "lnk/keep.txt")
    with pytest.raises(OutsideFolderError) as e:
        save(tiny_model, folder)
    assert e.value.exit_code == 3  # a bad input folder
    assert f"{folder / META_NAME} lists 'lnk/keep.txt'" in str(e.value)
    assert f"resolves to {elsewhere.resolve()}, outside {folder.resolve()}" in str(e.value)
