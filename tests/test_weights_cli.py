"""``xception convert`` and ``xception weights``: thin shells over the weights library."""

from __future__ import annotations

import json

import pytest

from weights_helpers import assert_same_state
from xception import cli, create_model, save_weights
from xception.weights import hub


@pytest.fixture(autouse=True)
def commands(monkeypatch, tmp_path):
    # Only the commands under test, so that this file does not depend on the others being importable.
    monkeypatch.setattr(cli, "COMMANDS", ("convert", "weights"))
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
    assert all(not row["cached"] and row["path"].startswith(str(hub.cache_dir())) for row in rows)
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
