import logging
import os
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from torchvision.transforms import v2

from effnet.data import datasets
from effnet.data.datasets import ImageDataset, build_datasets, read_csv, scan_folder, stratified_split
from effnet.data.loaders import build_loader
from effnet.data.transforms import eval_transforms
from effnet.description import Preprocessing
from effnet.errors import EffnetError
from effnet.predict import collect_images
from helpers.images import bad_files, truncated_jpeg, write_png


def write_image(path: Path, value: int = 0, size: int = 8, mode: str = "RGB") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, (size, size), value if mode != "RGB" else (value,) * 3).save(path)
    return path


def class_folders(root: Path, counts: dict[str, int], ext: str = ".png") -> Path:
    for name, count in counts.items():
        for i in range(count):
            write_image(root / name / f"img{i:03d}{ext}", value=i)
    return root


def test_scan_folder_classes_order_and_extensions(tmp_path):
    root = class_folders(tmp_path, {"dog": 2, "cat": 3})
    write_image(root / "cat" / "nested" / "deep" / "UPPER.JPG")
    write_image(root / "dog" / "a.TIFF")
    write_image(root / "dog" / ".hidden.png")
    (root / ".cache").mkdir()
    dataset = scan_folder(root)
    assert dataset.classes == ["cat", "dog"]
    assert dataset.class_counts() == [4, 3]
    assert [p.relative_to(root).as_posix() for p, _ in dataset.samples][:4] == [
        "cat/img000.png", "cat/img001.png", "cat/img002.png", "cat/nested/deep/UPPER.JPG"]
    assert dataset.targets == [0, 0, 0, 0, 1, 1, 1]
    image, label = dataset[6]
    assert image.mode == "RGB" and label == 1
    assert dataset.skipped == []


def test_bad_files_are_skipped_with_a_warning_naming_each_and_counted(tmp_path, caplog):
    root = class_folders(tmp_path, {"a": 2, "b": 2})
    for name, payload in bad_files().items():
        (root / "b" / name).write_bytes(payload)
    (root / "a" / "notes.txt").write_text("not an image")
    with caplog.at_level(logging.WARNING, logger="effnet.data"):
        dataset = scan_folder(root)
    assert len(dataset) == 4
    skipped = {path.name: reason for path, reason in dataset.skipped}
    assert sorted(skipped) == sorted([*bad_files(), "notes.txt"])
    for name in skipped:
        assert any(name in record.getMessage() for record in caplog.records), name
    assert "decompression bomb" in skipped["bomb.png"] and "empty file" in skipped["zero_byte.png"]
    assert any("skipped 6 unusable file(s), kept 4 images" in record.getMessage() for record in caplog.records)


@pytest.mark.parametrize("name", sorted(bad_files()))
def test_strict_mode_raises_naming_the_bad_file(tmp_path, name):
    root = class_folders(tmp_path, {"a": 1, "b": 1})
    (root / "b" / name).write_bytes(bad_files()[name])
    with pytest.raises(ValueError, match=rf"strict mode.*{name}"):
        scan_folder(root, strict=True)


def test_truncated_jpeg_found_by_full_check_or_replaced_at_load_time(tmp_path, caplog):
    root = class_folders(tmp_path, {"a": 2, "b": 2}, ext=".jpg")
    bad = root / "a" / "img001.jpg"
    bad.write_bytes(truncated_jpeg())
    assert [p for p, _ in scan_folder(root, validate="full").skipped] == [bad]
    with pytest.raises(ValueError, match="strict mode.*img001.jpg"):
        scan_folder(root, strict=True, validate="full")

    dataset = scan_folder(root)  # the header check lets it through
    assert len(dataset) == 4 and dataset.skipped == []
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="effnet.data"):
        image, label = dataset[1]
        again, _ = dataset[1]
    assert dataset.samples[2][0].name == "img000.jpg" and label == 1  # the next sample stands in
    assert np.array_equal(np.asarray(image), np.asarray(again))
    assert [path for path, _ in dataset.skipped] == [bad] and "truncated" in dataset.skipped[0][1]
    assert sum("img001.jpg" in record.getMessage() for record in caplog.records) == 1  # warned once

    strict = scan_folder(root, strict=True)
    with pytest.raises(ValueError, match="img001.jpg"):
        strict[1]


def test_files_broken_during_training_are_reported_from_worker_processes(tmp_path):
    root = class_folders(tmp_path, {"a": 4, "b": 4})
    dataset = scan_folder(root)
    dataset.samples[1][0].write_bytes(b"")
    dataset.samples[6][0].unlink()
    dataset.transform = v2.PILToTensor()
    loader = build_loader(dataset, batch_size=4, train=False, num_workers=2, persistent_workers=False)
    labels = [label for _, batch in loader for label in batch.tolist()]
    assert len(labels) == 8 and Counter(labels) == {0: 4, 1: 4}
    assert sorted(path.name for path, _ in dataset.skipped) == ["img001.png", "img002.png"]


def test_a_run_of_unreadable_files_stops_with_a_clear_error(tmp_path):
    root = class_folders(tmp_path, {"a": 3})
    dataset = scan_folder(root)
    for path, _ in dataset.samples:
        path.unlink()
    with pytest.raises(EffnetError, match="could not read any"):
        dataset[0]


def test_layout_errors_come_before_training(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        build_datasets(tmp_path / "missing", val_split=0.2)
    with pytest.raises(ValueError, match="no class folders.*found 1 images directly"):
        write_image(tmp_path / "flat" / "x.png")
        build_datasets(tmp_path / "flat", val_split=0.2)
    root = class_folders(tmp_path / "data", {"cat": 2, "dog": 2})
    (root / "empty").mkdir()
    with pytest.raises(ValueError, match=r"class folder .*empty has no images"):
        build_datasets(root, val_split=0.5)
    (root / "empty" / "readme.txt").write_text("x")
    with pytest.raises(ValueError, match=r"class folder .*empty has no images"):
        build_datasets(root, val_split=0.5)
    only_bad = class_folders(tmp_path / "bad", {"a": 2})
    (only_bad / "b").mkdir()
    (only_bad / "b" / "x.png").write_bytes(b"")
    with pytest.raises(ValueError, match=r"no readable images left for class\(es\) b"):
        scan_folder(only_bad)
    with pytest.raises(ValueError, match="pass val_split"):
        build_datasets(class_folders(tmp_path / "clean", {"a": 2, "b": 2}))


def test_train_val_folders_and_class_mismatch(tmp_path):
    class_folders(tmp_path / "train", {"a": 3, "b": 3})
    class_folders(tmp_path / "valid", {"a": 1, "b": 1})
    splits = build_datasets(tmp_path)
    assert splits.classes == ["a", "b"] and (len(splits.train), len(splits.val)) == (6, 2)
    assert splits.val.targets == [0, 1]
    with pytest.raises(ValueError, match="already holds the validation set"):
        build_datasets(tmp_path, val_split=0.2)
    class_folders(tmp_path / "valid", {"c": 1})
    with pytest.raises(ValueError, match=r"valid differ.*not in the training classes.*: c"):
        build_datasets(tmp_path)


def test_split_is_stratified_and_reproducible(tmp_path):
    root = class_folders(tmp_path, {"a": 20, "b": 10, "c": 5, "d": 1})
    first = build_datasets(root, val_split=0.2, seed=3)
    assert first.val.class_counts() == [4, 2, 1, 0]
    assert first.train.class_counts() == [16, 8, 4, 1]
    assert build_datasets(root, val_split=0.2, seed=3).val.samples == first.val.samples
    assert build_datasets(root, val_split=0.2, seed=4).val.samples != first.val.samples
    assert not {p for p, _ in first.train.samples} & {p for p, _ in first.val.samples}
    train, val = stratified_split([0] * 50 + [1] * 50, 0.3, seed=0)
    assert len(val) == 30 and sorted(train + val) == list(range(100))
    with pytest.raises(ValueError, match="between 0 and 1"):
        stratified_split([0, 1], 1.5)


def test_csv_listing_paths_labels_and_split_files(tmp_path):
    images = class_folders(tmp_path / "pics", {"x": 3, "y": 3})
    rows = ["path,label,comment"] + [f"pics/{c}/img{i:03d}.png,{c}_label," for c in "xy" for i in range(3)]
    (tmp_path / "train.csv").write_text("\n".join(rows) + "\n")
    dataset = read_csv(tmp_path / "train.csv")
    assert dataset.classes == ["x_label", "y_label"] and dataset.targets == [0, 0, 0, 1, 1, 1]
    absolute = tmp_path / "abs.csv"
    absolute.write_text(f"path,label\n{images / 'x' / 'img000.png'},cat\nx/img001.png,dog\n")
    assert len(read_csv(absolute, root=images)) == 2

    (tmp_path / "val.csv").write_text("path,label\npics/y/img000.png,y_label\n")
    splits = build_datasets(tmp_path)
    assert (len(splits.train), len(splits.val), splits.val.targets) == (6, 1, [1])
    assert len(build_datasets(tmp_path / "train.csv", val_split=0.34).val) == 2


def test_csv_bad_labels_and_paths_are_reported(tmp_path):
    class_folders(tmp_path, {"x": 2})
    listing = tmp_path / "list.csv"
    listing.write_text("file,class\nx/img000.png,x\n")
    with pytest.raises(ValueError, match="header with 'path' and 'label'"):
        read_csv(listing)
    listing.write_text("path,label\nx/img000.png,x\nx/img001.png,\n")
    with pytest.raises(ValueError, match=r"without a path or a label on line\(s\) 3"):
        read_csv(listing)
    listing.write_text("path,label\nx/img000.png,x\nx/img001.png,zebra\n")
    with pytest.raises(ValueError, match=r"'zebra' \(line 3\)"):
        read_csv(listing, classes=["x"])
    listing.write_text("path,label\nx/img000.png,x\nx/missing.png,x\n")
    dataset = read_csv(listing)
    assert len(dataset) == 1 and dataset.skipped[0][0].name == "missing.png"
    with pytest.raises(ValueError, match="1 of 2 listed files do not exist"):
        read_csv(listing, strict=True)
    with pytest.raises(FileNotFoundError, match="relative paths are read from .*elsewhere"):
        read_csv(listing, root=tmp_path / "elsewhere")
    with pytest.raises(FileNotFoundError, match="CSV listing"):
        read_csv(tmp_path / "none.csv")


def test_dataset_rejects_labels_outside_classes(tmp_path):
    path = write_image(tmp_path / "a.png")
    with pytest.raises(ValueError, match="label index 2 is outside the 2 classes"):
        ImageDataset([(path, 2)], ["a", "b"])
    with pytest.raises(ValueError, match="unknown validate"):
        ImageDataset([(path, 0)], ["a"], validate="deep")


def test_a_symlink_loop_is_followed_once_per_real_folder(tmp_path):
    root = tmp_path / "photos"
    write_png(root / "a.png")
    write_png(root / "sub" / "b.png")
    os.symlink(root, root / "sub" / "back_to_top")
    os.symlink(root / "sub", root / "again")  # a second name for a folder already read
    found = datasets.files_under(root)
    assert [p.relative_to(root).as_posix() for p in found] == ["a.png", "again/b.png"]
    assert len(collect_images([root]).files) == 2


def test_a_very_thin_image_in_evaluated_data_is_skipped_with_a_warning(tmp_path, caplog):
    root = class_folders(tmp_path, {"a": 2, "b": 2})
    thin = root / "a" / "img001.png"
    Image.new("RGB", (1, 2_000)).save(thin)  # 256 x 512,000 pixels once resized for B0
    dataset = scan_folder(root, transform=eval_transforms(Preprocessing(224, 0.875)))
    assert dataset.skipped == []  # its header is fine; only the resize would not be
    with caplog.at_level(logging.WARNING, logger="effnet.data"):
        batches = list(build_loader(dataset, batch_size=4, train=False, num_workers=0))
    images, labels = batches[0]
    assert images.shape == (4, 3, 224, 224) and labels.tolist() == [0, 1, 1, 1]  # the next image stands in
    assert [(path, "too thin" in reason) for path, reason in dataset.skipped] == [(thin, True)]
    assert any("img001.png" in r.getMessage() and "too thin" in r.getMessage() for r in caplog.records)
    strict = scan_folder(root, strict=True, transform=eval_transforms(Preprocessing(224, 0.875)))
    with pytest.raises(ValueError, match="strict mode.*img001.png.*too thin"):
        strict[1]


@pytest.mark.slow
def test_links_that_leave_the_data_folder_are_skipped_unless_followed(tmp_path, caplog):
    elsewhere = class_folders(tmp_path / "elsewhere", {"private": 3})  # someone else's photos
    data = class_folders(tmp_path / "data", {"train/a": 2, "train/b": 2, "val/a": 1, "val/b": 1})
    os.symlink("/", data / "train" / "a" / "root")
    os.symlink(elsewhere / "private" / "img000.png", data / "train" / "b" / "borrowed.png")
    os.symlink(data / "val" / "a" / "img000.png", data / "train" / "a" / "shared.png")  # inside DATA: followed
    with caplog.at_level(logging.WARNING, logger="effnet.data"):
        splits = build_datasets(data)
    assert sorted(p.name for p, _ in splits.train.samples) == ["img000.png", "img000.png", "img001.png",
                                                               "img001.png", "shared.png"]
    assert {p.name: reason for p, reason in splits.train.skipped} == {
        "root": f"a link to /, outside {data}: {datasets.FOLLOW_LINKS_HINT}",
        "borrowed.png": f"a link to {elsewhere / 'private' / 'img000.png'}, outside {data}: "
                        f"{datasets.FOLLOW_LINKS_HINT}"}
    assert sum("borrowed.png" in r.getMessage() and "not followed" in r.getMessage() for r in caplog.records) == 1
    followed = scan_folder(data / "train", follow_links=True, validate="none", data_root=data)
    assert "borrowed.png" in [p.name for p, _ in followed.samples]
    os.symlink(elsewhere, data / "train" / "c")
    with pytest.raises(ValueError, match=f"class folder {data / 'train' / 'c'} is a link to {elsewhere}, outside"):
        build_datasets(data)
