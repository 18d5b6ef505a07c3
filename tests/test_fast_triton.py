"""The Triton depthwise kernel against PyTorch, run on CPU by Triton's interpreter (``TRITON_INTERPRET=1``).

Triton decides at import time whether kernels are interpreted, so each check runs in a fresh Python
process with the variable set; it prints its measured errors as JSON and the test judges them here.
"""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytest.importorskip("triton")

SRC = str(Path(__file__).resolve().parents[1] / "src")


def interpret(code: str, timeout: int = 600) -> object:
    path = SRC + os.pathsep + os.environ.get("PYTHONPATH", "")
    env = {**os.environ, "TRITON_INTERPRET": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": path}
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env, capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


KERNEL_CASES = """
import json
import torch
import torch.nn.functional as F
from xception.fast import triton_depthwise as td
from xception.layers import tf_same_padding

assert td.available("cpu") and td.interpreting()
torch.manual_seed(0)
cases = [
    # n, c, h, w, stride, dilation, pads (top, bottom, left, right), relu_in, relu_out, dtype, layout
    (2, 24, 9, 11, 1, 1, (1, 1, 1, 1), False, False, "float32", "channels_last"),
    (2, 70, 10, 9, 2, 1, tf_same_padding(10, 3, 2) + tf_same_padding(9, 3, 2), True, False, "float32", "channels_last"),
    (1, 130, 7, 7, 1, 2, (2, 2, 2, 2), True, True, "float32", "channels_last"),
    (2, 40, 8, 8, 2, 1, (1, 1, 1, 1), False, True, "float32", "nchw"),
    (2, 72, 8, 8, 1, 1, (1, 1, 1, 1), True, True, "bfloat16", "channels_last"),
    (2, 40, 9, 9, 2, 1, (0, 1, 0, 1), True, False, "float16", "channels_last"),
]
out = []
for n, c, h, w, stride, dil, pads, relu_in, relu_out, dtype, layout in cases:
    dt = getattr(torch, dtype)
    x = torch.randn(n, c, h, w).to(dt)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    weight, bias = torch.randn(c, 1, 3, 3), torch.randn(c)
    y = td.depthwise_conv2d(x, weight, bias, stride=stride, dilation=dil, padding=pads,
                            relu_in=relu_in, relu_out=relu_out)
    ref = x.double()
    ref = ref.relu() if relu_in else ref
    ref = F.conv2d(F.pad(ref, (pads[2], pads[3], pads[0], pads[1])), weight.double(), bias.double(), stride, 0, dil, c)
    ref = ref.relu() if relu_out else ref
    # Half-precision outputs: the kernel rounds a float32 sum once, as rounding the exact result would.
    err = (y.double() - ref.to(dt).double()).abs().max().item()
    out.append({"dtype": dtype, "shape_ok": list(y.shape) == list(ref.shape),
                "channels_last": y.is_contiguous(memory_format=torch.channels_last), "err": err,
                "scale": ref.abs().max().item()})
print(json.dumps(out))
"""


def test_the_triton_depthwise_kernel_matches_pytorch_in_every_mode():
    results = interpret(KERNEL_CASES)
    tolerance = {"float32": 1e-5, "bfloat16": 2**-7, "float16": 2**-10}
    for r in results:
        assert r["shape_ok"] and r["channels_last"], r
        assert r["err"] <= tolerance[r["dtype"]] * max(1.0, r["scale"]), r


MODEL_CASE = """
import json
import torch
import xception
from xception.fast import triton_depthwise

torch.manual_seed(0)
out = []
for name, options, size in {cases}:
    model = xception.create_model(name, width=0.125, middle_repeats=1, num_classes=10, **options).eval()
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.3)
            m.running_var.uniform_(0.5, 2.0)
    x = torch.randn(1, 3, size, size)
    with torch.no_grad():
        ref = model(x)
    fast = xception.optimize(model, kernels="triton")
    triton_convs = sum(c.backend == "triton" for c in fast.program.convs())
    err = ((fast(x) - ref).abs().max() / ref.abs().max()).item()
    out.append({{"name": name, "err": err, "triton_convs": triton_convs,
                 "depthwise": sum(c.depthwise for c in fast.program.convs())}})
print(json.dumps(out))
"""


def _check_models(cases: list) -> None:
    for r in interpret(MODEL_CASE.format(cases=cases)):
        assert r["triton_convs"] == r["depthwise"] > 0, r
        assert r["err"] <= 1e-4, r


def test_a_small_model_runs_its_depthwise_convs_in_triton_and_agrees():
    _check_models([("xception", {"stem": "small"}, 16)])  # TF padding, the pre-ReLUs fused into the kernel


@pytest.mark.slow
def test_every_family_runs_its_depthwise_convs_in_triton_and_agrees():
    _check_models([("xception", {}, 75), ("legacy_xception", {"output_stride": 8}, 71),
                   ("xception41", {"padding": "tf"}, 65), ("xception41p", {}, 64)])
