"""Data: image files to tensors. Datasets (class folders, CSV, splits), transform presets,
loaders and the built-in MNIST demo dataset."""

from .datasets import DatasetSplits, ImageDataset, build_datasets, read_csv, scan_folder, stratified_split
from .demo import load_demo_arrays, write_demo_dataset
from .images import IMAGE_EXTENSIONS, ImageReadError, decode_image, load_image, to_rgb, verify_image
from .loaders import build_loader
from .transforms import MixupCutmix, eval_transforms, train_transforms

__all__ = [
    "IMAGE_EXTENSIONS",
    "DatasetSplits",
    "ImageDataset",
    "ImageReadError",
    "MixupCutmix",
    "build_datasets",
    "build_loader",
    "decode_image",
    "eval_transforms",
    "load_demo_arrays",
    "load_image",
    "read_csv",
    "scan_folder",
    "stratified_split",
    "to_rgb",
    "train_transforms",
    "verify_image",
    "write_demo_dataset",
]
