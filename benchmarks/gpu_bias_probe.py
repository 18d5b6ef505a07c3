"""How should the fast path add its folded-BatchNorm biases on a GPU? Three ways, timed end to end.

    PYTHONPATH=src python benchmarks/gpu_bias_probe.py            # on a GPU machine
    PYTHONPATH=src python benchmarks/gpu_bias_probe.py --device cpu --tiny

The GPU profile (benchmarks/NOTES.md) showed ``F.conv2d(x, w, bias)`` on channels_last bf16 tensors adding
the bias in a broadcasting, non-vectorised elementwise kernel that costs more than the BatchNorm it
replaced. The policies compared on ``legacy_xception`` (bf16, batch 256, 299 px):

* ``conv-bias``   the current path: ``F.conv2d(x, w, b)``, then in-place ReLU / residual add;
* ``bn-kernel``   ``F.conv2d(x, w)`` then the bias through PyTorch's channels_last BatchNorm kernel
                  (mean 0, variance 1, eps 0: exactly ``y + b``);
* ``cudnn-fused`` cuDNN's fused convolution + bias (+ residual) + ReLU where a ReLU follows, else ``bn-kernel``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import torch
import torch.nn.functional as F

import xception
from xception.bench import calibrate_batch_norms, relative_error
from xception.fast.fused import FusedConv
from xception.runtime import median_ms

ORIGINAL = FusedConv.forward


def _bias_by_bn(y: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    ones = torch.ones_like(bias)
    return F.batch_norm(y, torch.zeros_like(bias), ones - 1e-5, ones, bias, False, 0.0, 1e-5)


def bn_kernel(self: FusedConv, x: torch.Tensor, add: torch.Tensor | None = None) -> torch.Tensor:
    if self.pad is not None:
        x = self.pad(x)
    if self.relu_in:
        x = F.relu(x)
    y = F.conv2d(x, self.weight, None, self.stride, self.padding, self.dilation, self.groups)
    if self.bias is not None:
        y = _bias_by_bn(y, self.bias)
    if add is not None:
        y = y.add_(add)
    return y.relu_() if self.relu_out else y


def cudnn_fused(self: FusedConv, x: torch.Tensor, add: torch.Tensor | None = None) -> torch.Tensor:
    if not self.relu_out or self.bias is None or x.device.type != "cuda":
        return bn_kernel(self, x, add)
    if self.pad is not None:
        x = self.pad(x)
    if self.relu_in:
        x = F.relu(x)
    args = (list(self.stride), list(self.padding), list(self.dilation), self.groups)
    if add is None:
        return torch.cudnn_convolution_relu(x, self.weight, self.bias, *args)
    return torch.cudnn_convolution_add_relu(x, self.weight, add.contiguous(memory_format=torch.channels_last),
                                            1.0, self.bias, *args)


POLICIES = {"conv-bias": ORIGINAL, "bn-kernel": bn_kernel, "cudnn-fused": cudnn_fused}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--tiny", action="store_true")
    args = parser.parse_args()
    device = torch.device(args.device)
    size, batch = (71, 2) if args.tiny else (299, 256)
    opts = {"width": 0.125, "middle_repeats": 1} if args.tiny else {}
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    torch.manual_seed(0)
    model = xception.create_model("legacy_xception", **opts).eval()
    calibrate_batch_norms(model, torch.randn(2, 3, size, size))
    x = torch.randn(batch, 3, size, size).to(device)
    with torch.inference_mode():
        reference = model.to(device)(x[:8]).float().cpu()
    fast = xception.optimize(model, device=device, dtype=dtype, kernels="torch")
    xf = x.to(dtype).contiguous(memory_format=torch.channels_last)
    plain = model.to(memory_format=torch.channels_last)
    xc = x.contiguous(memory_format=torch.channels_last)

    def eager() -> torch.Tensor:
        with torch.autocast(device.type, dtype=dtype, enabled=device.type == "cuda"):
            return plain(xc)

    print(f"| policy | ms / batch of {batch} | img/s | max err (8 images, vs float32) |")
    print("|---|---:|---:|---:|")
    with torch.inference_mode():
        ms = median_ms(eager, device, 3 if args.tiny else 10, warmup=3)
    print(f"| plain model, autocast | {ms:.2f} | {batch / ms * 1e3:,.0f} | |", flush=True)
    for name, forward in POLICIES.items():
        FusedConv.forward = forward
        try:
            with torch.inference_mode():
                err = relative_error(fast(xf[:8]), reference)
                ms = median_ms(lambda: fast(xf), device, 3 if args.tiny else 10, warmup=3)
            print(f"| {name} | {ms:.2f} | {batch / ms * 1e3:,.0f} | {err:.1e} |", flush=True)
        except Exception as e:  # a policy this PyTorch or GPU cannot run
            print(f"| {name} | failed: {type(e).__name__}: {str(e)[:80]} | | |", flush=True)
        finally:
            FusedConv.forward = ORIGINAL
    return 0


if __name__ == "__main__":
    sys.exit(main())
