"""Replaying the native kernels' calls: the fast path's forward pass as one loop of prepared calls.

On the native kernels a forward pass of the paper's network is 44 kernel calls. Between two of them Python
works out the layer's padding and output shape, allocates the output and fills in the call's arguments: a
batch-1 pass replayed is 1.04–1.06× faster on a 2-core Zen 3 (benchmarks/NOTES.md). As a CUDA graph does on a GPU, the
first pass of each input shape is recorded; later passes of that shape replay the recorded calls with their
arguments ready, into activation buffers planned once (a buffer takes a new value once the value in it has
been read for the last time). Same kernels, same inputs: the same bits as the pass it replaces.

A program with a step the kernels do not run (a bfloat16 program's oneDNN convs on an AMX CPU, say) is not
replayable: its shapes run step by step, as before. The int8 network replays the same way
(:class:`NativeReplay`'s ``prepare``, ``features`` and ``head``: its kernels start from the input's codes and
end in codes).
"""

from __future__ import annotations

import ctypes
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from . import native

INPUT = -1  # the source of a call's operand that is the pass's input


@dataclass
class _Step:
    call: Callable[..., int]
    op: ctypes.Structure
    source: int  # the input: a buffer's address, or INPUT
    output: int  # a buffer's address
    residual_is_input: bool  # the residual operand is the pass's input (set on each pass)
    checked: bool  # returns a status (the convs; the pools cannot fail)


class _Plan:
    """The recorded calls of one input shape, their buffers, and where the features come out."""

    def __init__(self, steps: list[_Step], buffers: list[torch.Tensor], features: torch.Tensor,
                 isa: Callable[[], str]) -> None:
        self.steps, self.buffers, self.features = steps, buffers, features
        self.isa, self._isa_now = isa(), isa

    def run(self, x: torch.Tensor) -> torch.Tensor:
        if self._isa_now() != self.isa:
            raise RuntimeError(f"calls recorded for {self.isa} kernels, but {self._isa_now()} ones are in use")
        address = x.data_ptr()
        lib = native._library()
        with native._lock:
            native._set_threads(lib)
            for step in self.steps:
                if step.residual_is_input:
                    step.op.residual = address
                source = address if step.source == INPUT else step.source
                status = step.call(ctypes.byref(step.op), source, step.output)
                if step.checked and status:
                    raise MemoryError("the CPU kernels could not allocate their scratch memory")
        return self.features

    @classmethod
    def build(cls, calls: list[native.Call], x: torch.Tensor, features: torch.Tensor,
              isa: Callable[[], str] = native.isa) -> _Plan | None:
        """The plan of a recorded pass, or None if something other than the kernels made one of its operands;
        ``isa`` names the kernels in use (a plan refuses to run on others)."""
        made: dict[int, int] = {}  # output address -> the call that wrote it
        reads: list[list[int]] = []  # per call: the calls whose outputs it reads (INPUT for the pass's input)

        def source(t: torch.Tensor) -> int | None:
            if t.data_ptr() == x.data_ptr() and t.shape == x.shape and t.stride() == x.stride():
                return INPUT
            i = made.get(t.data_ptr())
            if i is None or t.shape != calls[i].out.shape or t.stride() != calls[i].out.stride():
                return None
            return i

        for i, c in enumerate(calls):
            found = [source(t) for t in (c.x, c.add) if t is not None]
            if None in found:
                return None
            reads.append(found)  # type: ignore[arg-type]
            made[c.out.data_ptr()] = i
        last = source(features)
        if not calls or last is None or last == INPUT:
            return None

        # Buffers: each call's output takes the smallest free buffer of its type that holds it; a value's buffer is
        # freed after the call that reads it last (never before the reading call has written its own output).
        last_read = {i: i for i in range(len(calls))}
        for i, found in enumerate(reads):
            for j in found:
                if j != INPUT:
                    last_read[j] = i
        last_read[last] = len(calls)  # the features outlive the pass
        buffers: list[torch.Tensor] = []
        free: list[int] = []
        home: dict[int, int] = {}
        for i, c in enumerate(calls):
            size = c.out.numel()
            fits = [b for b in free if buffers[b].numel() >= size and buffers[b].dtype == c.out.dtype]
            if fits:
                b = min(fits, key=lambda b: buffers[b].numel())
                free.remove(b)
            else:
                b = len(buffers)
                buffers.append(torch.empty(size, dtype=c.out.dtype))
            home[i] = b
            free += [home[j] for j in range(i + 1) if last_read[j] == i]

        steps = []
        for i, c in enumerate(calls):
            src, add = reads[i][0], (reads[i][1] if c.add is not None else None)
            if add is not None and add != INPUT:
                c.op.residual = buffers[home[add]].data_ptr()
            steps.append(_Step(c.call, c.op, INPUT if src == INPUT else buffers[home[src]].data_ptr(),
                               buffers[home[i]].data_ptr(), add == INPUT, c.checked))
        out = calls[last].out  # the features: their buffer, viewed as the recorded pass's tensor was laid out
        view = buffers[home[last]].as_strided(out.shape, out.stride())
        return cls(steps, buffers, view, isa)


class NativeReplay:
    """Runs ``program`` (a float32 or bfloat16 program on the native kernels) by replaying the recorded kernel calls of
    each input shape; keeps the plans (and their activation buffers) of the ``max_shapes`` shapes last used.

    Another network on the kernels gives its own three steps: ``prepare`` (the input → the tensor the first kernel
    reads), ``features`` (that tensor → the last kernel's output, step by step: the pass that is recorded) and
    ``head`` (that output → the result), and ``isa`` (the name of its kernels in use). A shape whose pass is not
    replayable runs ``head(features(prepare(x)))``."""

    def __init__(self, program: Any, max_shapes: int = 4, *,
                 prepare: Callable[[torch.Tensor], torch.Tensor] | None = None,
                 features: Callable[[torch.Tensor], torch.Tensor] | None = None,
                 head: Callable[[torch.Tensor], Any] | None = None, isa: Callable[[], str] = native.isa) -> None:
        self.program = program
        self.max_shapes = max_shapes
        self.prepare = prepare or (lambda x: x.contiguous(memory_format=torch.channels_last))
        self.features = features or program.forward_features
        self.head = head or program.head
        self.isa = isa
        self._plans: OrderedDict[tuple, _Plan | None] = OrderedDict()
        self._lock = threading.Lock()  # one pass at a time uses a plan's buffers

    def __call__(self, x: torch.Tensor) -> Any:
        key = (tuple(x.shape), x.dtype)
        with self._lock:
            x = self.prepare(x)
            if key not in self._plans:
                return self._record(x, key)
            self._plans.move_to_end(key)
            plan = self._plans[key]
            if plan is None:
                return self.head(self.features(x))
            out = self.head(plan.run(x))
            # A head that hands the features back (no pooling, no classifier) must not return a buffer.
            shared = isinstance(out, torch.Tensor) and \
                out.untyped_storage().data_ptr() == plan.features.untyped_storage().data_ptr()
            return out.clone() if shared else out

    def _record(self, x: torch.Tensor, key: tuple) -> Any:
        """Run the pass step by step, recording its calls; keep the plan they make for this shape."""
        with native.recording() as calls:
            features = self.features(x)
        self._plans[key] = _Plan.build(calls, x, features, self.isa)
        while len(self._plans) > self.max_shapes:
            self._plans.popitem(last=False)
        return self.head(features)

    def replayable(self) -> dict[tuple[int, ...], bool]:
        """The input shapes recorded so far, and whether each replays (True) or runs step by step."""
        return {key[0]: plan is not None for key, plan in self._plans.items()}

    def reset(self) -> None:
        """Drop every plan (and its buffers)."""
        with self._lock:
            self._plans.clear()
