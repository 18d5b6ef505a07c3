"""Image folders: scanning fails fast on bad paths, bad files are skipped and counted, splits are stable."""

import logging

import pytest
import torch

from data_factory import CLASSES, add_bad_files, stripes_folder
from xception.data import SkipLog, Skipped, evaluation_source, scan_folder, split_indices, training_sources
from xception.data.folder import ImageFolderDataset, find_split_folders
from xception.data.images import EMPTY, NOT_AN_IMAGE, TOO_LARGE, TRUNCATED
from xception.data.transforms import Augmentation, eval_transform, train_transform
from xception.distributed import ResumableSampler
from xception.preprocessing import Preprocessing

PRE = Preprocessing(input_size=32, crop_pct=1.0, interpolation="bilinear")


def test_scan_lists_classes_in_order_and_sets_aside_empty_and_non_image_files(tmp_path):
    stripes_folder(tmp_path, per_class=4)
    expected = add_bad_files(tmp_path / "vertical")
    scan = scan_folder(tmp_path)
    assert scan.classes == list(CLASSES)
    # zero-byte and wrong-extension files are caught by the scan itself; the rest need decoding
    assert {s.path.rsplit("/", 1)[1]: s.reason for s in scan.skipped} == {"empty.png": EMPTY,
                                                                          "notes.txt": NOT_AN_IMAGE}
    assert scan.counts_per_class() == [4, 4, 4 + len(expected) - 2]


def test_missing_folder_fails_before_any_work(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        training_sources(tmp_path / "nowhere")


def test_empty_class_fails_before_any_work(tmp_path):
    stripes_folder(tmp_path, per_class=2)
    (tmp_path / "zebra").mkdir()
    (tmp_path / "zebra" / "readme.txt").write_text("no pictures yet")
    with pytest.raises(ValueError, match="zebra has no usable images"):
        scan_folder(tmp_path)


def test_folder_without_class_folders_is_explained(tmp_path):
    (tmp_path / "a.png").write_bytes(b"x")
    with pytest.raises(ValueError, match="one sub-folder per class"):
        scan_folder(tmp_path)
    with pytest.raises(NotADirectoryError):
        scan_folder(tmp_path / "a.png")


def test_evaluation_folder_must_use_the_models_classes(tmp_path):
    stripes_folder(tmp_path, per_class=2)
    scan = scan_folder(tmp_path, classes=["vertical", "horizontal", "diagonal", "extra"])
    assert scan.classes[0] == "vertical" and {label for _, label in scan.samples} == {0, 1, 2}
    with pytest.raises(ValueError, match="does not know"):
        evaluation_source(tmp_path, classes=["vertical", "horizontal"])


def test_split_is_stratified_reproducible_and_disjoint():
    labels = [0] * 20 + [1] * 10 + [2] * 3
    train, val = split_indices(labels, 0.2, seed=7)
    assert sorted(train + val) == list(range(len(labels)))
    assert [sum(labels[i] == c for i in val) for c in range(3)] == [4, 2, 1]
    assert split_indices(labels, 0.2, seed=7) == (train, val)
    assert split_indices(labels, 0.2, seed=8) != (train, val)


def test_train_and_val_sub_folders_are_used_as_the_split(tmp_path):
    stripes_folder(tmp_path / "train", per_class=3)
    stripes_folder(tmp_path / "val", per_class=2, seed=1)
    assert find_split_folders(tmp_path) == (tmp_path / "train", tmp_path / "val")
    train, val = training_sources(tmp_path)
    assert (len(train), len(val)) == (9, 6) and train.classes == val.classes == list(CLASSES)


def test_strict_mode_fails_on_the_first_bad_file():
    log = SkipLog(strict=True)
    with pytest.raises(ValueError, match=r"cut\.png: truncated.*without --strict"):
        log.add([Skipped("data/cat/cut.png", TRUNCATED)])


def test_skip_log_warns_once_per_file_and_counts_by_reason(caplog):
    log = SkipLog()
    with caplog.at_level(logging.WARNING, logger="xception.data"):
        log.add([Skipped("a.png", TRUNCATED), Skipped("b.png", TOO_LARGE)])
        log.add([Skipped("a.png", TRUNCATED)])  # the next epoch meets it again
    assert len(log) == 2 and log.counts() == {TRUNCATED: 1, TOO_LARGE: 1}
    assert sum("a.png" in r.message for r in caplog.records) == 1


def test_loader_skips_every_bad_kind_and_counts_it(tmp_path):
    stripes_folder(tmp_path, per_class=3)
    expected = add_bad_files(tmp_path / "vertical")
    source = evaluation_source(tmp_path, classes=list(CLASSES))
    log = SkipLog()
    log.add(source.skipped)
    images = 0
    for batch, labels, skipped in source.batches(PRE, train=False, batch_size=4, workers=1):
        log.add(skipped)
        if len(labels):  # a batch of bad files only is empty
            assert batch.shape[1:] == (3, 32, 32) and len(batch) == len(labels)
        images += len(labels)
    assert images == 9
    assert {path.rsplit("/", 1)[1]: reason for path, reason in
            ((s.path, s.reason) for s in log.seen.values())} == expected


def test_training_loader_with_workers_gives_the_same_augmentation_as_without(tmp_path):
    stripes_folder(tmp_path, per_class=4)
    train, _ = training_sources(tmp_path, val_fraction=0.25)
    runs = []
    for workers in (0, 2):
        sampler = ResumableSampler(len(train), seed=3)
        batches = train.batches(PRE, train=True, batch_size=3, sampler=sampler, aug=Augmentation(), seed=3,
                                workers=workers)
        batches.set_epoch(1)
        runs.append(torch.cat([x for x, _, _ in batches]))
    assert torch.equal(runs[0], runs[1])


def test_dataset_augmentation_is_a_function_of_the_sample_seed(tmp_path):
    stripes_folder(tmp_path, per_class=1)
    scan = scan_folder(tmp_path)
    data = ImageFolderDataset(scan.samples, scan.classes, train_transform(PRE, Augmentation(scale=(0.1, 0.5))))
    assert torch.equal(data[(0, 11)][0], data[(0, 11)][0])
    assert not torch.equal(data[(0, 11)][0], data[(0, 12)][0])
    plain = ImageFolderDataset(scan.samples, scan.classes, eval_transform(PRE))
    x, label = plain[0]
    assert x.shape == (3, 32, 32) and label == 0
