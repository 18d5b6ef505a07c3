"""``xception convert`` and ``xception weights``, and the weights options of ``predict`` and ``evaluate``:
thin shells over the weights library."""

from __future__ import annotations

import json

import pytest
import torch

from data_factory import CLASSES, stripes_folder
from weights_helpers import assert_same_state
from xception import cli, create_model, save_weights
from xception.predict import predict
from xception.weights import hub


@pytest.fixture(autouse=True)
def commands(monkeypatch, tmp_path):
    # Only the commands under test, so that this file does not depend on the others being importable.
    monkeypatch.setattr(cli, "COMMANDS", ("convert", "weights", "predict", "evaluate"))
    monkeypatch.setenv("XCEPTION_CACHE", str(tmp_path / "cache"))


@pytest.fixture
def small_file(tmp_path):
    model = create_model("xception", width=0.25, middle_repeats=1, num_classes=5)
    save_weights(model, tmp_path / "small.safetensors", source="unit test")
    return model, tmp_path / "small.safetensors"


def test_convert_writes_our_format_and_reports_json(small_file, tmp_path, capsys):
    model, src = small_file
    dst = tmp_path / "out.safetensors"
    assert cli.main(["convert", str(src), str(dst), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["model"] == "xception" and result["num_classes"] == 5 and result["format"] == "xception"
    assert result["source"] == "unit test" and result["skipped"] == []
    assert dst.read_bytes() == src.read_bytes()  # ours → ours is the identity
    assert_same_state(create_model(weights=dst), model)


def test_convert_errors_are_one_line_and_write_nothing(small_file, tmp_path, capsys):
    _, src = small_file
    assert cli.main(["convert", str(src), str(tmp_path / "out.pth")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("xception convert: error:") and "safetensors" in err and "\n" not in err
    assert cli.main(["convert", str(src), str(tmp_path / "o.safetensors"), "--model", "xception65"]) == 1
    assert "'xception65' was requested" in capsys.readouterr().err
    assert not (tmp_path / "out.pth").exists() and not (tmp_path / "o.safetensors").exists()


def test_weights_lists_the_tags(capsys):
    assert cli.main(["weights", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [row["name"] for row in rows] == list(hub.TAGS)
    assert not any(row["cached"] for row in rows)
    ours = [row for row in rows if not row["url"].startswith("hf-hub:")]
    assert ours and all(row["path"].startswith(str(hub.cache_dir())) for row in ours)
    assert all(row["path"] is None for row in rows if row not in ours)  # the Hub's cache, once fetched
    assert cli.main(["weights", "legacy_xception.tf_in1k"]) == 0
    out = capsys.readouterr().out
    assert "legacy_xception.tf_in1k" in out and "xception-43020ad28.pth" in out and "top-1 79.06%" in out


def test_weights_errors(capsys):
    assert cli.main(["weights", "--download"]) == 1
    assert "name the tags to download" in capsys.readouterr().err
    assert cli.main(["weights", "nonexistent"]) == 1
    assert "unknown weights tag 'nonexistent'" in capsys.readouterr().err


def test_help_teaches(capsys):
    with pytest.raises(SystemExit):
        cli.main(["convert", "--help"])
    out = capsys.readouterr().out
    assert "xception convert legacy_xception.tf_in1k" in out and "--model" in out


@pytest.fixture(scope="module")
def bare41(tmp_path_factory):
    """A bare state dict of a narrow 3-class xception41 (nothing in it names its model), and labelled images."""
    root = tmp_path_factory.mktemp("bare41")
    torch.manual_seed(0)
    torch.save(create_model("xception41", width=0.25, num_classes=3).state_dict(), root / "xception41.pth")
    return root / "xception41.pth", stripes_folder(root / "data", per_class=2)


def test_predict_and_evaluate_say_which_model_a_bare_state_dict_is(bare41, capsys):
    weights, folder = bare41
    image = str(next((folder / CLASSES[0]).iterdir()))
    for command in (["predict", "--weights", str(weights), image],
                    ["evaluate", "--weights", str(weights), "--data", str(folder), "--model", "xception"]):
        assert cli.main(command) == 1
        err = capsys.readouterr().err
        assert err.startswith(f"xception {command[0]}: error: ")
        assert "those of 'xception41': pass --model xception41 --set model.width=0.25" in err
        assert "name=" not in err  # the hint is spelled as this command takes it


def test_predict_and_evaluate_take_the_model_and_its_options(bare41, capsys):
    weights, folder = bare41
    image = str(next((folder / CLASSES[0]).iterdir()))
    model = ["--model", "xception41", "--set", "model.width=0.25"]
    assert cli.main(["predict", "--weights", str(weights), image, "--json", "--top-k", "2", *model]) == 0
    printed = json.loads(capsys.readouterr().out)
    direct = predict(weights, [image], top_k=2, model_name="xception41", model_options={"width": 0.25})
    assert printed == [p.to_dict() for p in direct] and len(printed[0]["top"]) == 2
    assert cli.main(["evaluate", "--weights", str(weights), "--data", str(folder), "--json", "--no-progress",
                     "--workers", "0", *model]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["images"] == 6 and report["class_names"] == list(CLASSES) and report["confusion_plot"] is None
