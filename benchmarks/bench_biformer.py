"""Benchmark one BiFormer-T training step: our routing attention against BiFormer's gather formulation.

One step = forward + cross-entropy + backward of ``RoutingViT(variant="biformer_tiny")`` in training
mode, fp32, batch 16, 224×224 (the ImageNet setting of the published model), gradients freed between
steps. Every variant runs the same network with the same weights; only the routed attention of stages
1–3 differs:

- ``ours``: :func:`fer_lightning.ops.routing_attention` (``attention_backend="auto"``: the exact fast
  path on CPU, Triton on CUDA);
- ``gather``: the algorithm of the official code, written out here: windows in region-major order, one
  fused K|V tensor, ``torch.topk`` routing on the detached window means, K|V of the routed regions copied
  out of a view expanded over the query regions with ``torch.gather`` (topk copies; the backward of the
  gather allocates a zeros tensor S² times K|V), then attention as batched matmuls;
- ``no_attention``: the routed attention modules replaced by identities (the rest of the step: a
  floor that no attention implementation can beat).

Each (variant, time | memory) runs in a fresh process (``_bench_utils``); ratios are against ``gather``.

    python benchmarks/bench_biformer.py --rounds 5      # about 8 minutes on 2 cores
    python benchmarks/bench_biformer.py --check         # ours and gather agree (logits and gradients)
"""

from __future__ import annotations

import sys
import types
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench_utils import common_arguments, measure, run_benchmark

from fer_lightning.models.routing_vit import RoutedAttention, RoutingViT

CASES = {"biformer_tiny-B16-224": ("biformer_tiny", 16, 224)}
VARIANTS = ["gather", "ours", "no_attention"]


def gather_routed_attention(self: RoutedAttention, x: torch.Tensor) -> torch.Tensor:
    """BiFormer's BRA forward, as its official code computes it, with the weights of ``self``."""
    batch, height, width, dim = x.shape
    regions, heads, topk = self.regions, self.num_heads, self.topk
    num_regions, region_h, region_w = regions * regions, height // regions, width // regions
    tokens, head_dim = region_h * region_w, dim // heads
    windows = x.reshape(batch, regions, region_h, regions, region_w, dim).permute(0, 1, 3, 2, 4, 5)
    windows = windows.reshape(batch, num_regions, region_h, region_w, dim)
    q, kv = self.qkv(windows).split([dim, 2 * dim], dim=-1)
    query_means, key_means = q.mean(dim=(2, 3)), kv[..., :dim].mean(dim=(2, 3))
    values = kv[..., dim:].reshape(batch, regions, regions, region_h, region_w, dim)
    values = values.permute(0, 5, 1, 3, 2, 4).reshape(batch, dim, height, width).contiguous()
    lepe = self.lepe(values).permute(0, 2, 3, 1)

    affinity = (query_means.detach() * self.scale) @ key_means.detach().transpose(-2, -1)
    route = torch.topk(affinity, topk, dim=-1).indices  # (B, S², k)
    kv_tokens = kv.reshape(batch, 1, num_regions, tokens, 2 * dim).expand(-1, num_regions, -1, -1, -1)
    routed = torch.gather(
        kv_tokens, 2, route.view(batch, num_regions, topk, 1, 1).expand(-1, -1, -1, tokens, 2 * dim)
    )
    routed_keys, routed_values = routed.split([dim, dim], dim=-1)  # (B, S², k, w², C) each
    routed_keys = routed_keys.reshape(batch, num_regions, topk, tokens, heads, head_dim)
    routed_keys = routed_keys.permute(0, 1, 4, 5, 2, 3).reshape(
        batch * num_regions, heads, head_dim, topk * tokens
    )
    routed_values = routed_values.reshape(batch, num_regions, topk, tokens, heads, head_dim)
    routed_values = routed_values.permute(0, 1, 4, 2, 3, 5).reshape(
        batch * num_regions, heads, topk * tokens, head_dim
    )
    queries = q.reshape(batch * num_regions, tokens, heads, head_dim).transpose(1, 2)

    weights = torch.softmax((queries * self.scale) @ routed_keys, dim=-1)
    out = (weights @ routed_values).reshape(batch, regions, regions, heads, region_h, region_w, head_dim)
    out = out.permute(0, 1, 4, 2, 5, 3, 6).reshape(batch, height, width, dim)
    return self.proj(out + lepe)


def build(variant_name: str, model_variant: str, seed: int = 0) -> RoutingViT:
    torch.manual_seed(seed)
    model = RoutingViT(variant=model_variant, num_classes=1000)
    for module in model.modules():
        if isinstance(module, RoutedAttention):
            if variant_name == "gather":
                module.forward = types.MethodType(gather_routed_attention, module)
            elif variant_name == "no_attention":
                module.forward = types.MethodType(lambda self, x: x, module)
    return model


def worker(
    case: str, variant: str, what: str, device: torch.device, repeats: int, max_seconds: float
) -> dict:
    model_variant, batch, size = CASES[case]
    model = build(variant, model_variant).to(device).train()
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(batch, 3, size, size, generator=generator).to(device)
    labels = torch.randint(0, 1000, (batch,), generator=generator).to(device)

    def step():
        model.zero_grad(set_to_none=True)
        F.cross_entropy(model(images), labels).backward()

    return measure(step, device, what, repeats, max_seconds)


def check(device: torch.device) -> None:
    """Ours and the gather formulation give the same logits and gradients (small batch)."""
    images = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0)).to(device)
    results = []
    for variant in ("ours", "gather"):
        model = build(variant, "biformer_tiny").to(device).eval()
        logits = model(images)
        logits.square().sum().backward()
        results.append((logits.detach(), model.network.stages[0][0].attn.qkv.weight.grad))
    (ours, ours_grad), (gather, gather_grad) = results
    print(
        f"max |logit difference| {(ours - gather).abs().max():.2e} (max |logit| {gather.abs().max():.2f}); "
        f"max |gradient difference| {(ours_grad - gather_grad).abs().max():.2e} "
        f"(max |gradient| {gather_grad.abs().max():.2e})"
    )


def main() -> None:
    parser = common_arguments(__doc__.splitlines()[0], list(CASES), VARIANTS)
    parser.add_argument(
        "--check", action="store_true", help="compare ours with the gather formulation and exit"
    )
    args = parser.parse_args()
    device = torch.device(args.device)
    if args.check:
        check(device)
    elif args.worker:
        import json

        case, variant, what = args.worker
        print(json.dumps(worker(case, variant, what, device, args.repeats, args.max_seconds)))
    else:
        rows = run_benchmark(__file__, args, lambda case, variant: None, reference_backend="gather")
        by_variant = {row["backend"]: row for row in rows if "ms" in row and "peak_mb" in row}
        if "gather" in by_variant:
            gather = by_variant["gather"]
            for variant, row in by_variant.items():
                # Round i of every variant ran back to back, so their ratio shows the spread of the machine.
                per_round = [g / v for g, v in zip(gather.get("round_ms", []), row.get("round_ms", []))]
                spread = f" (rounds: {min(per_round):.2f}-{max(per_round):.2f}x)" if per_round else ""
                print(
                    f"{variant}: {gather['ms'] / row['ms']:.2f}x faster{spread}, "
                    f"{gather['peak_mb'] / row['peak_mb']:.2f}x less peak memory than gather"
                )


if __name__ == "__main__":
    main()
