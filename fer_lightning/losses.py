"""Training losses beyond plain cross-entropy, shared by the paper models.

Each loss is an ``nn.Module`` whose ``forward`` returns a scalar; losses that read logits compute in
fp32, because under bf16/fp16 autocast a log-softmax loses the precision the gradients need.
"""

from __future__ import annotations
