"""The GPU scripts in benchmarks/ run their own code on a CPU with a tiny model (``--device cpu --tiny``).

They are meant for a GPU machine with nothing to install and a few minutes to spare, so a broken script
must show up here first, not there.
"""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run_script(name: str, *args: str, timeout: int = 300) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / name), "--device", "cpu", "--tiny", *args],
                          env=env, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return proc.stdout


def test_gpu_check_correctness_section_passes_and_writes_its_summary(tmp_path):
    out = run_script("gpu_check.py", "--out", str(tmp_path), "--sections", "correctness", "--budget", "200")
    assert re.search(r"correctness: (\d+)/\1 fast-path checks pass", out)
    report = json.loads((tmp_path / "correctness.json").read_text())
    assert report["checks"] and all(c["status"] == "PASS" for c in report["checks"])
    assert (tmp_path / "summary.md").read_text().startswith("# GPU check summary")


def test_gpu_profile_groups_kernel_time_for_each_contender(tmp_path):
    run_script("gpu_profile.py", "--out", str(tmp_path))
    result = json.loads((tmp_path / "profile.json").read_text())
    assert set(result["profiles"]) == {"eager (autocast)", "fast, torch kernels"}
    for profile in result["profiles"].values():
        assert profile["launches"] > 0 and profile["total_ms"] > 0
        assert sum(profile["families_ms"].values()) == pytest.approx(profile["total_ms"], rel=1e-2, abs=1e-2)
    assert len(result["timings"]) == 4  # two contenders, cudnn.benchmark off and on


def test_bias_probe_policies_compute_the_same_logits():
    out = run_script("gpu_bias_probe.py")
    rows = {m.group(1): float(m.group(2)) for m in re.finditer(r"^\| ([\w-]+) \| [\d.]+ \| [\d,]+ \| ([\d.e+-]+) \|$",
                                                               out, re.MULTILINE)}
    assert set(rows) == {"conv-bias", "bn-kernel", "cudnn-fused"}  # cudnn-fused falls back to bn-kernel on CPU
    assert all(err <= 1e-5 for err in rows.values())  # float32 on CPU: the policies differ only by rounding
