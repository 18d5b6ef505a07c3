"""Evaluation: counts against a hand-computed confusion matrix, and the whole pipeline against a direct forward."""

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

import xception
from data_factory import CLASSES, add_bad_files, stripes_folder
from xception.cli import main
from xception.evaluate import Counts, count_batches, evaluate, plot_confusion
from xception.preprocessing import Preprocessing

# 8 images, 6 classes. Each row ranks the classes from most to least likely.
LABELS = [0, 0, 1, 2, 3, 4, 5, 5]
RANKINGS = [
    [0, 1, 2, 3, 4, 5],  # right
    [1, 0, 2, 3, 4, 5],  # wrong (1), label second: a top-5 hit
    [1, 2, 3, 4, 5, 0],  # right
    [2, 0, 1, 3, 4, 5],  # right
    [3, 4, 5, 0, 1, 2],  # right
    [3, 0, 1, 2, 5, 4],  # wrong (3), label last: a top-5 miss
    [5, 4, 3, 2, 1, 0],  # right
    [0, 1, 2, 3, 4, 5],  # wrong (0), label last: a top-5 miss
]
CONFUSION = [  # rows: true class, columns: predicted class
    [1, 1, 0, 0, 0, 0],
    [0, 1, 0, 0, 0, 0],
    [0, 0, 1, 0, 0, 0],
    [0, 0, 0, 1, 0, 0],
    [0, 0, 0, 1, 0, 0],
    [1, 0, 0, 0, 0, 1],
]


def logits_from_rankings() -> torch.Tensor:
    logits = torch.zeros(len(RANKINGS), 6)
    for row, ranking in enumerate(RANKINGS):
        for place, cls in enumerate(ranking):
            logits[row, cls] = 3.0 - 0.7 * place
    return logits


def test_counts_match_the_hand_computed_confusion_matrix():
    counts = Counts.zeros(6)
    logits, labels = logits_from_rankings(), torch.tensor(LABELS)
    counts.update(logits[:5], labels[:5])
    counts.update(logits[5:], labels[5:])  # batches add up
    assert counts.confusion.tolist() == CONFUSION
    assert counts.total == 8 and counts.top1 == 5 / 8 and counts.top5 == 6 / 8
    assert counts.per_class() == [0.5, 1.0, 1.0, 1.0, 0.0, 0.5]
    expected_loss = 0.0
    for row, label in zip(logits.tolist(), LABELS, strict=True):
        expected_loss -= row[label] - math.log(sum(math.exp(v) for v in row))
    assert counts.loss == pytest.approx(expected_loss / 8, rel=1e-6)


def test_counts_from_several_processes_sum_exactly():
    logits, labels = logits_from_rankings(), torch.tensor(LABELS)
    halves = [Counts.zeros(6), Counts.zeros(6)]
    halves[0].update(logits[::2], labels[::2])
    halves[1].update(logits[1::2], labels[1::2])
    whole = halves[0].add(halves[1])
    assert whole.confusion.tolist() == CONFUSION and whole.top5 == 6 / 8
    doubled = whole.all_reduce(lambda t: t.mul_(2))  # what an all-reduce over two identical ranks gives
    assert doubled.total == 16 and doubled.top1 == 5 / 8


def test_classes_without_images_have_no_accuracy_and_top5_needs_five_classes():
    counts = Counts.zeros(3)
    counts.update(torch.tensor([[2.0, 1.0, 0.0]]), torch.tensor([0]))
    assert counts.per_class() == [1.0, None, None] and counts.top5 is None


def test_confusion_plot_is_a_png(tmp_path):
    path = plot_confusion(torch.tensor(CONFUSION), [f"class {i}" for i in range(6)], tmp_path / "cm.png")
    assert path.read_bytes()[:4] == b"\x89PNG"


@pytest.fixture(scope="module")
def weights_and_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("evaluate")
    folder = stripes_folder(root / "data", per_class=5)
    add_bad_files(folder / "vertical")
    torch.manual_seed(0)
    model = xception.create_model("xception", num_classes=3, stem="small", width=0.25, middle_repeats=1)
    pre = Preprocessing(input_size=32, crop_pct=1.0, interpolation="bilinear")
    xception.save_weights(model, root / "w.safetensors", class_names=list(CLASSES), preprocessing=pre)
    return root / "w.safetensors", folder


def readable_images(folder):
    """(label, 32×32 RGB float pixels) of every file the folder reader would use, read by hand."""
    for label, name in enumerate(CLASSES):
        for path in sorted((folder / name).glob("*.png")):
            try:
                pixels = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32)
            except (OSError, Image.DecompressionBombError):
                continue
            if pixels.shape == (32, 32, 3):
                yield label, pixels


def direct_predictions(weights, folder):
    """The model applied to each readable file by hand: PIL → [-1, 1] → forward; also the mean loss."""
    model = xception.create_model("xception", weights=weights).eval()
    truth, predicted, losses = [], [], []
    for label, pixels in readable_images(folder):
        x = torch.from_numpy(pixels / 127.5 - 1).permute(2, 0, 1)[None]
        with torch.no_grad():
            logits = model(x)
        predicted.append(int(logits.argmax()))
        losses.append(float(torch.nn.functional.cross_entropy(logits, torch.tensor([label]))))
        truth.append(label)
    return truth, predicted, sum(losses) / len(losses)


def test_evaluate_agrees_with_a_direct_forward_and_counts_skipped_files(weights_and_folder, tmp_path):
    weights, folder = weights_and_folder
    report = evaluate(weights, folder, progress=False, workers=0, plot=tmp_path / "cm.png")
    truth, predicted, loss = direct_predictions(weights, folder)
    expected = torch.zeros(3, 3, dtype=torch.long)
    for t, p in zip(truth, predicted, strict=True):
        expected[t, p] += 1
    assert torch.equal(report.counts.confusion, expected)
    assert report.counts.loss == pytest.approx(loss, rel=1e-5)  # every logit, not only the argmax
    assert report.counts.total == 15
    assert report.skipped == {"empty file": 1, "not an image": 2, "truncated": 2, "decompression bomb": 1}
    assert (tmp_path / "cm.png").is_file()
    text = report.format()
    assert "top-1" in text and "horizontal" in text and "skipped files" in text


def test_evaluate_command_prints_json(weights_and_folder, tmp_path, capsys):
    weights, folder = weights_and_folder
    assert main(["evaluate", "--weights", str(weights), "--data", str(folder), "--json", "--no-progress",
                 "--plot", str(tmp_path / "cm.png"), "--workers", "0"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["images"] == 15 and report["top5"] is None and len(report["confusion_matrix"]) == 3
    assert set(report["per_class"]) == set(CLASSES) and report["confusion_plot"].endswith("cm.png")


def test_evaluate_writes_its_plot_only_where_told(weights_and_folder, tmp_path, capsys):
    weights, folder = weights_and_folder
    before = sorted(weights.parent.rglob("*"))
    assert main(["evaluate", "--weights", str(weights), "--data", str(folder), "--no-progress", "--workers", "0"]) == 0
    assert "confusion matrix:" not in capsys.readouterr().out
    assert sorted(weights.parent.rglob("*")) == before  # nothing beside the weights, nothing in the data
    plot = tmp_path / "plots" / "cm.png"
    plot.parent.mkdir()
    assert main(["evaluate", "--weights", str(weights), "--data", str(folder), "--no-progress", "--workers", "0",
                 "--plot", str(plot)]) == 0
    assert f"confusion matrix: {plot}" in capsys.readouterr().out
    assert sorted(plot.parent.iterdir()) == [plot] and plot.read_bytes()[:4] == b"\x89PNG"
    assert sorted(weights.parent.rglob("*")) == before


def test_evaluate_refuses_folders_with_unknown_classes(weights_and_folder, tmp_path, capsys):
    weights, _ = weights_and_folder
    stripes_folder(tmp_path / "other", per_class=1)
    (tmp_path / "other" / "zebra").mkdir()
    Image.new("RGB", (32, 32)).save(tmp_path / "other" / "zebra" / "z.png")
    assert main(["evaluate", "--weights", str(weights), "--data", str(tmp_path / "other")]) == 1
    assert "does not know: ['zebra']" in capsys.readouterr().err


class LeftColumns(torch.nn.Module):
    """A model that looks only at the first pixels of the top row: its mirror sees the last ones."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = torch.nn.Parameter(torch.tensor(4.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * x[:, 0, 0, :3]


def test_test_time_flip_counts_the_mean_of_the_two_softmax_distributions():
    images = torch.rand(6, 1, 2, 5, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([0, 1, 2, 2, 1, 0])
    counts = count_batches(LeftColumns(), [(images[:4], labels[:4], []), (images[4:], labels[4:], [])], 3, flip=True)
    p = ((4 * images[:, 0, 0, :3]).softmax(1) + (4 * images[:, 0, 0, [4, 3, 2]]).softmax(1)) / 2
    expected = torch.zeros(3, 3, dtype=torch.long)
    for t, q in zip(labels.tolist(), p.argmax(1).tolist(), strict=True):
        expected[t, q] += 1
    assert torch.equal(counts.confusion, expected)
    assert counts.loss == pytest.approx(float(-p[range(6), labels].log().mean()), rel=1e-6)
    plain = count_batches(LeftColumns(), [(images, labels, [])], 3)
    assert plain.loss != pytest.approx(counts.loss, rel=1e-3)


def test_evaluate_with_test_time_flip_agrees_with_a_direct_forward_and_says_so(weights_and_folder, tmp_path, capsys):
    _, folder = weights_and_folder
    # A confident, left-right asymmetric model: an untrained one's near-uniform outputs would hide the mirror.
    torch.manual_seed(1)
    model = xception.create_model("xception", num_classes=3, stem="small", width=0.25, middle_repeats=1)
    with torch.no_grad():
        model.head.fc.weight.mul_(300.0)
    weights = tmp_path / "confident.safetensors"
    xception.save_weights(model, weights, class_names=list(CLASSES),
                          preprocessing=Preprocessing(input_size=32, crop_pct=1.0, interpolation="bilinear"))
    plain = evaluate(weights, folder, progress=False, workers=0)
    flipped = evaluate(weights, folder, progress=False, workers=0, flip=True)
    # By hand: each readable image and its mirror, probabilities averaged.
    model = xception.create_model("xception", weights=weights).eval()
    expected, loss = torch.zeros(3, 3, dtype=torch.long), 0.0
    for label, pixels in readable_images(folder):
        x = torch.from_numpy(pixels / 127.5 - 1).permute(2, 0, 1)[None]
        mirror = torch.from_numpy(np.ascontiguousarray(pixels[:, ::-1]) / 127.5 - 1).permute(2, 0, 1)[None]
        with torch.no_grad():
            p = (model(x).softmax(1) + model(mirror).softmax(1)) / 2
        expected[label, int(p.argmax())] += 1
        loss -= math.log(float(p[0, label]))
    assert torch.equal(flipped.counts.confusion, expected)
    assert flipped.counts.loss == pytest.approx(loss / 15, rel=1e-5)
    assert abs(flipped.counts.loss - plain.counts.loss) > 1e-3  # far beyond the tolerance above
    # Labelled wherever a figure is reported: text, JSON, the command's last line.
    assert "with test-time flip" in flipped.format() and "test-time flip" not in plain.format()
    assert flipped.to_dict()["test_time_flip"] is True and plain.to_dict()["test_time_flip"] is False
    assert main(["evaluate", "--weights", str(weights), "--data", str(folder), "--no-progress", "--workers", "0",
                 "--flip"]) == 0
    assert capsys.readouterr().out.splitlines()[-1].startswith("accuracy with test-time flip: ")
