"""A training step replayed from a CUDA graph (`soap-pinn train --cuda-graph`).

A PINN step at the paper's sizes launches hundreds of small kernels (jets, loss terms, backward, optimizer); on
a GPU their launch cost, paid on the host, can exceed the GPU's work. Captured once in a CUDA graph, a step is
one replay. What a graph needs:
    - inputs at fixed addresses: each step's collocation points and causal chunk indices are copied into
      static buffers (`points`, `chunk_index`) before the replay;
    - everything else the step reads lives on the device and changes in place: parameters, optimizer state
      (SOAP and Adam with capturable=True, learning rate a device tensor the scheduler fills), loss weights;
    - no host reads: a non-finite loss cannot stop the step before its update, so the body masks the update
      instead (see Trainer._graph_body) and the caller reads the loss after the replay.
The first `warmup` calls run the body eagerly on a side stream (Triton compilations, cuBLAS workspaces, SOAP's
initialising step and, with the default 3, its first refresh when a time window starts on this path: every
library call a capture records has run once before; torch.cuda.graph's documentation asks for it), the next one
captures it and replays it.
Each call is one real training step. capture=False keeps calling the body eagerly (the same static inputs and
body: how the CPU tests check the step's logic, since only CUDA can capture).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

__all__ = ["StepGraph"]


class StepGraph:
    """body(points, chunk_index) -> outputs, run on static input buffers, eagerly `warmup` times, then from a
    CUDA graph (capture=True) or eagerly again (capture=False). Returns the outputs of this call: the
    captured step's own output tensors once the graph runs (overwritten by every replay)."""

    def __init__(
        self,
        body: Callable[[torch.Tensor, torch.Tensor], object],
        points: torch.Tensor,
        chunk_index: torch.Tensor,
        warmup: int = 3,
        capture: bool = True,
    ):
        if warmup < 1:
            raise ValueError(f"warmup must be at least 1 (the step before a capture runs eagerly), got {warmup}")
        if capture and points.device.type != "cuda":
            raise ValueError(f"a CUDA graph needs CUDA tensors, got points on {points.device}")
        self.body = body
        self.points = torch.empty_like(points)
        self.chunk_index = torch.empty_like(chunk_index)
        self.warmup_left = warmup
        self.capture = capture
        self.graph: torch.cuda.CUDAGraph | None = None
        self.outputs = None
        self.side_stream = torch.cuda.Stream(points.device) if capture else None

    def __call__(self, points: torch.Tensor, chunk_index: torch.Tensor):
        if points.shape != self.points.shape or chunk_index.shape != self.chunk_index.shape:
            raise ValueError(
                f"StepGraph was built for points {tuple(self.points.shape)} and chunk indices "
                f"{tuple(self.chunk_index.shape)}, got {tuple(points.shape)} and {tuple(chunk_index.shape)}"
            )
        self.points.copy_(points, non_blocking=True)
        self.chunk_index.copy_(chunk_index, non_blocking=True)
        if self.graph is not None:
            self.graph.replay()
            return self.outputs
        if not self.capture:
            return self.body(self.points, self.chunk_index)
        if self.warmup_left > 0:
            self.warmup_left -= 1
            return self._on_side_stream(lambda: self.body(self.points, self.chunk_index))
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):  # synchronises the device first
            outputs = self.body(self.points, self.chunk_index)
        self.graph, self.outputs = graph, outputs
        graph.replay()  # capturing records the step without running it
        return outputs

    def _on_side_stream(self, run: Callable[[], object]):
        """run() on the side stream, which waits for the current one, which then waits for it (torch.cuda.graph's
        warm-up recipe; one stream for every warm-up, so the caching allocator reuses its blocks)."""
        current = torch.cuda.current_stream()
        self.side_stream.wait_stream(current)
        with torch.cuda.stream(self.side_stream):
            result = run()
        current.wait_stream(self.side_stream)
        return result
