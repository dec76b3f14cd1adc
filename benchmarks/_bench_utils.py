"""Shared harness of the op benchmarks: one fresh process per (case, backend), time and peak memory.

Each measurement runs ``python <bench script> --worker CASE BACKEND WHAT`` in a new process, so one
case's allocations, caches and compiled graphs cannot affect another's numbers. The worker builds the
inputs, runs forward+backward once to warm up (this is also where ``torch.compile`` compiles), then
either times further runs and reports the median, or measures the peak memory of one more run.

Peak memory:
- CPU: the rise of the process's peak resident set size (``VmHWM``) over one run after the warm-up,
  in a process of its own with glibc's mmap threshold fixed at 1 MiB so that freed tensors leave the
  RSS (which slows allocation, so time is measured in another process with default malloc). The kernel's peak counter is reset first (writing 5 to ``/proc/self/clear_refs``),
  so the warm-up run and compilation do not count; inputs, which exist before, do not count either.
  Gradients of the inputs, allocated during backward, do.
- CUDA: ``torch.cuda.max_memory_allocated`` over the timed runs, minus the allocation at their start.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _reset_cpu_peak() -> int:
    """Reset the peak-RSS counter; return the current RSS in KiB."""
    with open("/proc/self/clear_refs", "w") as clear_refs:
        clear_refs.write("5")
    return _status_kib("VmRSS")


def measure(
    step: Callable[[], None], device: torch.device, what: str, repeats: int, max_seconds: float
) -> dict:
    """After one warm-up call of ``step``: its median wall time (``what="time"``), or its peak memory.

    Timing stops early (after at least one timed run) once ``max_seconds`` have been spent, so the
    slowest cases do not dominate the benchmark's run time; ``runs`` says how many were timed.
    """

    def synchronize():
        if device.type == "cuda":
            torch.cuda.synchronize()

    step()  # warm-up: compilation, autotuning, allocator growth
    synchronize()
    if what == "time":
        times = []
        started = time.perf_counter()
        while len(times) < repeats and (not times or time.perf_counter() - started < max_seconds):
            synchronize()
            begin = time.perf_counter()
            step()
            synchronize()
            times.append(time.perf_counter() - begin)
        return {"ms": 1000 * statistics.median(times), "runs": len(times)}

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        baseline = torch.cuda.memory_allocated()
    else:
        baseline = _reset_cpu_peak() * 1024
    step()
    synchronize()
    peak = torch.cuda.max_memory_allocated() if device.type == "cuda" else _status_kib("VmHWM") * 1024
    return {"peak_mb": (peak - baseline) / 2**20}


def forward_backward_step(
    fn: Callable, inputs: list[torch.Tensor], cotangent_seed: int = 0
) -> Callable[[], None]:
    """A step that runs ``fn(*inputs)`` and its backward with a fixed random cotangent, freeing grads."""
    with torch.no_grad():
        out_shape = fn(*inputs).shape
    generator = torch.Generator().manual_seed(cotangent_seed)
    cotangent = torch.randn(out_shape, generator=generator).to(inputs[0].device, inputs[0].dtype)

    def step():
        for tensor in inputs:
            tensor.grad = None
        fn(*inputs).backward(cotangent)

    return step


def common_arguments(
    description: str, case_names: list[str], backend_names: list[str]
) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument(
        "--cases", default=",".join(case_names), help=f"comma-separated subset of: {', '.join(case_names)}"
    )
    parser.add_argument(
        "--backends",
        default=",".join(backend_names),
        help=f"comma-separated subset of: {', '.join(backend_names)}",
    )
    parser.add_argument("--quick", action="store_true", help="one timed run per case and no torch.compile")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per case (median reported)")
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="time every (case, backend) in this many interleaved rounds, each in a fresh process, and "
        "report the median of the rounds (a shared machine's speed drifts between processes)",
    )
    parser.add_argument("--max-seconds", type=float, default=20.0, help="stop timing a case after this long")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--json", type=Path, help="also write the raw results here")
    parser.add_argument("--worker", nargs=3, metavar=("CASE", "BACKEND", "WHAT"), help=argparse.SUPPRESS)
    return parser


def run_in_fresh_process(script: str, case: str, backend: str, what: str, args: argparse.Namespace) -> dict:
    """Measure ``what`` ("time" or "memory") of one (case, backend) in a new Python process."""
    command = [
        sys.executable, script, "--worker", case, backend, what, "--device", args.device,
        "--repeats", str(1 if args.quick else args.repeats), "--max-seconds", str(args.max_seconds),
    ]  # fmt: skip
    env = dict(os.environ)
    if what == "memory":
        # glibc's mmap threshold grows after large frees, and blocks below it stay resident once freed,
        # hiding the warm-up's memory from the RSS peak. A fixed threshold returns every large block to
        # the OS on free. It slows allocation down (fresh pages every time), hence a separate process.
        env["MALLOC_MMAP_THRESHOLD_"] = str(1 << 20)
    result = subprocess.run(command, capture_output=True, text=True, env=env)
    lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
    if result.returncode != 0 or not lines:
        last_error = (result.stderr.strip().splitlines() or ["killed (out of memory?)"])[-1]
        return {"error": f"{what}: exit {result.returncode}: {last_error[:120]}"}
    return json.loads(lines[-1])


def print_table(rows: list[dict], reference_backend: str = "reference") -> None:
    """Print time and peak memory per case and backend, with ratios against ``reference_backend``.

    ``speed-up`` = reference time / backend time and ``memory saving`` = reference peak / backend peak,
    so both are > 1 where the backend is better.
    """
    header = f"{'case':<24} {'backend':<12} {'median ms':>10} {'peak MB':>9} {'speed-up':>9} {'mem saving':>10}  note"
    print(header)
    print("-" * len(header))
    by_case: dict[str, dict[str, dict]] = {}
    for row in rows:
        by_case.setdefault(row["case"], {})[row["backend"]] = row
    for case, backends in by_case.items():
        reference = backends.get(reference_backend, {})
        for backend, row in backends.items():
            if "error" in row or "skipped" in row:
                print(
                    f"{case:<24} {backend:<12} {'-':>10} {'-':>9} {'-':>9} {'-':>10}  {row.get('error') or row['skipped']}"
                )
                continue
            speed = f"{reference['ms'] / row['ms']:.2f}x" if "ms" in reference else "-"
            memory = (
                f"{reference['peak_mb'] / max(row['peak_mb'], 1e-3):.1f}x" if "peak_mb" in reference else "-"
            )
            print(
                f"{case:<24} {backend:<12} {row['ms']:>10.1f} {row['peak_mb']:>9.1f} {speed:>9} {memory:>10}  {row.get('note', '')}"
            )


def run_benchmark(
    script: str,
    args: argparse.Namespace,
    skip_reason: Callable[[str, str], str | None],
    reference_backend: str = "reference",
) -> list[dict]:
    """Measure every selected (case, backend) pair, each in a fresh process; print and return the rows.

    Times are taken in ``args.rounds`` rounds that each visit every pair once, so that a slow spell of a
    shared machine falls on all backends alike; a pair's time is the median of its rounds' medians, and
    ``round_ms`` lists them. Peak memory is measured once per pair (it does not drift).
    """
    backends = [b for b in args.backends.split(",") if not (args.quick and b == "compiled")]
    pairs = [(case, backend) for case in args.cases.split(",") for backend in backends]
    # A skipped pair, or one whose timing failed, is not timed again: its result is final.
    final = {pair: {"skipped": reason} for pair in pairs if (reason := skip_reason(*pair))}
    timings: dict[tuple[str, str], list[dict]] = {pair: [] for pair in pairs}
    for round_index in range(max(1, args.rounds)):
        for case, backend in pairs:
            if (case, backend) in final:
                continue
            result = run_in_fresh_process(script, case, backend, "time", args)
            if "error" in result:
                final[case, backend] = result
            else:
                timings[case, backend].append(result)
            print(f"  round {round_index + 1}: {case} {backend}: {result}", file=sys.stderr, flush=True)
    rows = []
    for case, backend in pairs:
        result = final.get((case, backend))
        if result is None:
            round_ms = [timing["ms"] for timing in timings[case, backend]]
            result = timings[case, backend][-1] | {"ms": statistics.median(round_ms)}
            if args.rounds > 1:
                result["round_ms"] = [round(ms, 1) for ms in round_ms]
            result |= run_in_fresh_process(script, case, backend, "memory", args)
        rows.append({"case": case, "backend": backend, **result})
        print(f"  measured {case} {backend}: {result}", file=sys.stderr, flush=True)
    print(f"device: {args.device}, torch {torch.__version__}, threads {torch.get_num_threads()}")
    print_table(rows, reference_backend)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return rows


def benchmark_main(
    script: str,
    description: str,
    cases: list[str],
    backends: list[str] | tuple[str, ...],
    worker: Callable[..., dict],
    skip_reason: Callable[[str, str, str], str | None],
) -> None:
    """The command line of a benchmark script: the parent loop, or one ``--worker`` measurement."""
    args = common_arguments(description, cases, backends).parse_args()
    if args.worker:
        case, backend, what = args.worker
        print(
            json.dumps(worker(case, backend, what, torch.device(args.device), args.repeats, args.max_seconds))
        )
        return
    run_benchmark(script, args, lambda case, backend: skip_reason(case, backend, args.device))
