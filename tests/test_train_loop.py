"""The training loop on tiny generated image folders: it learns, writes its run folder, handles NaN, fine-tunes."""

import json
import math

import pytest
import torch
import torch.nn.functional as F

import xception
from data_factory import CLASSES, add_bad_files, stripes_folder, tiny_recipe
from xception.data import TensorSource, training_sources
from xception.data.transforms import Augmentation
from xception.distributed import ResumableSampler
from xception.preprocessing import Preprocessing
from xception.train import NonFiniteLoss, build_optimizer, load_checkpoint, load_recipe, lr_at, train

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = stripes_folder(tmp_path_factory.mktemp("stripes"), per_class=12)
    bad = add_bad_files(root / "vertical")
    return root, bad


@pytest.fixture(scope="module")
def run(folder, tmp_path_factory):
    """One small run shared by the artifact tests: 3 epochs, a step schedule, EMA on."""
    recipe = tiny_recipe(epochs=3, schedule="step", decay_epochs=1, decay_rate=0.5, ema_decay=0.5)
    out = tmp_path_factory.mktemp("runs") / "stripes"
    result = train(recipe, folder[0], out=out, progress=False)
    return recipe, result


def test_a_few_optimisation_steps_lower_the_loss():
    torch.manual_seed(0)
    recipe = load_recipe("fashion-mnist").replace(lr=0.05, warmup_epochs=0)
    model = xception.create_model("xception", num_classes=10, in_chans=1, **{**recipe.model_options, "width": 0.25,
                                                                              "middle_repeats": 1})
    images = torch.randint(0, 256, (32, 1, 28, 28), dtype=torch.uint8)
    labels = torch.arange(32) % 10
    source = TensorSource(images, labels, [str(i) for i in range(10)], "random")
    batches = source.batches(recipe.preprocessing(), train=True, batch_size=32, sampler=ResumableSampler(32),
                             aug=Augmentation(scale=(1.0, 1.0), hflip=0.0))
    x, y, _ = next(iter(batches))
    optimizer = build_optimizer(recipe, model, recipe.lr)
    model.train()
    losses = []
    for _ in range(8):
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_training_learns_and_applies_the_schedule(run):
    recipe, result = run
    records = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2, 3] and result.epochs_done == 3
    assert records[-1]["train_loss"] < records[0]["train_loss"]
    for r in records:  # the lr after each epoch's last update is the schedule's value at that epoch
        assert r["lr"] == pytest.approx(lr_at(recipe, r["epoch"]))
        assert r["lr"] == pytest.approx(recipe.lr * 0.5 ** r["epoch"])


def test_run_folder_holds_config_metrics_events_checkpoints_plots_and_the_model(run, folder):
    recipe, result = run
    names = {p.name for p in result.run_dir.iterdir()}
    assert {"config.toml", "metrics.jsonl", "last.pt", "best.pt", "loss.png", "accuracy.png", "model.safetensors",
            "summary.json"} <= names
    assert any(n.startswith("events.out.tfevents") for n in names)
    assert not any(n.endswith(".tmp") for n in names)
    for png in ("loss.png", "accuracy.png"):
        assert (result.run_dir / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert load_recipe(result.run_dir / "config.toml").replace(name="tiny") == recipe  # a resolved, reusable config
    summary = json.loads((result.run_dir / "summary.json").read_text())
    assert summary["skipped"] == {"empty file": 1, "not an image": 2, "truncated": 2, "decompression bomb": 1}


def test_exported_model_is_the_best_ema_with_its_metadata(run):
    recipe, result = run
    model = xception.create_model("xception", weights=result.weights)
    assert model.class_names == list(CLASSES)
    assert model.preprocessing == recipe.preprocessing()
    meta = model.weights_meta.metrics
    assert meta["ema"] is True and meta["epoch"] == result.best["epoch"]
    assert meta["val_top1"] == result.best["val_top1"]
    best = load_checkpoint(result.run_dir / "best.pt")
    ema = {k.removeprefix("module."): v for k, v in best["ema"].items() if k != "updates"}
    assert all(torch.equal(v, ema[k]) for k, v in model.state_dict().items())


def test_training_on_a_missing_folder_fails_before_any_work(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        train(tiny_recipe(), tmp_path / "nowhere", out=tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


def test_strict_mode_refuses_bad_files_before_any_work(folder, tmp_path):
    with pytest.raises(ValueError, match=r"empty file.*strict=False"):  # the fix, spelled for Python
        train(tiny_recipe(), folder[0], out=tmp_path / "run", strict=True, progress=False)
    assert not (tmp_path / "run" / "last.pt").exists()


def test_an_existing_run_is_not_overwritten(run, folder):
    _, result = run
    with pytest.raises(ValueError, match="continue it with resume="):
        train(tiny_recipe(), folder[0], out=result.run_dir, progress=False)


def test_nan_loss_stops_with_a_clear_message_and_keeps_the_last_good_checkpoint(folder, tmp_path):
    out = tmp_path / "run"
    train(tiny_recipe(epochs=1), folder[0], out=out, progress=False)
    good = load_checkpoint(out / "last.pt")
    with pytest.raises(NonFiniteLoss, match=r"(nan|inf) in epoch 2.*last good checkpoint is .*last\.pt.*--resume"):
        train(tiny_recipe(epochs=2, lr=1e30), out=None, resume=out, progress=False)
    kept = load_checkpoint(out / "last.pt")
    assert kept["epoch"] == 1
    assert all(torch.equal(v, good["model"][k]) for k, v in kept["model"].items())
    assert all(torch.isfinite(v).all() for v in kept["model"].values() if v.is_floating_point())


def test_fine_tuning_replaces_the_head_and_can_freeze_the_backbone(folder, tmp_path):
    source = xception.create_model("xception", num_classes=5, stem="small", width=0.25, middle_repeats=1)
    pre = Preprocessing(input_size=32, crop_pct=1.0, interpolation="bilinear")
    xception.save_weights(source, tmp_path / "pretrained.safetensors", class_names=list("abcde"), preprocessing=pre)
    result = train(tiny_recipe(epochs=1, freeze_epochs=1), folder[0], weights=tmp_path / "pretrained.safetensors",
                   out=tmp_path / "run", progress=False)
    tuned = xception.create_model("xception", weights=result.weights)
    assert tuned.config.num_classes == 3 and tuned.class_names == list(CLASSES)
    before, after = source.state_dict(), tuned.state_dict()
    backbone = [k for k in before if not k.startswith("head.")]
    assert all(torch.equal(before[k], after[k]) for k in backbone)  # frozen: weights and BN statistics
    assert after["head.fc.weight"].shape == (3, before["head.fc.weight"].shape[1])

    result = train(tiny_recipe(epochs=1), folder[0], weights=tmp_path / "pretrained.safetensors",
                   out=tmp_path / "run2", progress=False)
    after = xception.create_model("xception", weights=result.weights).state_dict()
    assert not all(torch.equal(before[k], after[k]) for k in backbone)


def test_gradient_accumulation_updates_once_per_accum_steps_batches(folder, tmp_path):
    result = train(tiny_recipe(epochs=1, accum_steps=2, batch_size=4), folder[0], out=tmp_path / "run",
                   progress=False)
    train_share, _ = training_sources(folder[0], val_fraction=0.25)
    batches = len(train_share) // 4  # the last partial batch is dropped
    assert batches % 2 == 1 and result.best["step"] == (batches + 1) // 2  # the odd last batch updates too


@pytest.mark.slow
def test_compiled_model_trains(folder, tmp_path):
    result = train(tiny_recipe(epochs=1, compile=True), folder[0], out=tmp_path / "run", progress=False)
    assert result.weights.is_file()


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("compile", [False, True])
def test_bf16_training_on_cuda_learns_and_exports_float32_weights(folder, tmp_path, compile):
    recipe = tiny_recipe(epochs=4, device="cuda", amp="auto", compile=compile)
    result = train(recipe, folder[0], out=tmp_path / "run", progress=False)
    records = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == 4 and all(math.isfinite(r["train_loss"]) for r in records)
    assert max(r["train_acc"] for r in records) > 0.5  # above the 1/3 of chance on three classes
    model = xception.create_model("xception", weights=result.weights)
    assert all(p.dtype == torch.float32 and p.device.type == "cpu" for p in model.parameters())
