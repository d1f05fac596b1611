"""Dataset.shape (used by the disk plan before any data exists) equals the shape of what load returns."""

import pytest

from emprior.data import dataset_shape, load_dataset


@pytest.mark.parametrize("cfg", [{"name": "digits", "n": 100}, {"name": "digits"},
                                 {"name": "manifold", "n": 64, "dim": 5}])
def test_shape_equals_loaded_shape(cfg):
    assert dataset_shape(cfg, 0) == load_dataset(cfg, 0).shape


def test_cifar10_shape_without_files(tmp_path):
    assert dataset_shape({"name": "cifar10", "root": str(tmp_path), "split": "train"}, 0) == (50000, 3, 32, 32)
    assert dataset_shape({"name": "cifar10", "root": str(tmp_path), "split": "test", "n": 64}, 0) == (64, 3, 32, 32)
