"""A captured SOAP step's refresh as a CUDA graph conditional node (opt-in: SOAP_KERNELS_CONDITIONAL_REFRESH=1).

A graph replays what it recorded, so a captured step cannot choose on the host whether to refresh: by default it
computes a refresh at every replay and installs it where the device step count makes the step a refresh step
(stack.refresh_mask), i.e. precondition_frequency - 1 wasted refreshes per refresh. CUDA 12.4+ graphs have
conditional nodes (torch: CUDAGraph.begin_capture_to_if_node, what torch.cond uses inside a capture): the work
recorded between begin and end runs at a replay only where a device bool is true. With this switch on, the
refresh is recorded inside such a node whose condition is "some stack's refresh mask is set", so replays of
non-refresh steps skip it. Off (the default) until the CUDA tests have run it on a GPU (bench/gpu_check.sh);
where conditional nodes are unavailable the refresh is recorded unconditionally, with one warning.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Iterator

import torch

__all__ = ["conditional_refresh_enabled", "only_where_any"]

ENVIRONMENT = "SOAP_KERNELS_CONDITIONAL_REFRESH"
_warned = False


def conditional_refresh_enabled() -> bool:
    """Whether SOAP_KERNELS_CONDITIONAL_REFRESH asks for the refresh in a conditional node ("1"; default "0")."""
    value = os.environ.get(ENVIRONMENT, "0")
    if value not in ("0", "1"):
        raise ValueError(f"{ENVIRONMENT} must be 0 or 1, got {value!r}")
    return value == "1"


@contextlib.contextmanager
def only_where_any(masks: list[torch.Tensor]) -> Iterator[None]:
    """With the switch on and inside a CUDA graph capture, record the body in a conditional node that runs where
    any of the 0-d bool `masks` (on the capturing device) is true; otherwise, or without conditional-node
    support, just run it."""
    global _warned
    capturing = torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()
    if not (masks and capturing and conditional_refresh_enabled()):
        yield
        return
    graph = torch.cuda.CUDAGraph.get_currently_capturing_graph()
    condition = torch.stack(masks).any()  # recorded before the node: evaluated at every replay
    try:
        graph.begin_capture_to_if_node(condition)
    except RuntimeError as error:  # e.g. torch built against CUDA < 12.4: nothing was recorded into a node
        if not _warned:
            warnings.warn(f"SOAP: conditional refresh unavailable ({error}); the refresh is recorded unconditionally",
                          RuntimeWarning, stacklevel=3)  # fmt: skip
            _warned = True
        yield
        return
    try:
        yield
    finally:
        graph.end_capture_to_conditional_node()
