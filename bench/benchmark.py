"""What an explanation costs, against timm's own forward passes, in one run.

    python bench/benchmark.py            # batch 1 and 32 (and 64 for memory), CPU and CUDA if present
    python bench/benchmark.py --smoke    # a seconds-long check that every row runs (CI)

Every row runs on the same seeded random weights and inputs. Times are medians of interleaved
repeats (the rows take turns, so drift on a noisy machine hits them alike); ratios are to
timm's fused forward ("floor") and to its unfused forward (the attention maps materialised,
the arithmetic any attention-map method needs). Peak memory is measured in a fresh process
per row: the resident-set peak over the call (CPU, /proc) or torch's peak allocation (CUDA).

The timing process keeps freed memory for reuse, as the command line does
(pipeline.keep_freed_memory), so that no row pays at random for glibc handing memory back and
faulting it in again: on the virtual machines this was measured on, memory handed back goes to
the host within seconds, and faulting it in again made the floor itself swing between 14.9 and
18.5 ms per picture across runs (14.5-15.0 with memory kept). What the numbers have shown, and
what was tried: bench/README.md.
"""
import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from deit_functional import explain, load_weights  # noqa: E402
from deit_functional.pipeline import keep_freed_memory  # noqa: E402
from timm_reference import attention_fused, hook_based_rollout, random_timm_model  # noqa: E402

CATEGORY = 87


def timm_forward(model, fused):
    """-> a function of the input batch: timm's inference forward, attention fused or not."""
    def run(x):
        with attention_fused(model, fused), torch.no_grad():
            return model(x)
    return run


def rows(device):
    """name -> function of the input batch. Built once per device."""
    model = random_timm_model(device=device)
    weights = load_weights(model, device=device)

    def timm_fused_backward(x):
        model.zero_grad(set_to_none=True)
        with attention_fused(model, True):
            model(x)[:, CATEGORY].sum().backward()

    return {
        "timm fused forward (floor)": timm_forward(model, fused=True),
        "timm fused forward+backward": timm_fused_backward,
        "timm unfused forward": timm_forward(model, fused=False),
        "hook-based rollout (timm unfused + hooks)": lambda x: hook_based_rollout(model, x),
        "ours: attention rollout (max, discard 0.9)":
            lambda x: explain(weights, x, "attention", head_fusions=("max",), discard_ratio=0.9),
        "ours: gradient rollout (mean, discard 0.9)":
            lambda x: explain(weights, x, "gradient", category=CATEGORY, discard_ratio=0.9),
    }


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_rows(device, batch, repeats):
    functions = rows(device)
    x = torch.randn(batch, 3, 224, 224, generator=torch.Generator().manual_seed(1)).to(device)
    times = {name: [] for name in functions}
    for name, fn in functions.items():  # warm up
        fn(x)
    for _ in range(repeats):
        for name, fn in functions.items():
            sync(device)
            start = time.perf_counter()
            fn(x)
            sync(device)
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def peak_memory_mb(device, batch, name):
    """Run one row once in a fresh process; its extra peak memory in MB."""
    code = (f"import sys; sys.path.insert(0, {str(ROOT / 'bench')!r}); import benchmark; "
            f"print(benchmark._measure_memory({str(device)!r}, {batch}, {name!r}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def _measure_memory(device, batch, name):
    device = torch.device(device)
    fn = rows(device)[name]
    x = torch.randn(batch, 3, 224, 224).to(device)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        fn(x)
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - before) / 2**20
    status = lambda key: int(next(l for l in open("/proc/self/status") if l.startswith(key)).split()[1])
    before = status("VmRSS:")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the peak resident set size
    fn(x)
    return (status("VmHWM:") - before) / 1024


def table(device, batch, repeats, memory):
    medians = time_rows(device, batch, repeats)
    floor = medians["timm fused forward (floor)"]
    unfused = medians["timm unfused forward"]
    lines = [f"\n{device.type}, batch {batch} ({repeats} interleaved repeats, median)",
             "| | ms/image | images/s | × fused fwd | × unfused fwd |" + (" peak MB |" if memory else ""),
             "|---|---:|---:|---:|---:|" + ("---:|" if memory else "")]
    for name, seconds in medians.items():
        line = (f"| {name} | {1000 * seconds / batch:.1f} | {batch / seconds:.1f} | "
                f"{seconds / floor:.2f} | {seconds / unfused:.2f} |")
        if memory:
            line += f" {peak_memory_mb(device, batch, name):.0f} |"
        lines.append(line)
    print("\n".join(lines), flush=True)


def run_seconds(command):
    start = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True)
    return time.perf_counter() - start


def script_rows(repeats, folder_sizes, batch, workdir):
    """Whole processes -- the one-image job ours vs the hook-based way, and two folders -- and,
    between them, timm's fused forward at ``batch`` in this process: the floor the folders are
    compared with, measured alongside them so that drift on a noisy machine hits both alike."""
    import shutil
    workdir.mkdir(parents=True, exist_ok=True)
    checkpoint = workdir / "weights.pth"
    model = random_timm_model()
    torch.save(model.state_dict(), checkpoint)
    photos = sorted((ROOT / "images").glob("*.jpg"))
    for size in folder_sizes:
        folder = workdir / f"pictures{size}"
        folder.mkdir(exist_ok=True)
        for i in range(size):  # the sample photos, over and over
            shutil.copy(photos[i % len(photos)], folder / f"{i:03d}.jpg")
    ours = [sys.executable, str(ROOT / "attention_rollout.py"), "--weights", str(checkpoint)]
    hooks = [sys.executable, str(ROOT / "bench" / "hook_based_script.py"), "--weights", str(checkpoint)]
    commands = {
        "one picture, hook-based script with timm": hooks + ["--image", str(photos[0])],
        "one picture, attention_rollout.py": ours + ["--image", str(photos[0])],
        **{f"folder of {size}": ours + ["--image", str(workdir / f"pictures{size}")] for size in folder_sizes},
    }
    floor = timm_forward(model, fused=True)
    x = torch.randn(batch, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    floor(x)  # warm up
    times = {name: [] for name in [*commands, "floor"]}
    for repeat in range(repeats):
        for index, (name, command) in enumerate(commands.items()):
            times[name].append(run_seconds(command + ["--output-dir", str(workdir / f"out{repeat}-{index}")]))
            start = time.perf_counter()
            floor(x)
            times["floor"].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def script_table(repeats, folder_sizes, batch):
    """Print the whole-process table."""
    import tempfile
    with tempfile.TemporaryDirectory() as tmp:
        medians = script_rows(repeats, folder_sizes, batch, Path(tmp))
    floor_ms = 1000 * medians.pop("floor") / batch
    (hooks_name, hooks), (ours_name, ours), (small_name, small), (large_name, large) = medians.items()
    # the extra pictures of the larger folder: start-up, first decode and last write cancel out
    per_picture_ms = 1000 * (large - small) / (folder_sizes[1] - folder_sizes[0])
    print(f"\nwhole processes, CPU, local weights file, the sample photos ({repeats} interleaved "
          "repeats, median)\n| | wall s | ratio |\n|---|---:|---:|\n"
          f"| {hooks_name} | {hooks:.2f} | 1.00 |\n"
          f"| {ours_name} | {ours:.2f} | {ours / hooks:.2f} × hook-based |\n"
          f"| {small_name} | {small:.2f} | |\n| {large_name} | {large:.2f} | |\n"
          f"| timm fused forward at batch {batch}, per picture, between the runs above | "
          f"{floor_ms / 1000:.4f} | 1.00 |\n"
          f"| once started, per picture (decode + explain + write) | {per_picture_ms / 1000:.4f} | "
          f"{per_picture_ms / floor_ms:.2f} × timm fused forward |", flush=True)


def cpu_name():
    try:
        return next(l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="tiny batches, one repeat (CI)")
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    keep_freed_memory()
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    print(f"{cpu_name()}, {os.cpu_count()} cores, torch {torch.__version__} "
          f"({torch.get_num_threads()} threads)" + (f", {torch.cuda.get_device_name()}" if len(devices) > 1 else ""))
    batch = 2 if args.smoke else 32
    for device in devices:
        if not args.smoke:
            table(device, 1, args.repeats, memory=True)
        table(device, batch, 1 if args.smoke else max(3, args.repeats // 2), memory=not args.smoke)
        if not args.smoke:
            table(device, 64, 1, memory=True)
    script_table(1 if args.smoke else 5, (3, 6) if args.smoke else (64, 320), batch)


if __name__ == "__main__":
    main()
