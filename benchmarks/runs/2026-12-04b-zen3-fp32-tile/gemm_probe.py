"""Pointwise 1x1 conv (M=361, K=N=728) and separable conv of the middle flow, native kernels, 1 thread:
min time per call, GMAC/s; torch.mm of the same GEMM as a reference."""
import ctypes
import io
import sys
import time

import onnxruntime as ort
import torch

from xception.fast import native as nat

torch.set_num_threads(1)
lib = nat._library()
nat._set_threads(lib)
reps = int(sys.argv[1]) if len(sys.argv) > 1 else 200
M_SIDE, C = 19, 728
x = torch.randn(1, C, M_SIDE, M_SIDE).contiguous(memory_format=torch.channels_last)
w = torch.randn(C, C) * 0.03
packed = nat._pack(w)
bias = nat._padded_bias(torch.randn(C), C)
dw = torch.randn(9, C) * 0.1
out = torch.empty_like(x)


def op(kind):
    return nat._Conv(kind, 1, M_SIDE, M_SIDE, C, M_SIDE, M_SIDE, 3 if kind == nat.SEPARABLE else 1, 1, 1,
                     1 if kind == nat.SEPARABLE else 0, 1 if kind == nat.SEPARABLE else 0, 1,
                     dw.data_ptr() if kind == nat.SEPARABLE else None, None, 0, C, C, packed.data_ptr(),
                     bias.data_ptr(), None, 0)


def best(f):
    for _ in range(10):
        f()
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        f()
        ts.append(time.perf_counter() - t)
    ts.sort()
    return ts[0], ts[len(ts) // 2]


macs = M_SIDE * M_SIDE * C * C
for name, kind in (("pointwise", nat.POINTWISE), ("separable", nat.SEPARABLE)):
    o = op(kind)
    mn, md = best(lambda o=o: lib.xc_conv_forward(ctypes.byref(o), x.data_ptr(), out.data_ptr()))
    print(f"{name:10s} min {mn*1e3:.3f} ms med {md*1e3:.3f} ms  {macs/mn/1e9:.1f} GMAC/s")
a = x.permute(0, 2, 3, 1).reshape(-1, C).contiguous()
b = w.t().contiguous()
mn, md = best(lambda: torch.mm(a, b))
print(f"torch.mm   min {mn*1e3:.3f} ms med {md*1e3:.3f} ms  {macs/mn/1e9:.1f} GMAC/s")


class PW(torch.nn.Module):
    def __init__(s):
        super().__init__()
        s.c = torch.nn.Conv2d(C, C, 1)
        s.c.weight.data = w.view(C, C, 1, 1).clone()

    def forward(s, v):
        return s.c(v)


class SEP(torch.nn.Module):
    def __init__(s):
        super().__init__()
        s.d = torch.nn.Conv2d(C, C, 3, padding=1, groups=C, bias=False)
        s.c = torch.nn.Conv2d(C, C, 1)

    def forward(s, v):
        return s.c(s.d(torch.relu(v)))


for name, mod in (("ort pointwise", PW()), ("ort separable", SEP())):
    buf = io.BytesIO()
    torch.onnx.export(mod, (x.contiguous(),), buf, dynamo=False, opset_version=17)
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    s = ort.InferenceSession(buf.getvalue(), so, providers=["CPUExecutionProvider"])
    xn = x.contiguous().numpy()
    nm = s.get_inputs()[0].name
    mn, md = best(lambda s=s, nm=nm, xn=xn: s.run(None, {nm: xn}))
    print(f"{name:14s} min {mn*1e3:.3f} ms med {md*1e3:.3f} ms  {macs/mn/1e9:.1f} GMAC/s")
