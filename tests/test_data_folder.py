"""Image folders: scanning fails fast on bad paths, bad files are skipped and counted, splits are stable."""

import logging
import os
import shutil
from pathlib import Path

import pytest
import torch

from data_factory import CLASSES, add_bad_files, stripes_folder
from xception.cli import main
from xception.data import SkipLog, Skipped, evaluation_source, scan_folder, split_indices, training_sources
from xception.data.folder import DUPLICATE, ImageFolderDataset, find_split_folders
from xception.data.images import EMPTY, MISSING, NOT_AN_IMAGE, TOO_LARGE, TRUNCATED
from xception.data.transforms import Augmentation, eval_transform, train_transform
from xception.distributed import ResumableSampler
from xception.errors import DataError, command_line
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


def test_strict_mode_fails_on_the_first_bad_file_and_says_how_to_skip_in_the_callers_syntax():
    log = SkipLog(strict=True)
    with pytest.raises(DataError, match=r"cut\.png: truncated.*run with strict=False to skip"):
        log.add([Skipped("data/cat/cut.png", TRUNCATED)])
    with command_line(), pytest.raises(DataError, match=r"cut\.png: truncated.*run without --strict to skip"):
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


# -- links: every real folder and file once ----------------------------------------------------------------

def test_a_folder_link_loop_is_walked_once_and_counted(tmp_path, caplog):
    stripes_folder(tmp_path, per_class=3)
    (tmp_path / "vertical" / "loop").symlink_to("../vertical")  # cls/loop -> ../cls
    (tmp_path / "horizontal" / "up").symlink_to("..")  # back to the root: every class again
    with caplog.at_level(logging.WARNING, logger="xception.data"):
        scan = scan_folder(tmp_path)
    assert scan.counts_per_class() == [3, 3, 3]
    assert len({Path(p).resolve() for p, _ in scan.samples}) == len(scan.samples) == 9
    assert sorted((Path(s.path).name, s.reason) for s in scan.skipped) == [("loop", DUPLICATE), ("up", DUPLICATE)]
    log = SkipLog(strict=True)  # duplicates are left out, not unreadable: --strict does not fail on them
    log.add(scan.skipped)
    assert log.counts() == {DUPLICATE: 2}


def test_a_file_reached_twice_is_used_once_and_held_out_images_are_never_training_images(tmp_path):
    stripes_folder(tmp_path, per_class=4)
    first = sorted((tmp_path / "vertical").iterdir())[0]
    (tmp_path / "vertical" / "zz-link.png").symlink_to(first.name)
    os.link(first, tmp_path / "vertical" / "zz-hard.png")
    (tmp_path / "horizontal" / "borrowed").symlink_to(tmp_path / "vertical")  # into another class
    train, val = training_sources(tmp_path, val_fraction=0.5)
    real = [{Path(p).resolve() for p, _ in source.samples} for source in (train, val)]
    assert len(train) + len(val) == 12 and not real[0] & real[1]
    assert sorted(Path(s.path).name for s in train.skipped) == ["borrowed", "zz-hard.png", "zz-link.png"]


def test_a_validation_folder_does_not_reuse_training_images(tmp_path):
    stripes_folder(tmp_path / "train", per_class=3)
    stripes_folder(tmp_path / "val", per_class=1, seed=1)
    (tmp_path / "val" / "diagonal" / "leak.png").symlink_to(sorted((tmp_path / "train" / "diagonal").iterdir())[0])
    train, val = training_sources(tmp_path)
    assert (len(train), len(val)) == (9, 3)
    assert [(Path(s.path).name, s.reason) for s in val.skipped] == [("leak.png", DUPLICATE)]


def test_a_broken_link_is_skipped_not_a_crash(tmp_path):
    stripes_folder(tmp_path, per_class=2)
    (tmp_path / "vertical" / "gone.png").symlink_to(tmp_path / "nowhere.png")
    scan = scan_folder(tmp_path)
    assert [(Path(s.path).name, s.reason) for s in scan.skipped] == [("gone.png", MISSING)]
    assert scan.counts_per_class() == [2, 2, 2]


# -- one class is not a classification problem -------------------------------------------------------------

def test_a_one_class_folder_is_refused_before_any_work(tmp_path):
    stripes_folder(tmp_path / "data", per_class=4)
    for name in CLASSES[1:]:
        shutil.rmtree(tmp_path / "data" / name)
    with pytest.raises(DataError, match=r"only one class \(diagonal\).*at least two"):
        training_sources(tmp_path / "data")
    assert len(evaluation_source(tmp_path / "data", classes=list(CLASSES))) == 4  # evaluating one class is fine


def test_the_train_command_refuses_one_class_with_one_line(tmp_path, capsys):
    stripes_folder(tmp_path / "data", per_class=4)
    for name in CLASSES[1:]:
        shutil.rmtree(tmp_path / "data" / name)
    assert main(["train", str(tmp_path / "data"), "--out", str(tmp_path / "run"), "--epochs", "1"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "only one class" in err[0] and not (tmp_path / "run").exists()


def test_a_training_epoch_counts_the_bad_files_of_its_dropped_last_batch_too(tmp_path):
    """drop_last leaves the last partial batch unread; its bad files are still warned about and counted."""
    from xception.data import FolderBatches

    stripes_folder(tmp_path, per_class=4)
    bad = tmp_path / CLASSES[0]
    for i in range(5):
        (bad / f"bad{i}.png").write_bytes(b"not a png" * (i + 1))
    scan = scan_folder(tmp_path)
    data = ImageFolderDataset(scan.samples, scan.classes, eval_transform(PRE))
    bad_indices = {i for i, (path, _) in enumerate(scan.samples) if "/bad" in path}
    n = len(scan.samples)
    assert n % 4 == 1 and len(bad_indices) == 5  # batches of 4, and one file left over
    seed = next(s for s in range(100) if list(ResumableSampler(n, seed=s))[-1] in bad_indices)
    batches = FolderBatches(data, batch_size=4, sampler=ResumableSampler(n, seed=seed), workers=0, drop_last=True)
    batches.set_epoch(0)
    log = SkipLog()
    for _, _, skipped in batches:
        log.add(skipped)
    assert sorted(log.seen) == sorted(scan.samples[i][0] for i in bad_indices)
    assert log.counts() == {NOT_AN_IMAGE: 5}
