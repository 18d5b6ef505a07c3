"""The scripts in benchmarks/ run here with tiny models: the GPU ones on a CPU (``--device cpu --tiny``),
meant for a GPU machine with nothing to install and a few minutes to spare, so a broken script must show
up here first, not there; the CPU ones on a few updates or images.
"""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run_script(name: str, *args: str, timeout: int = 300, tiny: bool = True) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")}
    flags = ["--device", "cpu", "--tiny"] if tiny else []
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / name), *flags, *args],
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


def test_train_speed_times_each_variant(tmp_path):
    from test_data_fashion_mnist import write_fake_dataset

    write_fake_dataset(tmp_path / "fm", n_train=1200, n_test=10, gz=False)
    variants = ["model.width=0.125,model.middle_repeats=1", "model.width=0.25,model.middle_repeats=1"]
    out = run_script("train_speed.py", "--data-dir", str(tmp_path / "fm"), "2", *variants, tiny=False)
    rows = re.findall(r"^(\S+)\s+([\d,]+) params\s+(\d+) img/s", out, re.M)
    assert [r[0] for r in rows] == variants
    assert int(rows[1][1].replace(",", "")) > int(rows[0][1].replace(",", "")) and all(int(r[2]) > 0 for r in rows)


def test_bf16_drift_compares_both_fast_paths_with_the_plain_model(tmp_path):
    import xception
    from test_data_fashion_mnist import write_fake_dataset
    from xception.data.fashion_mnist import CLASSES
    from xception.preprocessing import Preprocessing

    write_fake_dataset(tmp_path / "fm", n_train=10, n_test=40, gz=False)
    model = xception.create_model("xception", num_classes=10, in_chans=1, stem="small", width=0.125,
                                  middle_repeats=1)
    weights = tmp_path / "m.safetensors"
    xception.save_weights(model, weights, class_names=CLASSES,
                          preprocessing=Preprocessing(input_size=28, crop_pct=1.0, interpolation="bilinear",
                                                      mean=(0.286,), std=(0.353,), channels=1))
    out = run_script("bf16_drift.py", str(weights), "--data-dir", str(tmp_path / "fm"), "--batch-size", "16",
                     "--json", str(tmp_path / "d.json"), tiny=False)
    report = json.loads((tmp_path / "d.json").read_text())
    paths = report["paths"]
    bf16 = [name for name in paths if name.startswith("fast bfloat16 (")]
    assert report["images"] == 40 and set(paths) == {"plain float32", "fast float32", *bf16}
    from xception.fast import native_bf16_preferred

    # the route optimize() takes here, and oneDNN's beside it where that is the native kernels
    assert len(bf16) == (2 if native_bf16_preferred() else 1)
    assert paths["fast float32"]["max_rel"] < 1e-4  # the float32 fast path computes the same logits
    assert all(0 < paths[name]["max_rel"] < 0.1 for name in bf16)  # bf16 rounds, but not wildly
    assert "fast bfloat16" in out and "CPU:" in out


def _small_fashion_model(path):
    """A random Fashion-MNIST-sized model (28 px, one channel) saved with its class names and preprocessing."""
    import xception
    from xception.data.fashion_mnist import CLASSES
    from xception.preprocessing import Preprocessing

    model = xception.create_model("xception", num_classes=10, in_chans=1, stem="small", width=0.125,
                                  middle_repeats=1)
    xception.save_weights(model, path, class_names=CLASSES,
                          preprocessing=Preprocessing(input_size=28, crop_pct=1.0, interpolation="bilinear",
                                                      mean=(0.286,), std=(0.353,), channels=1))
    return path


TINY_PAPER = ("--set", "model.width=0.125", "--set", "model.middle_repeats=1")


def test_deploy_check_measures_the_fast_path_against_pytorch(tmp_path):
    out = run_script("deploy_check.py", "--formats", "fast", "--skip-int8", *TINY_PAPER, "--input-size", "80",
                     "--out", str(tmp_path / "d.json"), tiny=False)
    report = json.loads((tmp_path / "d.json").read_text())
    rows = report["paper"]["rows"]
    assert list(rows) == ["torch", "fast"]  # the reference is always measured
    assert rows["torch"]["max_rel_diff"] == 0 and 0 <= rows["fast"]["max_rel_diff"] < 1e-4
    assert rows["fast"]["bytes"] == rows["torch"]["bytes"] > 0 and rows["fast"]["file"] == "model.safetensors"
    assert report["small_skipped"] == "--skip-int8" and "small" not in report
    assert report["cpu"] in out  # the CPU is named with the figures


@pytest.mark.slow
def test_deploy_check_exports_onnx_and_int8_and_checks_them_on_held_out_images(tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("executorch", reason="pip install 'xception[edge]'")
    from test_data_fashion_mnist import write_fake_dataset

    write_fake_dataset(tmp_path / "fm", n_train=40, n_test=30, gz=False)
    weights = _small_fashion_model(tmp_path / "small.safetensors")
    run_script("deploy_check.py", "--formats", "onnxruntime,executorch-int8", *TINY_PAPER, "--input-size", "80",
               "--int8-weights", str(weights), "--data-dir", str(tmp_path / "fm"), "--images", "16",
               "--held-out-images", "20", "--paper-calibration-images", "2", "--out", str(tmp_path / "d.json"),
               timeout=900, tiny=False)
    report = json.loads((tmp_path / "d.json").read_text())
    paper, small = report["paper"]["rows"], report["small"]["rows"]
    assert paper["onnxruntime"]["max_rel_diff"] < 1e-4 and paper["onnxruntime"]["bytes"] > 0
    assert paper["executorch-int8"]["bytes"] > 0 and "max_rel_diff" not in paper["executorch-int8"]
    int8 = small["executorch-int8"]
    assert int8["images"] == 20 and 0 <= int8["top1"] <= 100 and 0 <= int8["same_top1"] <= 100
    assert int8["export"]["int8"]["images"] == 20  # the export's own check ran on the same held-out images
    assert small["onnxruntime"]["max_rel_diff"] < 1e-4 and small["onnxruntime"]["changed"] == 0
    assert report["small"]["weights"] == str(weights)


@pytest.mark.slow
def test_serve_memory_measures_the_start_up_stages_and_a_real_server(tmp_path):
    pytest.importorskip("fastapi")
    weights = _small_fashion_model(tmp_path / "small.safetensors")
    out = run_script("serve_memory.py", "--weights", str(weights), "--no-paper", "--requests", "4", "--clients", "2",
                     "--large-uploads", "2", "--large-clients", "2", "--megapixels", "1", "--json",
                     str(tmp_path / "m.json"), tiny=False)
    report = json.loads((tmp_path / "m.json").read_text())
    result = report["models"]["given"]
    stages = [s["stage"] for s in result["child"]]
    assert stages == ["python", "import torch", "torchvision", "service modules", "model loaded", "warm-up"]
    rss = [s["VmRSS"] for s in result["child"]]
    assert all(v > 0 for v in rss) and rss[1] > rss[0]  # importing torch costs memory
    served = result["serving"]
    assert served["failed_statuses"] == [] and served["requests"] == 4 + 2 + 1 + 2
    assert set(served["stages"]) >= {"ready", "requests", "explain", "large uploads"}
    assert served["stages"]["ready"]["VmRSS"] > 0 and "ready and serving" in out


def test_int8_layers_times_every_kernel_call_and_openvinos_nodes(tmp_path):
    """The per-layer int8 profile: every GEMM layer of the paper's network timed with its multiply-adds, and
    OpenVINO's own profile of NNCF's model of the same network (the paper's model at 71 px, one pass)."""
    pytest.importorskip("nncf")
    from xception.quantize import native

    if not native.available():
        pytest.skip("no compiled int8 kernels for this CPU")
    out = run_script("int8_layers.py", "--batch", "1", "--input-size", "71", "--repeats", "1", "--json",
                     str(tmp_path / "layers.json"), tiny=False)
    report = json.loads((tmp_path / "layers.json").read_text())
    layers = report["ours"]["layers"]
    gemms = [entry for entry in layers.values() if entry["kind"] == "NativeQConv"]
    # stem 2; entry 3 modules of 2 + a shortcut; middle 8 × 3; exit 2 + a shortcut, then 2; the classifier
    assert len(gemms) == 2 + 3 * 3 + 8 * 3 + 3 + 2 + 1
    middle = layers["blocks.3.main.0"]
    assert middle["k"] == 728 and middle["macs"] == 5 * 5 * 728 * (728 + 9) and middle["gmac_s"] > 0
    assert sum(report["ours_by_stage_ms"].values()) == pytest.approx(sum(e["ms"] for e in layers.values()), abs=0.5)
    assert any(kernel.startswith("Convolution") for kernel in report["openvino_nncf"]["by_kernel"])
    assert "ours by stage" in out and "OpenVINO by kernel" in out


def test_fp32_layers_times_every_kernel_call_beside_onnxruntime_and_openvino(tmp_path):
    """The per-layer float32 profile: every native layer of the paper's network with its multiply-adds, ONNX
    Runtime's node profile and OpenVINO's of the same network's ONNX export (71 px, one pass, two threads)."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("openvino")
    from xception.fast import native

    if not native.available():
        pytest.skip("no compiled float32 kernels for this CPU")
    out = run_script("fp32_layers.py", "--batch", "1", "--input-size", "71", "--repeats", "2", "--threads", "2",
                     "--json", str(tmp_path / "layers.json"), tiny=False)
    report = json.loads((tmp_path / "layers.json").read_text())
    layers = report["ours"]["layers"]
    gemms = [entry for entry in layers.values() if entry["kind"] == "NativeConv"]
    # stem 2; entry 3 modules of 2 + a shortcut; middle 8 × 3; exit 2 + a shortcut, then 2 (the classifier is not one)
    assert len(gemms) == 2 + 3 * 3 + 8 * 3 + 3 + 2
    assert sum(entry["kind"] == "NativeMaxPool" for entry in layers.values()) == 4
    middle = layers["blocks.3.main.0"]
    assert middle["k"] == 728 and middle["macs"] == 5 * 5 * 728 * (728 + 9) and middle["gmac_s"] > 0
    assert all(entry["min_ms"] <= entry["ms"] for entry in layers.values())
    assert set(report["ours_by_stage_ms"]) == {"stem", "entry flow", "middle flow", "exit flow"}
    assert report["threads"] == 2 and report["clock"] == "wall"
    nodes = report["onnxruntime"]["nodes"]
    assert sum(name.endswith("(Conv)") for name in nodes) >= len(gemms)  # depthwise and 1×1 convs are apart there
    assert all(0 <= low <= mean for mean, low in nodes.values())
    assert any(kernel.startswith("Convolution") for kernel in report["openvino_f32"]["by_kernel"])
    assert "ONNX Runtime by operator" in out and "OpenVINO by kernel" in out


def test_bf16_layers_times_each_layer_both_ways_beside_openvino(tmp_path):
    """The per-layer bf16 profile of oneDNN's route: every oneDNN layer and native max-pool of the paper's network
    timed, each 1×1 conv also on oneDNN's other route, beside OpenVINO's bf16 profile (71 px, one pass)."""
    pytest.importorskip("openvino")
    from xception.fast.fused import mkldnn_bf16_available

    if not mkldnn_bf16_available():
        pytest.skip("oneDNN runs no bf16 kernels on this CPU")
    out = run_script("bf16_layers.py", "--batch", "1", "--input-size", "71", "--repeats", "1", "--route", "onednn",
                     "--json", str(tmp_path / "layers.json"), tiny=False)
    report = json.loads((tmp_path / "layers.json").read_text())
    layers = report["ours"]["layers"]
    kinds = [entry["kind"] for entry in layers.values()]
    # stem 2 convs; entry 3 × (2 depthwise, 2 pointwise, a pool, a shortcut); middle 8 × 3 × 2; exit 2 × 2 + a pool
    # + a shortcut, then 2 × 2
    assert kinds.count("conv (oneDNN)") == 2 and kinds.count("max-pool (native)") == 4
    assert kinds.count("depthwise (oneDNN conv)") == 3 * 2 + 8 * 3 + 2 + 2
    assert kinds.count("1x1 (oneDNN matmul)") == 3 * 3 + 8 * 3 + 3 + 2
    assert all(entry["conv_min_ms"] > 0 for entry in layers.values() if entry["kind"].startswith("1x1"))
    assert any(kernel.startswith("Convolution") for kernel in report["openvino"]["by_kernel"])
    assert "faster route per 1x1 conv" in out and "OpenVINO by kernel" in out


def test_bf16_layers_on_the_native_kernels_gives_each_layers_rate(tmp_path):
    """Where optimize() takes the native bf16 kernels, the profile times their calls: each fused step with its rate."""
    pytest.importorskip("openvino")
    from xception.fast import native_bf16_preferred

    if not native_bf16_preferred():
        pytest.skip("bf16 does not run on the native kernels here (no AVX-512 BF16, or AMX)")
    run_script("bf16_layers.py", "--batch", "1", "--input-size", "71", "--repeats", "1", "--json",
               str(tmp_path / "layers.json"), tiny=False)
    report = json.loads((tmp_path / "layers.json").read_text())
    kinds = [entry["kind"] for entry in report["ours"]["layers"].values()]
    assert "avx512-bf16" in report["ours"]["kernels"]
    # stem 2 convs and 4 strided shortcuts; 3 × 2 + 8 × 3 + 2 + 2 separable convs; 4 pools
    assert kinds.count("conv (native)") == 2 + 4 and kinds.count("max-pool (native)") == 4
    assert kinds.count("separable (native)") == 3 * 2 + 8 * 3 + 2 + 2
    assert all(entry["gmac_s"] > 0 for entry in report["ours"]["layers"].values() if "pool" not in entry["kind"])


def test_fp32_layers_ours_only_times_our_passes_without_the_peers(tmp_path):
    from xception.fast import native

    if not native.available():
        pytest.skip("no compiled float32 kernels for this CPU")
    out = run_script("fp32_layers.py", "--batch", "1", "--input-size", "71", "--repeats", "2", "--ours-only",
                     "--json", str(tmp_path / "layers.json"), tiny=False)
    report = json.loads((tmp_path / "layers.json").read_text())
    assert report["onnxruntime"] is None and report["openvino_f32"] is None
    assert len(report["ours"]["layers"]) == 2 + 3 * 4 + 8 * 3 + 4 + 2
    assert "ONNX Runtime" not in out


def test_replay_ab_times_both_copies_and_checks_their_bits(tmp_path):
    from xception.fast import native

    if not native.available():
        pytest.skip("no compiled float32 kernels for this CPU")
    out = run_script("replay_ab.py", "--batch", "2", "--input-size", "71", "--repeats", "3", "--threads", "1",
                     "--json", str(tmp_path / "replay.json"), tiny=False)
    report = json.loads((tmp_path / "replay.json").read_text())
    assert report["same_bits"] is True
    assert {len(t) for t in report["times_ms"].values()} == {3}
    passes = report["passes"]
    assert 0 < passes["replay"]["min_ms"] <= passes["replay"]["median_ms"]
    assert passes["layer by layer"]["alone_in_kernels_median_ms"] > 0
    assert "the layer-by-layer speed" in out


def test_replay_ab_of_the_int8_network_checks_bits_and_times_the_input_quantisation(tmp_path):
    from xception.quantize import native

    if not native.available():
        pytest.skip("no compiled int8 kernels for this CPU")
    out = run_script("replay_ab.py", "--int8", "--batch", "1", "--input-size", "71", "--repeats", "3", "--threads",
                     "1", "--json", str(tmp_path / "replay.json"), tiny=False)
    report = json.loads((tmp_path / "replay.json").read_text())
    assert report["same_bits"] is True and report["kernels"].startswith(f"int8 {native.isa()}, ")
    assert report["passes"]["layer by layer"]["alone_in_kernels_median_ms"] > 0
    assert set(report["input_quantisation_ms"]) == {"pytorch_ops_then_nhwc_copy", "kernel"}
    assert "the input's quantisation" in out


@pytest.mark.slow  # builds the kernel library twice
def test_kernel_ab_builds_each_variant_and_gives_the_same_logits(tmp_path):
    """Two builds of the kernel library that differ only in loop order and task split compute the same bits,
    and both are timed layer by layer in the same passes, on two threads."""
    from xception.fast import native

    if not native.available():
        pytest.skip("no compiled kernels for this CPU")
    out = run_script("kernel_ab.py", "--variant", "base=", "--variant", "all=-DXC_GROUP=0 -DXC_TASKS=8", "--batch",
                     "1", "--input-size", "71", "--repeats", "2", "--threads", "2", "--isa", "avx2", "--json",
                     str(tmp_path / "ab.json"), tiny=False, timeout=900)
    report = json.loads((tmp_path / "ab.json").read_text())
    assert report["variants"] == {"base": "", "all": "-DXC_GROUP=0 -DXC_TASKS=8"} and report["threads"] == 2
    assert report["isa"] == "avx2"  # the AVX2 kernels, whatever this CPU's best
    for result in report["results"].values():
        assert result["max_err"] == 0.0
        assert result["middle flow"]["min"] <= result["middle flow"]["median"]
        assert result["total"]["min"] >= result["middle flow"]["min"] > 0
        assert "blocks.3.main.0" in result and "stem" in result
    assert "max err vs base: all 0.0e+00" in out


@pytest.mark.slow  # builds the kernel library twice
def test_kernel_ab_of_the_int8_network_gives_the_same_logits(tmp_path):
    """Two builds, one of them the committed kernels (@HEAD) copying int8 patch rows pixel by pixel, compute the
    same int8 network, timed layer by layer."""
    from xception.quantize import native

    if not native.available():
        pytest.skip("no compiled int8 kernels for this CPU")
    run_script("kernel_ab.py", "--int8", "--variant", "base=", "--variant", "pixels=@HEAD -DXC_QROWS=0", "--batch", "1",
               "--input-size", "71", "--repeats", "2", "--json", str(tmp_path / "ab.json"), tiny=False, timeout=900)
    report = json.loads((tmp_path / "ab.json").read_text())
    assert report["int8"] is True and report["results"]["pixels"]["max_err"] == 0.0
    assert {"stem.0", "stem.1", "head", "blocks.3.main.0"} <= set(report["results"]["base"])


@pytest.mark.slow  # builds the kernel library twice
def test_kernel_ab_of_the_bf16_network_gives_the_same_logits(tmp_path):
    """Two builds of the bf16 kernels, one rounding C a vector at a time, compute the same bf16 network."""
    from xception.fast import native

    if not native.bf16_available():
        pytest.skip("no bf16 kernels for this CPU")
    run_script("kernel_ab.py", "--bf16", "--variant", "base=", "--variant", "vectors=-DXC_BF16_PAIRS=0", "--batch", "1",
               "--input-size", "71", "--repeats", "2", "--json", str(tmp_path / "ab.json"), tiny=False, timeout=900)
    report = json.loads((tmp_path / "ab.json").read_text())
    assert report["bf16"] is True and report["results"]["vectors"]["max_err"] == 0.0
    assert {"stem.0", "blocks.3.main.0"} <= set(report["results"]["base"])


@pytest.mark.slow  # compiles a C++ program
@pytest.mark.parametrize("flags", [[], ["-DMICRO_VNNI"], ["-DMICRO_VNNI", "-DXC_QDW_QUADS=0"]],
                         ids=["avx2-octets", "vnni", "vnni-float-depthwise"])
def test_the_int8_microbenchmark_builds_against_the_kernels_and_reports_each_part(tmp_path, flags):
    """benchmarks/int8_micro.cpp includes the kernels' sources as they are: it must still compile with them and
    print every figure it promises (GEMM rates that are positive numbers, not nan), for either kernel family."""
    from xception.quantize import native

    compiler = shutil.which("g++")
    if compiler is None or native.isa() == "none":
        pytest.skip("needs g++ and a CPU with the AVX2 int8 kernels")
    if flags and native.isa() != "avx512-vnni":
        pytest.skip("the VNNI kernels need a CPU with AVX-512 VNNI")
    exe = tmp_path / "int8_micro"
    subprocess.run([compiler, "-O3", "-std=c++17", "-fno-math-errno", "-ffp-contract=off", *flags, "-I",
                    str(ROOT / "src/xception/fast/csrc"), str(ROOT / "benchmarks/int8_micro.cpp"), "-o", str(exe)],
                   check=True, capture_output=True, timeout=300)
    out = subprocess.run([str(exe), "1"], check=True, capture_output=True, text=True, timeout=300).stdout
    rates = [float(r) for r in re.findall(r"([\d.]+) GMAC/s", out)]
    depthwise = re.findall(r"channels: (-?\d+\.\d+) ns", out)  # a difference of two timings
    assert len(rates) == 4 and all(r > 0 for r in rates), out
    assert len(depthwise) == 4, out
    assert re.search(r"FMA: [\d.]+ G instructions/s", out) and out.count(" -> ") == 7, out
    chain = re.search(r"in a chain, weights cold: ([\d.]+) ms a conv", out)
    assert chain and float(chain.group(1)) > 0, out
