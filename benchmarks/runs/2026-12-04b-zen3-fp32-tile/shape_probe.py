"""Separable convs of the entry and middle flows at batch 1, 1 thread, isolated: ours as a plain 1×1 GEMM
(POINTWISE) and with its depthwise prologue (SEPARABLE), against ONNX Runtime's 1×1 conv and depthwise conv
alone (each a one-node model; their NCHWc reorders included). Minimum and median ms over the calls."""
import ctypes
import io
import sys
import time
import warnings

import onnxruntime as ort
import torch

from xception.fast import native as nat

warnings.filterwarnings("ignore")
torch.set_num_threads(1)
lib = nat._library()
nat._set_threads(lib)
reps = int(sys.argv[1]) if len(sys.argv) > 1 else 30
so = ort.SessionOptions()
so.intra_op_num_threads = 1
so.inter_op_num_threads = 1


def best(f):
    for _ in range(3):
        f()
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        f()
        ts.append(time.perf_counter() - t)
    ts.sort()
    return ts[0] * 1e3, ts[len(ts) // 2] * 1e3


def session(mod, x):
    buf = io.BytesIO()
    torch.onnx.export(mod, (x,), buf, dynamo=False, opset_version=17)
    s = ort.InferenceSession(buf.getvalue(), so, providers=["CPUExecutionProvider"])
    xn = x.numpy()
    name = s.get_inputs()[0].name
    return lambda: s.run(None, {name: xn})


def ours(op, x, out):
    """One prepared native call of ``op`` from ``x`` into ``out``, as a zero-argument callable for ``best``."""
    return lambda: lib.xc_conv_forward(ctypes.byref(op), x.data_ptr(), out.data_ptr())


SHAPES = ((147, 64, 128), (147, 128, 128), (74, 128, 256), (74, 256, 256), (37, 728, 728), (19, 728, 728))
for side, cin, cout in SHAPES:
    torch.manual_seed(0)
    x = torch.randn(1, cin, side, side).contiguous(memory_format=torch.channels_last)
    out = torch.empty(1, cout, side, side).contiguous(memory_format=torch.channels_last)
    w = torch.randn(cout, cin) * 0.05
    dw = torch.randn(9, cin) * 0.1
    packed = nat._pack(w)
    bias = nat._padded_bias(torch.randn(cout), cout)
    ops = {kind: nat._Conv(kind, 1, side, side, cin, side, side, 3 if kind == nat.SEPARABLE else 1, 1, 1,
                           int(kind == nat.SEPARABLE), int(kind == nat.SEPARABLE), 1,
                           dw.data_ptr() if kind == nat.SEPARABLE else None, None, 0, cin, cout, packed.data_ptr(),
                           bias.data_ptr(), None, 0) for kind in (nat.POINTWISE, nat.SEPARABLE)}
    pw = torch.nn.Conv2d(cin, cout, 1)
    dconv = torch.nn.Conv2d(cin, cin, 3, padding=1, groups=cin, bias=False)
    xc = x.contiguous()
    res = {
        "ours 1x1": best(ours(ops[nat.POINTWISE], x, out)),
        "ours sep": best(ours(ops[nat.SEPARABLE], x, out)),
        "ort 1x1": best(session(pw, xc)),
        "ort dw": best(session(dconv, xc)),
    }
    macs = side * side * cin * cout
    print(f"{side}x{side} {cin}->{cout}: " + "  ".join(f"{k} {v[0]:.2f}/{v[1]:.2f}" for k, v in res.items())
          + f"   GEMM GMAC/s ours {macs / res['ours 1x1'][0] / 1e6:.1f} ort {macs / res['ort 1x1'][0] / 1e6:.1f}",
          flush=True)
