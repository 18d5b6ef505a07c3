"""The training phases as a library: open a run, train a number of updates, validate, resume its folder.

Runs are deterministic on CPU with one thread, so a run cut at an update and continued (in the same
process, or from its folder) must end with bit-identical weights to an uninterrupted one.
"""

from pathlib import Path

import pytest

from data_factory import assert_same_training, stripes_folder, tiny_recipe
from xception.errors import ConfigError, MissingPathError
from xception.train import (
    RunSettings,
    finish,
    fit,
    load_checkpoint,
    open_log,
    open_run,
    read_metrics,
    resume_settings,
    train,
    validate,
)

# Dropout, flips and EMA make the RNG state and the averaged weights part of what must carry over.
RECIPE = tiny_recipe(epochs=2, deterministic=True, ema_decay=0.5, hflip=0.5,
                     model_options={"stem": "small", "width": 0.25, "middle_repeats": 1, "drop_rate": 0.3})
# What last.pt and best.pt have held since version 1: runs written before stay resumable.
CHECKPOINT_KEYS = {"version", "model", "ema", "optimizer", "scheduler", "scaler", "rng", "epoch", "position",
                   "world_size", "step", "best", "partial", "recipe", "run", "model_config", "class_names",
                   "preprocessing", "skipped", "elapsed_s"}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return stripes_folder(tmp_path_factory.mktemp("stripes"), per_class=12)  # 27 training images: 3 updates/epoch


@pytest.fixture(scope="module")
def reference(folder, tmp_path_factory) -> Path:
    result = train(RECIPE, folder, out=tmp_path_factory.mktemp("runs") / "reference", progress=False)
    return result.run_dir


def test_checkpoints_keep_their_format(reference):
    checkpoint = load_checkpoint(reference)
    assert set(checkpoint) == CHECKPOINT_KEYS
    assert set(checkpoint["partial"]) == {"loss_sum", "correct", "seen", "time"}
    assert checkpoint["run"]["data"] is not None and checkpoint["epoch"] == RECIPE.epochs


def test_a_run_stopped_at_an_update_and_resumed_from_its_folder_matches(folder, reference, tmp_path):
    out = tmp_path / "cut"
    run = open_run(RECIPE, RunSettings(data=str(folder)), out=out)
    with open_log(run) as run_log:
        done = fit(run, run_log, steps=4)
    assert done.interrupted and [r["epoch"] for r in done.records] == [1] and done.records[0]["step"] == 3
    saved = load_checkpoint(out)
    assert (saved["epoch"], saved["step"], saved["position"]) == (1, 4, RECIPE.batch_size)  # one batch into epoch 2

    recipe, settings = resume_settings(out)
    assert recipe == RECIPE and settings.data == str(folder)
    run = open_run(recipe, resume=out)
    assert run.resumed and run.state.step == 4
    with open_log(run) as run_log:
        done = fit(run, run_log)
    result = finish(run)
    assert not done.interrupted and result.weights is not None and result.weights.is_file()
    assert [r["epoch"] for r in read_metrics(out)] == [1, 2]
    assert_same_training(reference, out)


def test_a_run_continued_in_the_same_process_matches_and_validates_as_its_records(folder, reference, tmp_path):
    run = open_run(RECIPE, RunSettings(data=str(folder)), out=tmp_path / "steps")
    with open_log(run) as run_log:
        first = fit(run, run_log, steps=2)
        assert first.interrupted and first.records == [] and run.state.step == 2
        rest = fit(run, run_log)
    assert [r["epoch"] for r in rest.records] == [1, 2] and [r["step"] for r in rest.records] == [3, 6]
    assert_same_training(reference, run.run_dir)
    measured = validate(run)
    assert measured == {k: rest.records[-1][k] for k in ("val_loss", "val_top1", "val_top5")}


def test_user_errors_are_of_the_library_family(folder, reference, tmp_path):
    with pytest.raises(ConfigError, match="already holds a training run"):
        open_run(RECIPE, RunSettings(data=str(folder)), out=reference)
    with pytest.raises(MissingPathError, match="no checkpoint"):
        open_run(RECIPE, resume=tmp_path / "nowhere")
    gray_model = RECIPE.replace(model_options={**RECIPE.model_options, "in_chans": 1})
    with pytest.raises(ConfigError, match="1-channel images but the preprocessing gives 3"):
        open_run(gray_model, RunSettings(data=str(folder)), out=tmp_path / "run")
    assert not (tmp_path / "run").exists()  # nothing is written before the run is known to be usable
