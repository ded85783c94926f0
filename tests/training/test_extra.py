"""An export folder reads back as the training data it holds, and the harvested model asks for one."""

import json

import numpy as np
import pytest

from runtime.preprocess import encode_png
from training.extra import combine, read_export
from training.train import CLASS_NAMES, main

RNG = np.random.default_rng(7)


def pixels(value: int, side: int = 8) -> np.ndarray:
    return np.full((side, side), value, dtype=np.uint8)


def write(folder, path: str, image: np.ndarray) -> None:
    (folder / path).parent.mkdir(parents=True, exist_ok=True)
    (folder / path).write_bytes(encode_png(image))


@pytest.fixture
def export(tmp_path):
    """Three labelled images listed in the manifest (newest class folder first), one labelled
    image the manifest does not list, and one unlabelled image."""
    write(tmp_path, "7/r3.png", pixels(30))
    write(tmp_path, "2/r1.png", pixels(10))
    write(tmp_path, "7/r2.png", pixels(20))
    write(tmp_path, "0/zz.png", pixels(40))
    write(tmp_path, "_unlabelled/r4.png", pixels(50))
    rows = [("r2", "7/r2.png", "7", "capture=phone"), ("r3", "7/r3.png", "7", "capture=scanner,site=north"),
            ("r1", "2/r1.png", "2", "site=north"), ("r4", "_unlabelled/r4.png", None, "capture=scanner")]
    (tmp_path / "manifest.jsonl").write_text("".join(
        json.dumps({"request_id": rid, "path": path, "label": label, "answered": "1", "model": "m",
                    "model_version": "v", "region": "r01", "subgroup": subgroup, "ts": 1.0}) + "\n"
        for rid, path, label, subgroup in rows))
    (tmp_path / "subgroups.csv").write_text("path,subgroup\n")
    return tmp_path


def test_labelled_images_read_in_manifest_order_with_labels_and_captures(export):
    """Class-folder PNGs come back as uint8 8x8 images in the manifest's order (unlisted ones after,
    by path), labelled by class index, with the subgroup's capture or `unknown`; `_` folders are skipped."""
    data = read_export(export, CLASS_NAMES)
    assert data.images.shape == (4, 8, 8) and data.images.dtype == np.uint8
    assert data.images[:, 0, 0].tolist() == [20, 30, 10, 40]
    assert data.labels.tolist() == [7, 7, 2, 0] and data.labels.dtype == np.int64
    assert data.captures.tolist() == ["phone", "scanner", "unknown", "unknown"]


def test_labels_are_indices_in_the_class_names_given(export):
    """A label is the class folder's position in `class_names`, whatever the folder's own name says."""
    names = [str(d) for d in range(9, -1, -1)]
    assert read_export(export, names).labels.tolist() == [2, 2, 7, 9]


def test_without_a_manifest_order_is_by_path_and_captures_unknown(export):
    """An export without manifest.jsonl still reads, sorted by path, every capture `unknown`."""
    (export / "manifest.jsonl").unlink()
    data = read_export(export, CLASS_NAMES)
    assert data.images[:, 0, 0].tolist() == [40, 10, 20, 30]
    assert set(data.captures) == {"unknown"}


def test_an_image_of_another_size_or_colour_is_made_8x8_grey_with_a_box_filter(tmp_path):
    """A 16x16 RGB PNG becomes the 8x8 grey image a box filter gives: each pixel the mean of its 2x2 block."""
    grey = RNG.integers(0, 256, (16, 16)).astype(np.uint8)
    write(tmp_path, "3/big.png", np.repeat(grey[:, :, None], 3, axis=2))
    expected = grey.reshape(8, 2, 8, 2).astype(np.float64).mean(axis=(1, 3))
    image = read_export(tmp_path, CLASS_NAMES).images[0]
    assert np.abs(image.astype(np.float64) - expected).max() <= 1.0


def test_a_folder_that_is_no_class_is_refused_by_name(export):
    """A class folder whose name is not among the class names is a ValueError naming it."""
    write(export, "cat/r9.png", pixels(1))
    with pytest.raises(ValueError, match="'cat'"):
        read_export(export, CLASS_NAMES)


def test_an_export_without_a_labelled_image_is_refused(tmp_path):
    """An export whose only images are unlabelled is a ValueError saying there is nothing to train on."""
    write(tmp_path, "_unlabelled/r1.png", pixels(5))
    (tmp_path / "4").mkdir()
    with pytest.raises(ValueError, match="no labelled image"):
        read_export(tmp_path, CLASS_NAMES)


def test_combine_puts_splits_one_after_the_other(export):
    """combine() concatenates images, labels and captures in the order given."""
    data = read_export(export, CLASS_NAMES)
    both = combine(data, data)
    assert len(both) == 8 and both.labels.tolist() == data.labels.tolist() * 2
    assert np.array_equal(both.images[4:], data.images) and both.captures[4:].tolist() == data.captures.tolist()


def test_harvested_without_extra_is_a_usage_error(capsys):
    """`--models harvested` without an --extra folder stops with argparse's usage error (exit 2), training nothing."""
    with pytest.raises(SystemExit) as stopped:
        main(["--models", "harvested"])
    assert stopped.value.code == 2 and "--extra" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["--extra", "."], ["--models", "harvested", "--extra", ".", "--name", "Bad_Name"]])
def test_extra_and_name_are_checked_before_training(argv):
    """--extra without the harvested model, and a --name outside [a-z0-9-]{1,40}, are usage errors too."""
    with pytest.raises(SystemExit) as stopped:
        main(argv)
    assert stopped.value.code == 2


def test_a_bad_export_stops_training_with_its_reason(tmp_path, capsys):
    """An --extra folder with no labelled image ends the run with exit status 1 and the reader's message."""
    assert main(["--models", "harvested", "--extra", str(tmp_path), "--report", str(tmp_path / "r.json")]) == 1
    assert "no labelled image" in capsys.readouterr().err
