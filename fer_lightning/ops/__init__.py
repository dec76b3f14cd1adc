"""Custom ops: class batch attention (BTN) and top-k region routing attention (BiFormer).

Each op has a plain-PyTorch reference, an exact fast path that needs only torch, and Triton kernels
(optional: without Triton installed everything but ``backend="triton"`` works). See
``docs/kernels.md`` for the math and the kernel design.
"""

from .bra import region_attention, route_regions, routing_attention
from .cba import class_batch_attention

__all__ = ["class_batch_attention", "region_attention", "route_regions", "routing_attention"]
