"""User errors are the library's own type, say what to do in the caller's syntax, and keep their causes; the
command line prints them as one line and anything else (a bug) as a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

import xception
from data_factory import stripes_folder, tiny_recipe
from xception.analysis import model_cost, plot_separable_cost
from xception.cli import main
from xception.data import evaluation_source, load_fashion_mnist, scan_folder
from xception.errors import (
    ConfigError,
    DataError,
    IsAFolderError,
    MissingPathError,
    NotAFolderError,
    WeightsError,
    XceptionError,
    command_line,
)
from xception.export import export_model
from xception.fileio import atomic_write
from xception.predict import predict
from xception.preprocessing import Preprocessing
from xception.train import train
from xception.weights import get_tag


def tiny() -> xception.Xception:
    return xception.create_model("xception", num_classes=3, stem="small", width=0.25, middle_repeats=1)


# -- every user mistake is an XceptionError -----------------------------------------------------------------

# Mistake → (a call that makes it, given a folder with a few files; the error it raises; what the message says).
MISTAKES: dict[str, tuple[Callable[[Path], object], type[XceptionError], str]] = {
    "unknown model": (lambda tmp: xception.create_model("xception99"), ConfigError, "unknown model"),
    "bad option value": (lambda tmp: xception.create_model(width=-1), ConfigError, "width must be"),
    "missing weights": (lambda tmp: xception.create_model(weights=tmp / "none.pth"), MissingPathError,
                        "no such file"),
    "folder as weights": (lambda tmp: xception.create_model(weights=tmp / "folder"), IsAFolderError, "directory"),
    "empty weights": (lambda tmp: xception.create_model(weights=tmp / "empty.pth"), WeightsError, "is empty"),
    "not weights": (lambda tmp: xception.create_model(weights=tmp / "notes.txt"), WeightsError,
                    "not a weights file"),
    "unknown tag": (lambda tmp: get_tag("xception.nope"), ConfigError, "unknown weights tag"),
    "bad preprocessing": (lambda tmp: Preprocessing(input_size=0), ConfigError, "input_size must be"),
    "image too small": (lambda tmp: xception.create_model()(torch.zeros(1, 3, 50, 50)), DataError, "needs at least"),
    "wrong channels": (lambda tmp: tiny()(torch.zeros(1, 1, 32, 32)), DataError, "channels"),
    "missing data folder": (lambda tmp: scan_folder(tmp / "nowhere"), MissingPathError, "does not exist"),
    "file as data folder": (lambda tmp: scan_folder(tmp / "notes.txt"), NotAFolderError, "is a file"),
    "no class folders": (lambda tmp: evaluation_source(tmp / "folder"), DataError, "no class folders"),
    "bad split": (lambda tmp: load_fashion_mnist("val"), ConfigError, "'train' or 'test'"),
    "weights not safetensors": (lambda tmp: xception.save_weights(tiny(), tmp / "w.pt"), ConfigError,
                                "name the file"),
    "unknown export format": (lambda tmp: export_model(tiny(), tmp / "m.zip"), ConfigError, "export format"),
    "top_k": (lambda tmp: predict(tmp / "w.safetensors", [tmp], top_k=0), ConfigError, "top_k"),
    "output is a folder": (lambda tmp: atomic_write(tmp / "folder", lambda p: p.write_text("x")), IsAFolderError,
                           "is an existing folder"),
    "output below a file": (lambda tmp: atomic_write(tmp / "notes.txt" / "out.json", lambda p: p.write_text("x")),
                            NotAFolderError, "is a file"),
    "chart format": (lambda tmp: plot_separable_cost(model_cost(tiny(), 32), tmp / "cost.pgn"), ConfigError,
                     "name it .png"),
}


@pytest.mark.parametrize("name", MISTAKES)
def test_a_user_mistake_raises_the_librarys_own_error(name, tmp_path):
    (tmp_path / "folder").mkdir()
    (tmp_path / "empty.pth").write_bytes(b"")
    (tmp_path / "notes.txt").write_text("not weights")
    call, kind, message = MISTAKES[name]
    with pytest.raises(kind, match=message):
        call(tmp_path)


def test_errors_also_are_the_built_in_types_older_code_catches():
    assert issubclass(ConfigError, ValueError) and issubclass(MissingPathError, FileNotFoundError)
    assert issubclass(NotAFolderError, NotADirectoryError) and issubclass(IsAFolderError, IsADirectoryError)
    assert issubclass(xception.weights.WeightsMismatchError, WeightsError)
    assert issubclass(xception.data.UnreadableImage, DataError)


def test_a_damaged_file_keeps_its_cause(tmp_path):
    (tmp_path / "cut.pth").write_bytes(b"PK\x03\x04" + bytes(60))
    with pytest.raises(WeightsError) as err:
        xception.create_model(weights=tmp_path / "cut.pth")
    assert err.value.__cause__ is not None  # the reader's own exception, for XCEPTION_DEBUG=1 and bug reports


# -- hints in the caller's syntax ---------------------------------------------------------------------------

def test_hints_are_spelled_for_python_or_for_the_command_line():
    model = xception.create_model()
    with pytest.raises(DataError, match=r'use stem="small" for images down to 16 px'):
        model(torch.zeros(1, 3, 50, 50))
    with command_line(), pytest.raises(DataError, match=r"use --set model.stem=small for images down to 16 px"):
        model(torch.zeros(1, 3, 50, 50))
    with pytest.raises(DataError, match=r"build it with in_chans=1 or"):
        tiny()(torch.zeros(1, 1, 32, 32))
    with command_line(), pytest.raises(DataError, match=r"build it with --set model.in_chans=1 or"):
        tiny()(torch.zeros(1, 1, 32, 32))


def test_the_command_prints_the_hint_as_an_option(capsys):
    assert main(["summary", "--input-size", "50", "--no-layers"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("xception summary: error: input is 50×50") and "\n" not in err
    assert "use --set model.stem=small" in err


# -- the command line: one line for what the user can fix, a traceback for a bug ----------------------------

def test_a_bug_is_not_passed_off_as_a_user_error(monkeypatch, capsys):
    def broken(*args: object, **kwargs: object) -> None:
        raise ValueError("an internal invariant failed")

    monkeypatch.setattr(xception.models, "build_model", broken)  # the function `summary` calls
    with pytest.raises(ValueError, match="an internal invariant failed"):
        main(["summary"])
    def failing_os(*args: object, **kwargs: object) -> None:
        raise OSError("an unexpected system error")

    monkeypatch.setattr(xception.models, "build_model", failing_os)
    with pytest.raises(OSError, match="an unexpected system error"):
        main(["summary"])


def test_interrupt_exits_130_and_debug_shows_the_traceback(monkeypatch, capsys):
    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(xception.models, "build_model", interrupted)
    assert main(["summary"]) == 130
    monkeypatch.undo()
    monkeypatch.setenv("XCEPTION_DEBUG", "1")
    with pytest.raises(ConfigError, match="unknown model"):
        main(["summary", "xception99"])


def test_the_installed_command_prints_one_line_and_no_traceback(tmp_path):
    done = subprocess.run([sys.executable, "-m", "xception", "summary", "--input-size", "50"], capture_output=True,
                          text=True, timeout=300, env={**os.environ, "XCEPTION_DEBUG": ""})
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines() == [done.stderr.strip()]
    assert "--set model.stem=small" in done.stderr


# -- outputs that name the wrong kind of path ---------------------------------------------------------------

def test_a_run_folder_that_is_a_file_is_refused_before_any_work(tmp_path, capsys):
    stripes_folder(tmp_path / "data", per_class=2)
    (tmp_path / "run").write_text("a file, not a folder")
    with pytest.raises(NotAFolderError, match=r"run is an existing file, not a run folder; choose another out="):
        train(tiny_recipe(), tmp_path / "data", out=tmp_path / "run", progress=False)
    assert main(["train", str(tmp_path / "data"), "--out", str(tmp_path / "run")]) == 1
    assert "choose another --out" in capsys.readouterr().err
    assert (tmp_path / "run").read_text() == "a file, not a folder"


def test_an_output_file_that_is_a_folder_is_named_as_such(tmp_path, capsys):
    xception.save_weights(tiny(), tmp_path / "w.safetensors")
    (tmp_path / "out.safetensors").mkdir()
    assert main(["convert", str(tmp_path / "w.safetensors"), str(tmp_path / "out.safetensors")]) == 1
    err = capsys.readouterr().err
    assert "out.safetensors: it is an existing folder" in err and len(err.strip().splitlines()) == 1
    assert list((tmp_path / "out.safetensors").iterdir()) == []  # nothing half-written left inside or beside
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.safetensors", "w.safetensors"]


def test_a_reader_that_goes_away_ends_the_command_quietly():
    """`xception summary --json | head`: no BrokenPipeError traceback, the exit status a shell expects."""
    proc = subprocess.Popen([sys.executable, "-m", "xception", "summary", "xception71", "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.read(100)  # far less than the 98 kB it writes: the pipe fills and the reader leaves
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141 and err == ""
