"""CUDA graphs for fixed batch shapes: capture the forward pass once, then replay it as one launch.

A forward pass of Xception launches a few hundred kernels; at small batches the CPU cannot issue them as
fast as the GPU runs them. A captured graph replays all of them with one call. It reads its input from
and writes its output to fixed buffers, so each new input is copied in, and the output copied out (the
next replay would overwrite it).
"""

from __future__ import annotations

from collections.abc import Callable

import torch


class CudaGraphRunner:
    """Runs ``fn`` through one captured CUDA graph per (shape, dtype, device, layout) of input."""

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor], warmup: int = 3) -> None:
        self.fn = fn
        self.warmup = warmup
        self._graphs: dict[tuple, tuple[torch.cuda.CUDAGraph, torch.Tensor, torch.Tensor]] = {}

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if not x.is_cuda:
            raise ValueError("CUDA graphs need CUDA tensors")
        key = (tuple(x.shape), x.dtype, x.device, x.stride())
        entry = self._graphs.get(key)
        if entry is None:
            entry = self._graphs[key] = self._capture(x)
        graph, static_in, static_out = entry
        static_in.copy_(x)
        graph.replay()
        return static_out.clone()

    def _capture(self, x: torch.Tensor) -> tuple[torch.cuda.CUDAGraph, torch.Tensor, torch.Tensor]:
        static_in = x.clone()
        # Warm up on a side stream, as capture requires: lazy initialisation (cuDNN plans, Triton and
        # Inductor compilation, workspace allocation) must not happen inside the capture.
        stream = torch.cuda.Stream(device=x.device)
        stream.wait_stream(torch.cuda.current_stream(x.device))
        with torch.cuda.stream(stream):
            for _ in range(self.warmup):
                self.fn(static_in)
        torch.cuda.current_stream(x.device).wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_out = self.fn(static_in)
        return graph, static_in, static_out

    def reset(self) -> None:
        """Drop every captured graph (and the memory it holds)."""
        self._graphs.clear()
