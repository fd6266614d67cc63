import hashlib
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from effnet.cli import main
from effnet.data.datasets import build_datasets
from effnet.data.demo import DEMO_FILE, load_demo_arrays, write_demo_dataset


def test_demo_arrays_are_500_real_digits_per_class():
    images, labels = load_demo_arrays()
    assert images.shape == (5000, 28, 28) and images.dtype == np.uint8
    assert Counter(labels.tolist()) == {digit: 500 for digit in range(10)}
    assert 0.5e6 < DEMO_FILE.stat().st_size < 1.5e6
    assert len(np.unique(images.reshape(5000, -1), axis=0)) == 5000
    ink = (images > 128).mean(axis=(1, 2))
    assert 0.05 < ink.mean() < 0.3 and images[:, 0, :].max() == 0  # white strokes on black, empty border row


def _tree_digest(root) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*.png"))}


@pytest.mark.slow
def test_demo_writer_split_counts_and_determinism(tmp_path):
    first = write_demo_dataset(tmp_path / "one")
    splits = build_datasets(first)
    assert splits.classes == [str(d) for d in range(10)]
    assert (len(splits.train), len(splits.val)) == (4000, 1000)
    assert splits.train.class_counts() == [400] * 10 and splits.val.class_counts() == [100] * 10
    assert splits.skipped == []
    train_names = {p.name for p, _ in splits.train.samples}
    assert not train_names & {p.name for p, _ in splits.val.samples}

    images, labels = load_demo_arrays()
    path, label = splits.val.samples[0]
    index = int(path.stem)
    assert labels[index] == label and np.array_equal(np.asarray(Image.open(path)), images[index])
    rgb, _ = splits.val[0]
    assert rgb.mode == "RGB" and np.array_equal(np.asarray(rgb)[:, :, 1], images[index])

    digest = _tree_digest(first)
    assert len(digest) == 5000
    assert _tree_digest(write_demo_dataset(tmp_path / "two")) == digest


@pytest.mark.slow
def test_demo_writer_reuses_complete_copy_and_refuses_partial_ones(tmp_path):
    out = write_demo_dataset(tmp_path)
    marker = out / "train" / "0" / sorted((out / "train" / "0").iterdir())[0].name
    stamp = marker.stat().st_mtime_ns
    assert write_demo_dataset(tmp_path) == out and marker.stat().st_mtime_ns == stamp  # reused, not rewritten

    marker.unlink()
    with pytest.raises(ValueError, match="partial or different.*4999 files.*force"):
        write_demo_dataset(tmp_path)
    write_demo_dataset(tmp_path, force=True)
    assert marker.exists()

    other = tmp_path / "other"
    (other / "val" / "cat").mkdir(parents=True)
    (other / "val" / "cat" / "x.png").write_bytes(b"")
    (other / "keep.txt").write_text("mine")
    with pytest.raises(ValueError, match="fresh folder"):
        write_demo_dataset(other)
    write_demo_dataset(other, force=True)
    assert (other / "keep.txt").read_text() == "mine" and not (other / "val" / "cat").exists()


@pytest.mark.slow
def test_cli_data_demo_and_info(tmp_path, capsys):
    assert main(["data", "demo", str(tmp_path / "digits")]) == 0
    assert "4,000 train and 1,000 val" in capsys.readouterr().out
    assert main(["data", "info", str(tmp_path / "digits")]) == 0
    out = capsys.readouterr().out
    assert out.split("total")[1].split()[:2] == ["4000", "1000"]
    assert "0 unusable file(s)" in out

    (tmp_path / "digits" / "val" / "3" / "extra.png").write_bytes(b"")
    assert main(["data", "demo", str(tmp_path / "digits")]) == 2
    assert "--force" in capsys.readouterr().err
    assert main(["data", "info", str(tmp_path / "digits")]) == 0
    assert "extra.png: empty file" in capsys.readouterr().out
    assert main(["data", "info", str(tmp_path / "nowhere")]) == 2
    assert "does not exist" in capsys.readouterr().err
