"""What an explanation costs, against timm's own forward passes, in one run.

    python bench/benchmark.py            # batch 1, 32 and 64, every method, attention flow, whole processes,
                                         # removal curves, the ViT family (25-30 min), then --method all over
                                         # 32 pictures (~30 min)
    python bench/benchmark.py --smoke    # a seconds-long check that every row runs (CI)

Every row runs on the same seeded random weights (in the same memory: sharing_storage) and
the same inputs. The rows take turns (interleaved repeats, each in a new order: time_rounds),
so drift on a noisy machine hits them alike, and each ratio is taken repeat by repeat
(a row's time over the reference's time in the same round): the table prints each ratio's
median with its spread, the smallest and largest of those paired ratios. A bad stretch of the
machine shows as a wide spread; a table in which a ratio spreads over more than WIDE of its
median is timed again (up to MORE_ROUNDS more rounds, its samples pooled), and a ratio still
wide is marked so. Peak memory is measured in a fresh process per row: the resident-set peak
over the call (CPU, /proc) or torch's peak allocation (CUDA).

The timing process keeps freed memory for reuse, as the command line does
(pipeline.keep_freed_memory), so that no row pays at random for glibc handing memory back and
faulting it in again: on the virtual machines this was measured on, memory handed back goes to
the host within seconds, and faulting it in again made the floor itself swing between 14.9 and
18.5 ms per picture across runs (14.5-15.0 with memory kept). What the numbers have shown, and
what was tried: bench/README.md.
"""
import argparse
import datetime
import os
import platform
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from deit_functional import METHODS, explain, load_weights  # noqa: E402
from deit_functional.attention_gradients import LEGRAD_LAYERS  # noqa: E402
from deit_functional.model import L, head, trace  # noqa: E402
from deit_functional.model_run import Keeps, run_model  # noqa: E402
from deit_functional.pipeline import keep_freed_memory  # noqa: E402
from timm_reference import attention_fused, hook_based_rollout, random_timm_model  # noqa: E402

CATEGORY = 87
FLOOR, BACKWARD, UNFUSED = "timm fused forward (floor)", "timm fused forward+backward", "timm unfused forward"
REFERENCES = (FLOOR, UNFUSED, BACKWARD)  # the ratio columns, in order
WIDE = 0.10       # a ratio whose paired values spread over more than this share of its median
MORE_ROUNDS = 2   # rounds a table is timed again while a ratio spreads wide


def timm_forward(model, fused):
    """-> a function of the input batch: timm's inference forward, attention fused or not."""
    def run(x):
        with attention_fused(model, fused), torch.no_grad():
            return model(x)
    return run


def sharing_storage(weights, model):
    """``weights`` with each tensor replaced by the same-named one of ``model``'s state dict: the
    same numbers in the same memory. With copies, at batch 1 -- where each picture reads all
    23 MB of weights -- our rows found their weights colder in cache than timm's rows found the
    model's: attention rollout measured 1.23x timm's unfused forward with copies and 1.14x
    sharing (rows in a fixed order; 0.99x with only the two rows taking turns)."""
    state = model.state_dict()

    def shared(node, name):
        if isinstance(node, dict):
            return {key: shared(value, f"{name}{key}.") for key, value in node.items()}
        if isinstance(node, list):
            return [shared(value, f"{name}{i}.") for i, value in enumerate(node)]
        if isinstance(node, torch.Tensor):
            assert torch.equal(node, state[name[:-1]])
            return state[name[:-1]]
        return node  # a number: the heads
    return shared(weights, "")


def model_and_weights(device):
    """The seeded random timm model, and our weights in the same memory (sharing_storage)."""
    model = random_timm_model(device=device)
    return model, sharing_storage(load_weights(model, device=device), model)


def timm_rows(model):
    """The reference rows: timm's passes on ``model`` -> {name: function of the input batch}."""
    def timm_fused_backward(x):
        model.zero_grad(set_to_none=True)
        with attention_fused(model, True):
            model(x)[:, CATEGORY].sum().backward()

    return {FLOOR: timm_forward(model, fused=True), BACKWARD: timm_fused_backward,
            UNFUSED: timm_forward(model, fused=False)}


def rows(device):
    """name -> function of the input batch. Built once per device."""
    model, weights = model_and_weights(device)
    return {
        **timm_rows(model),
        "hook-based rollout (timm unfused + hooks)": lambda x: hook_based_rollout(model, x),
        "ours: attention rollout (max, discard 0.9)":
            lambda x: explain(weights, x, "attention", head_fusions=("max",), discard_ratio=0.9),
        "ours: gradient rollout (mean, discard 0.9)":
            lambda x: explain(weights, x, "gradient", category=CATEGORY, discard_ratio=0.9),
    }


def method_rows(device):
    """name -> function of the input batch: timm's passes, then every method but Attention Flow
    (its own table) as the command line runs it by default, then LeGrad's gradients the plain way."""
    model, weights = model_and_weights(device)
    found = timm_rows(model)
    for name, m in METHODS.items():
        if name != "flow":
            how = dict(category=CATEGORY if m.uses_gradient else None, discard_ratio=m.cli_discard_ratio or 0.0)
            found[f"ours: {name}"] = lambda x, name=name, how=how: explain(weights, x, name, **how)
    for count in (LEGRAD_LAYERS, L):  # the method's layers, and every layer (its start set to 1)
        found[f"LeGrad's ∂s_l/∂A_l, last {count} layers: one backward (model_run)"] = \
            lambda x, count=count: run_model(weights, x, Keeps(read_out_layers=count), CATEGORY)
        found[f"LeGrad's ∂s_l/∂A_l, last {count} layers: autograd.grad per layer (its code's way)"] = \
            lambda x, count=count: legrad_gradients_one_by_one(weights, x, count, pruned=True)
        found[f"LeGrad's ∂s_l/∂A_l, last {count} layers: backward() per layer, to the input"] = \
            lambda x, count=count: legrad_gradients_one_by_one(weights, x, count, pruned=False)
    return found


def legrad_gradients_one_by_one(weights, x, count, pruned):
    """What model_run.run_model gets from one backward pass for LeGrad, a backward pass per
    layer: ∂s_l/∂A_l for each of the last ``count`` layers, by ``torch.autograd.grad`` w.r.t. A_l
    (``pruned``: autograd goes no further down than A_l, as LeGrad's code), or by ``backward()``
    from s_l with every map's .grad kept, which goes all the way down each time."""
    kept = trace(weights, x, keep=("tokens",), keep_grad=("attentions",))
    scores = [head(t, weights)[:, CATEGORY].sum() for t in kept.tokens[-count:]]
    if pruned:
        return [torch.autograd.grad(s, a, retain_graph=True)[0] for s, a in zip(scores, kept.attentions[-count:])]
    found = []
    for s, a in zip(scores, kept.attentions[-count:]):
        for other in kept.attentions:
            other.grad = None
        s.backward(retain_graph=True)
        found.append(a.grad)
    return found


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_rounds(functions, x, device, repeats):
    """{row: [seconds per repeat]}, the rows interleaved: one round of ``repeats``, each repeat
    in a new random order. A row leaves the caches full of its own data (weights, maps), which
    at batch 1 cost the next row ~10%: in a fixed order, one row would always pay for the same
    predecessor, as our attention rollout did after the hook-based one (1.14 -> 1.03x timm's
    unfused forward)."""
    times = {name: [] for name in functions}
    for _ in range(repeats):
        for name in random.sample(list(functions), len(functions)):
            fn = functions[name]
            sync(device)
            start = time.perf_counter()
            fn(x)
            sync(device)
            times[name].append(time.perf_counter() - start)
    return times


def spread(ratios):
    """(median, smallest, largest) of paired ratios."""
    return statistics.median(ratios), min(ratios), max(ratios)


def is_wide(ratios):
    middle, low, high = spread(ratios)
    return high - low > WIDE * middle


def ratio_text(ratios):
    middle, low, high = spread(ratios)
    return f"{middle:.2f} ({low:.2f}–{high:.2f}){' wide' if is_wide(ratios) else ''}"


def peak_memory_mb(device, batch, name):
    """Run one row once in a fresh process; its extra peak memory in MB."""
    code = (f"import sys; sys.path.insert(0, {str(ROOT / 'bench')!r}); import benchmark; "
            f"print(benchmark._measure_memory({str(device)!r}, {batch}, {name!r}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def _measure_memory(device, batch, name):
    device = torch.device(device)
    functions = rows(device)
    fn = functions[name] if name in functions else method_rows(device)[name]
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


def table(device, batch, repeats, memory, more_rounds=MORE_ROUNDS, functions=None, heading=""):
    functions = functions or rows(device)
    x = torch.randn(batch, 3, 224, 224, generator=torch.Generator().manual_seed(1)).to(device)
    for fn in functions.values():  # warm up
        fn(x)
    times, rounds = time_rounds(functions, x, device, repeats), 1
    paired = lambda name, reference: [t / r for t, r in zip(times[name], times[reference])]
    while rounds <= more_rounds and any(is_wide(paired(name, reference)) for name in functions
                                        for reference in REFERENCES if name != reference):
        more = time_rounds(functions, x, device, repeats)
        times = {name: times[name] + more[name] for name in functions}
        rounds += 1
    lines = [f"\n{heading}{device.type}, batch {batch} ({rounds} × {repeats} interleaved repeats; ratios: median "
             "(smallest–largest) of the paired ratios)",
             "| | ms/image | images/s | × fused fwd | × unfused fwd | × fused fwd+bwd |"
             + (" peak MB |" if memory else ""),
             "|---|---:|---:|---:|---:|---:|" + ("---:|" if memory else "")]
    for name in functions:
        seconds = statistics.median(times[name])
        line = (f"| {name} | {1000 * seconds / batch:.1f} | {batch / seconds:.1f} | "
                + " | ".join(ratio_text(paired(name, reference)) for reference in REFERENCES) + " |")
        if memory:
            line += f" {peak_memory_mb(device, batch, name):.0f} |"
        lines.append(line)
    print("\n".join(lines), flush=True)


FLOW_TARGETS = {0.9: 0.5, 0.0: 2.0}  # issue #12: seconds per picture, the whole explanation


def flow_table(batches, repeats):
    """Attention Flow's whole explanation (forward, fusion, discard, every max flow), seconds per
    picture, on the seeded random weights: their near-uniform maps keep the most edges, the
    hardest case for max-flow (the planted model's peaked maps take ~0.2 s even without discard)."""
    from deit_functional.max_flow import usable_cores
    weights = load_weights(random_timm_model())
    x = torch.randn(max(batches), 3, 224, 224, generator=torch.Generator().manual_seed(1))
    explain(weights, x[:1], "flow")  # starts the worker processes
    lines = [f"\nattention flow, CPU, {usable_cores()} worker processes ({repeats} repeats; seconds per "
             "picture: median (smallest–largest))",
             "| | " + " | ".join(f"batch {b}" for b in batches) + " | target |", "|---|" + "---:|" * (len(batches) + 1)]
    for ratio, target in FLOW_TARGETS.items():
        cells = []
        for batch in batches:
            seconds = []
            for _ in range(repeats):
                start = time.perf_counter()
                explain(weights, x[:batch], "flow", discard_ratio=ratio)
                seconds.append((time.perf_counter() - start) / batch)
            middle, low, high = spread(seconds)
            cells.append(f"{middle:.3f} ({low:.3f}–{high:.3f})")
        lines.append(f"| ours: attention flow (mean, discard {ratio:g}) | " + " | ".join(cells) + f" | ≤ {target} |")
    print("\n".join(lines), flush=True)


def run_seconds(command):
    start = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True)
    return time.perf_counter() - start


def script_rows(repeats, folder_sizes, batch, workdir):
    """Whole processes -- the one-image job ours vs the hook-based way, and two folders -- and,
    after each, timm's fused forward at ``batch`` in this process: the floor the folders are
    compared with, measured alongside them so that drift on a noisy machine hits both alike.
    -> {row: [seconds per repeat]}, the floor as the median of each repeat's."""
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
        floors = []
        for index, (name, command) in enumerate(commands.items()):
            output = workdir / f"out-{len(times['floor'])}-{index}"
            times[name].append(run_seconds(command + ["--output-dir", str(output)]))
            shutil.rmtree(output)
            start = time.perf_counter()
            floor(x)
            floors.append(time.perf_counter() - start)
        times["floor"].append(statistics.median(floors))
    return times


def script_table(repeats, folder_sizes, batch, more_rounds=MORE_ROUNDS):
    """Print the whole-process table; timed again while a ratio spreads wide."""
    import tempfile
    with tempfile.TemporaryDirectory() as tmp:
        times, rounds = script_rows(repeats, folder_sizes, batch, Path(tmp)), 1
        hooks, ours, small, large, floor = times.values()  # the lists grow as rounds are added
        extra = folder_sizes[1] - folder_sizes[0]
        # the extra pictures of the larger folder: start-up, first decode and last write cancel out
        per_picture = lambda: [(l - s) / extra for l, s in zip(large, small)]
        one = lambda: [o / h for o, h in zip(ours, hooks)]
        folder = lambda: [p / (f / batch) for p, f in zip(per_picture(), floor)]
        while rounds <= more_rounds and (is_wide(one()) or is_wide(folder())):
            for name, seconds in script_rows(repeats, folder_sizes, batch, Path(tmp)).items():
                times[name] += seconds
            rounds += 1
    names = list(times)
    median = lambda values: f"{statistics.median(values):.2f}"
    print(f"\nwhole processes, CPU, local weights file, the sample photos ({rounds} × {repeats} interleaved "
          "repeats; times: median; ratios: median (smallest–largest) of the paired ratios)\n"
          "| | wall s | ratio |\n|---|---:|---:|\n"
          f"| {names[0]} | {median(hooks)} | 1.00 |\n"
          f"| {names[1]} | {median(ours)} | {ratio_text(one())} × hook-based |\n"
          f"| {names[2]} | {median(small)} | |\n| {names[3]} | {median(large)} | |\n"
          f"| timm fused forward at batch {batch}, per picture, between the runs above | "
          f"{statistics.median(floor) / batch:.4f} | 1.00 |\n"
          f"| once started, per picture (decode + explain + write) | {statistics.median(per_picture()):.4f} | "
          f"{ratio_text(folder())} × timm fused forward |", flush=True)


def removal_table(batch, repeats):
    """Token removal against patch removal (evaluate.py), the same maps: seconds per curve, and
    the ratio, interleaved. Each call makes both orders' curves of one map per picture."""
    from deit_functional import evaluate
    weights = load_weights(random_timm_model())
    x = torch.randn(batch, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    grids = torch.rand(batch, 1, 14, 14, generator=torch.Generator().manual_seed(2))
    classes = torch.full((batch,), CATEGORY)
    functions = {"patch removal (Chefer et al.), 0..0.9": lambda x: evaluate.removal_curves(weights, x, grids, classes),
                 "token removal, 0..0.9": lambda x: evaluate.token_removal_curves(weights, x, grids, classes)}
    for fn in functions.values():
        fn(x)
    times = time_rounds(functions, x, torch.device("cpu"), repeats)
    patch, token = times.values()
    print(f"\nremoval curves, CPU, batch {batch}, one map per picture ({repeats} interleaved repeats)\n"
          "| | ms per curve | × patch removal | target |\n|---|---:|---:|---:|\n"
          f"| {list(functions)[0]} | {1000 * statistics.median(patch) / (2 * batch):.1f} | 1.00 | |\n"
          f"| {list(functions)[1]} | {1000 * statistics.median(token) / (2 * batch):.1f} | "
          f"{ratio_text([t / p for t, p in zip(token, patch)])} | ≤ 0.6 |", flush=True)


def family_table(batch, repeats, names=None):
    """Attention Rollout (mean, discard 0.9) on one checkpoint of each family of the ViT family
    test (tests/test_family.py), against timm's unfused forward of the same random model and
    inputs, interleaved: ms per picture and the paired ratio."""
    from test_family import FAMILIES
    lines = [f"\nthe ViT family, CPU, batch {batch} ({repeats} interleaved repeats): Attention Rollout "
             "against timm's unfused forward of the same model",
             "| model | tokens | timm unfused ms/image | ours ms/image | × timm unfused |",
             "|---|---:|---:|---:|---:|"]
    for name in names or FAMILIES:
        model = random_timm_model(name=name)
        weights = sharing_storage(load_weights(model, model=name), model)
        a = weights["architecture"]
        x = torch.randn(batch, 3, a.image_size, a.image_size, generator=torch.Generator().manual_seed(1))
        functions = {"timm": timm_forward(model, fused=False),
                     "ours": lambda x: explain(weights, x, "attention", discard_ratio=0.9)}
        for fn in functions.values():
            fn(x)
        times = time_rounds(functions, x, torch.device("cpu"), repeats)
        ratios = [o / t for o, t in zip(times["ours"], times["timm"])]
        lines.append(f"| {name} | {a.N} | {1000 * statistics.median(times['timm']) / batch:.1f} | "
                     f"{1000 * statistics.median(times['ours']) / batch:.1f} | {ratio_text(ratios)} |")
    print("\n".join(lines), flush=True)


def comparison_table(pictures, methods="all"):
    """--method all over ``pictures`` of the sample photos, in this process (pipeline.run): its
    wall time, and the share of it spent in model runs -- every forward (model.trace) and
    backward pass, timed where they are called."""
    import shutil
    import tempfile
    from deit_functional import model, model_run
    from deit_functional.cli import job_from, parser_for, script_methods
    from deit_functional.pipeline import run
    spent = [0.0]

    def timed(fn):
        def call(*args, **kwargs):
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                spent[0] += time.perf_counter() - start
        return call
    weights = load_weights(random_timm_model())
    photos = sorted((ROOT / "images").glob("*.jpg"))
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "pictures"
        folder.mkdir()
        for i in range(pictures):
            shutil.copy(photos[i % len(photos)], folder / f"{i:03d}.jpg")
        args = parser_for(script_methods(False)).parse_args(
            ["--image", str(folder), "--method", methods, "--compare", "--output-dir", str(Path(tmp) / "out"), "-qq"])
        job = job_from(args)
        originals = model.trace, model_run.trace, torch.Tensor.backward
        model.trace, model_run.trace, torch.Tensor.backward = (timed(f) for f in originals)
        try:
            start = time.perf_counter()
            run(sorted(folder.iterdir()), weights, job, torch.device("cpu"))
            wall = time.perf_counter() - start
        finally:
            model.trace, model_run.trace, torch.Tensor.backward = originals
    print(f"\n--method {methods}, CPU, {pictures} pictures ({len(job.methods)} methods), one run\n"
          "| wall s | in model runs | target |\n"
          f"|---:|---:|---:|\n| {wall:.0f} | {spent[0] / wall:.0%} | ≥ 80% |", flush=True)


def machine():
    """A line saying what the numbers were measured on, and when."""
    try:
        info = open("/proc/cpuinfo").read()
        name = next(l.split(":", 1)[1].strip() for l in info.splitlines() if l.startswith("model name"))
        flags = set(next(l.split(":", 1)[1] for l in info.splitlines() if l.startswith("flags")).split())
    except (OSError, StopIteration):
        name, flags = platform.processor() or platform.machine(), set()
    vector = [f for f in ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_tile") if f in flags]
    gpu = f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ", no GPU"
    return (f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC; {name}, {os.cpu_count()} "
            f"cores ({' '.join(vector) or 'no AVX2'}){gpu}; numpy {np.__version__}, torch {torch.__version__} "
            f"({torch.get_num_threads()} threads)")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="tiny batches, one repeat (CI)")
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    keep_freed_memory()
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    print(machine() + (" (smoke: every row runs once on tiny inputs; the numbers mean nothing)"
                       if args.smoke else ""), flush=True)
    batch = 2 if args.smoke else 32
    for device in devices:
        if not args.smoke:
            table(device, 1, args.repeats, memory=True)
        table(device, batch, 1 if args.smoke else max(3, args.repeats // 2), memory=not args.smoke,
              more_rounds=0 if args.smoke else MORE_ROUNDS)
        if not args.smoke:
            table(device, 64, 1, memory=True)
        table(device, batch, 1 if args.smoke else 3, memory=not args.smoke, more_rounds=0 if args.smoke else 1,
              functions=method_rows(device), heading="every method (flow: below), ")
    flow_table((1,) if args.smoke else (1, 4), 1 if args.smoke else 5)
    script_table(1 if args.smoke else 5, (3, 6) if args.smoke else (64, 320), batch,
                 more_rounds=0 if args.smoke else MORE_ROUNDS)
    removal_table(batch, 1 if args.smoke else 7)
    family_table(1, 1, names=("deit3_small_patch16_224",)) if args.smoke else family_table(8, 7)
    comparison_table(1, "raw-attention") if args.smoke else comparison_table(32)  # the smoke: the path, cheaply


if __name__ == "__main__":
    main()
