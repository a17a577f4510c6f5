"""Explaining many pictures: batches through the model, decoding and writing in worker threads.

Why it is built this way (each point measured; bench/README.md):

* The main thread runs the model; two threads decode pictures and two write results. On a GPU
  they overlap the model, which then waits for neither. On the CPU the model's threads already
  fill every core, and overlapping cost 20%, so there the next batch is decoded while this one
  is written, between model runs.
* Torch runs in the main thread only: each thread that runs a parallel torch op gets an OpenMP
  pool of its own, and with more OpenMP threads than cores libgomp cuts its spin-waits short,
  so the model's threads fell asleep at every barrier and it ran 4% slower. So results reach
  the writers as numpy arrays, and the workers use numpy alone (decoding, upsampling,
  colouring, PNG writing); only --per-layer's figure still resizes its thumbnails with torch.
* The main thread makes each picture's model input as its decoding ends, while the workers
  still decode and write, with torch on one thread: its other OpenMP thread would spin on a
  core the workers need (with two threads the run was slower than before). Made just before
  the model, the inputs took ~0.6 ms per picture, with the other core idle.
* glibc is asked to keep freed memory for reuse: otherwise every batch faults its buffers in
  afresh, ~10% of a folder run.
* Output names are claimed in the main thread, in picture order, before a write starts. A
  writer publishes its files under them with links that never replace a file (writing.py), and
  where another run took a name meanwhile it claims the next: concurrent runs never share one.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import errno
import sys
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from .console import Printout
from .evaluate import perturbation_test
from .explanations import explain, maps_by_layer, run_method
from .images import ImageError, read_picture, to_input
from .model import DEFAULT_MODEL
from .outputs import Names, PictureResult, file_endings, file_tag, write
from .report import entry as report_entry, write_report


@dataclass(frozen=True)
class Job:
    """What to do with every picture (checked by the command line, or by a caller)."""
    method: str                   # a key of rollout.METHODS
    category: int | None          # the class explained, for a method that uses the gradient
    head_fusions: tuple           # e.g. ("mean",) or ("mean", "min", "max")
    discard_ratio: float
    output_dir: Path
    batch_size: int = 32
    per_layer: bool = False       # also the rollout through each layer (drawing.layer_figure)
    html: bool = False            # also the explorer page (explorer.py)
    report: bool = False          # also report.md and report.html over all pictures (needs evaluate)
    evaluate: bool = False        # also the perturbation test of every map (evaluate.py)
    save_grid: bool = False       # also the (G, G) map as .npy
    model: str = DEFAULT_MODEL    # a key of model.ARCHITECTURES, which the weights are of


def explain_batch(weights, batch, job, device):
    """[(path, (H, W, 3) uint8 picture, (3, 224, 224) its to_input)] -> [PictureResult]: one model
    run, through explain() or explain_by_layer's two steps, and the perturbation test where
    asked. Results hold numpy arrays, for the writer threads."""
    inputs = torch.stack([model_input for _, _, model_input in batch]).to(device)
    if job.per_layer or job.html:  # explain_by_layer, keeping the model's maps for the page
        logits, attentions, gradients = run_method(weights, inputs, job.method, job.category)
        by_layer, own = maps_by_layer(job.method, attentions, gradients, job.head_fusions, job.discard_ratio)
        maps = {f: m[-1] for f, m in by_layer.items()}  # through all L layers: explain()'s map
        attentions = torch.stack(attentions, dim=1).cpu().numpy() if job.html else None  # (B, L, H, N, N)
    else:
        logits, maps = explain(weights, inputs, job.method, category=job.category, head_fusions=job.head_fusions,
                               discard_ratio=job.discard_ratio)
    probabilities = logits.softmax(dim=-1).cpu().numpy()
    results = []
    for row, (path, picture, _) in enumerate(batch):
        grids = {f: m[row] for f, m in maps.items()}
        category = job.category if job.category is not None else int(probabilities[row].argmax())
        results.append(PictureResult(
            path, picture, probabilities[row], {f: g.cpu().numpy() for f, g in grids.items()},
            layers={f: (by_layer[f][:, row].cpu().numpy(), own[f][:, row].cpu().numpy())
                    for f in job.head_fusions} if job.per_layer or job.html else {},
            category=category,
            faithfulness=perturbation_test(weights, inputs[row], grids, category) if job.evaluate else None,
            method=job.method, attentions=attentions[row] if job.html else None, model=job.model))
    return results


class DiskFull(Exception):
    """The output folder's file system filled up, so the run stopped; the message says how far
    it got."""


def run(paths, weights, job, device, printout=None):
    """Explain every picture of ``paths`` with ``weights`` (on ``device``), printing each one's
    report and files as it is written, through ``printout`` (console.Printout; by default one on
    sys.stdout) -> the number of pictures that failed.

    A picture that cannot be read is reported and skipped, unless it is the only one: then its
    ImageError is raised before anything is written. A picture whose map is not finite (weights
    that overflow on it) is reported and skipped, its files never written. A full disk stops the
    run: writes not yet begun are dropped, no batch is started, and DiskFull is raised once the
    writes under way have ended.
    """
    from tqdm import tqdm

    printout = printout or Printout()

    keep_freed_memory()
    # Pillow warns about files it reads well (palette transparency, odd EXIF fields): a run
    # reports only what stops a picture.
    warnings.filterwarnings("ignore", module=r"PIL\.")
    names = Names(job.output_dir, file_tag(job.method, job.head_fusions, job.discard_ratio, job.category, job.model))
    overlap_model = device.type != "cpu"
    batches = [paths[i:i + job.batch_size] for i in range(0, len(paths), job.batch_size)]
    finished, failures, full, entries = 0, 0, None, []
    disk_full = threading.Event()

    def write_unless_full(result, endings, targets):
        """-> the lines to print, and the picture's entry in the report (or None)."""
        if disk_full.is_set():
            return None  # dropped: the run is stopping
        try:
            lines, targets = write(result, endings, names, targets)
            return lines, report_entry(result, targets["overlay"]) if job.report else None
        except OSError as error:
            if error.errno in (errno.ENOSPC, errno.EDQUOT):
                disk_full.set()
            raise

    def collect(write_future):
        """Print a write's lines above the progress bar, or count its failure."""
        nonlocal finished, failures, full
        try:
            written = write_future.result()
        except OSError as error:
            if error.errno in (errno.ENOSPC, errno.EDQUOT):
                full = full or error  # reported once, for the whole run
            else:
                failures += 1
                print(f"cannot write results: {error}", file=sys.stderr)
        else:
            if written is not None:
                lines, entry = written
                with bar.external_write_mode():  # above the progress bar
                    printout.line("\n".join(lines))
                finished += 1
                entries.extend([entry] if entry else [])

    with ThreadPoolExecutor(2) as decoders, ThreadPoolExecutor(2) as writers, \
            tqdm(total=len(paths), unit="picture", disable=None if len(paths) > 1 else True) as bar:
        decode = lambda batch: [decoders.submit(_read, path) for path in batch]
        decoding, writes = decode(batches[0]), []
        for batch, following in zip(batches, batches[1:] + [[]]):
            with torch_threads(1):  # the workers have the cores (module docstring)
                decoded = [_with_input(future.result()) for future in decoding]
            while writes and not overlap_model:  # on the CPU, the model waits for every write
                collect(writes.pop(0))
            if disk_full.is_set():
                break
            if overlap_model:
                decoding = decode(following)
            good = []
            for path, made in zip(batch, decoded):
                if not isinstance(made, ImageError):
                    good.append((path, *made))
                elif len(paths) == 1:
                    raise made
                else:
                    failures += 1
                    bar.write(f"skipped {made}", file=sys.stderr)
            for result in explain_batch(weights, good, job, device) if good else []:
                if result.not_finite():
                    failures += 1
                    bar.write(f"skipped {result.path}: {result.not_finite()}; nothing written", file=sys.stderr)
                    continue
                endings = file_endings(result, job.save_grid, job.per_layer)
                targets = names.claim(result.path, endings)  # here, so names follow picture order
                writes.append(writers.submit(write_unless_full, result, endings, targets))
            if not overlap_model:
                decoding = decode(following)
            while writes and writes[0].done():  # print in picture order
                collect(writes.pop(0))
            bar.update(len(batch))
        for future in writes:
            collect(future)
    if full:
        raise DiskFull(f"{job.output_dir}: {full.strerror.lower()}: the run stopped with {finished} of "
                       f"{len(paths)} pictures written, each whole (those listed above); nothing "
                       "partial was left")
    if entries:
        try:
            printout.line("\n".join(str(path) for path in write_report(entries, job)))
        except OSError as error:
            if error.errno in (errno.ENOSPC, errno.EDQUOT):
                raise DiskFull(f"{job.output_dir}: {error.strerror.lower()}: no report was written; the "
                               f"{finished} pictures listed above are whole") from None
            print(f"cannot write the report: {error}", file=sys.stderr)
            failures += 1
    return failures


def _read(path):
    """read_picture, its ImageError returned rather than raised (it runs in a worker thread)."""
    try:
        return read_picture(path)
    except ImageError as error:
        return error


def _with_input(picture):
    """A decoded picture -> (picture, its model input); an ImageError as it is."""
    return picture if isinstance(picture, ImageError) else (picture, to_input(picture))


@contextmanager
def torch_threads(count):
    """torch's intra-op threads (the main thread's) set to ``count`` for the block, then back."""
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def keep_freed_memory():
    """Ask glibc to keep large freed blocks for reuse instead of returning each to the system.
    Elsewhere (no glibc) nothing changes."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"))
        libc.mallopt(-3, 1 << 28)  # M_MMAP_THRESHOLD: blocks up to 256 MB come from the heap
        libc.mallopt(-1, 1 << 29)  # M_TRIM_THRESHOLD: keep up to 512 MB of freed heap
    except (OSError, AttributeError, TypeError):
        pass
