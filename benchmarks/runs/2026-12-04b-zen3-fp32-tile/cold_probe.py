"""The middle flow's separable conv (M=361, K=N=728, batch 1, 1 thread) with its weights warm (one set, called
again and again) or cold (24 sets called in turn, 50 MB: each call's weights come from DRAM, as in the network),
native kernels against ONNX Runtime (one session per set)."""
import ctypes
import io
import sys
import time
import warnings

import numpy as np
import onnxruntime as ort
import torch

from xception.fast import native as nat

warnings.filterwarnings("ignore")
torch.set_num_threads(1)
lib = nat._library()
nat._set_threads(lib)
reps = int(sys.argv[1]) if len(sys.argv) > 1 else 10
S, C, SETS = 19, 728, 24
torch.manual_seed(0)
x = torch.randn(1, C, S, S).contiguous(memory_format=torch.channels_last)
out = torch.empty_like(x)
ws = [torch.randn(C, C) * 0.03 for _ in range(SETS)]
dws = [torch.randn(9, C) * 0.1 for _ in range(SETS)]
packed = [nat._pack(w) for w in ws]
bias_values = torch.randn(C)
bias = nat._padded_bias(bias_values, C)
ops = [nat._Conv(nat.SEPARABLE, 1, S, S, C, S, S, 3, 1, 1, 1, 1, 1, dws[i].data_ptr(), None, 0, C, C,
                 packed[i].data_ptr(), bias.data_ptr(), None, 0) for i in range(SETS)]


class SEP(torch.nn.Module):
    def __init__(s, i):
        super().__init__()
        s.d = torch.nn.Conv2d(C, C, 3, padding=1, groups=C, bias=False)
        s.c = torch.nn.Conv2d(C, C, 1)
        s.d.weight.data = dws[i].t().reshape(C, 1, 3, 3).clone()
        s.c.weight.data = ws[i].view(C, C, 1, 1).clone()
        s.c.bias.data = bias_values.clone()

    def forward(s, v):
        return s.c(s.d(torch.relu(v)))


so = ort.SessionOptions()
so.intra_op_num_threads = 1
so.inter_op_num_threads = 1
sessions = []
for i in range(SETS):
    buf = io.BytesIO()
    torch.onnx.export(SEP(i), (x.contiguous(),), buf, dynamo=False, opset_version=17)
    sessions.append(ort.InferenceSession(buf.getvalue(), so, providers=["CPUExecutionProvider"]))
xn = x.contiguous().numpy()
name = sessions[0].get_inputs()[0].name
# the two compute the same thing
ref = sessions[3].run(None, {name: xn})[0]
lib.xc_conv_forward(ctypes.byref(ops[3]), x.data_ptr(), out.data_ptr())
print("max |ours - ort| =", float(np.abs(out.contiguous().numpy() - ref).max()))


def ours(i):
    lib.xc_conv_forward(ctypes.byref(ops[i]), x.data_ptr(), out.data_ptr())


def theirs(i):
    sessions[i].run(None, {name: xn})


def timed(f, cold):
    ts = []
    for _ in range(reps):
        for i in range(SETS):
            t = time.perf_counter()
            f(i if cold else 0)
            ts.append(time.perf_counter() - t)
    ts.sort()
    return ts[0] * 1e3, ts[len(ts) // 2] * 1e3


for cold in (False, True):
    for _label, f in (("ours", ours), ("onnxruntime", theirs)):
        timed(f, cold)  # warm-up
    res = {label: timed(f, cold) for label, f in (("ours", ours), ("onnxruntime", theirs))}
    for label, (mn, md) in res.items():
        print(f"{'cold' if cold else 'warm'} weights  {label:12s} min {mn:.3f} ms  median {md:.3f} ms")
