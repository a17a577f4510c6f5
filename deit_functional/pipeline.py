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

import numpy as np
import torch

from .architectures import architecture
from .comparison import write_comparison
from .console import Printout
from .evaluate import perturbation_test
from .explanations import explain, maps_by_layer, run_method
from .images import ImageError, read_picture, to_input
from .model import DEFAULT_MODEL
from .sanity import PICTURES as SANITY_PICTURES
from .scores import predicted_classes, score_batch
from .drawing import Look
from .outputs import Names, PictureResult, file_endings, file_tag, printed, write, write_predictions
from .pixel_relevance import patch_maps
from .report import entry as report_entry, write_report
from .weights import architecture_of


@dataclass(frozen=True)
class Job:
    """What to do with every picture (checked by the command line, or by a caller)."""
    methods: tuple                # methods.Method, each explained in turn
    categories: tuple             # the classes the methods that use the gradient explain, each in turn
    head_fusions: tuple           # e.g. ("mean",) or ("mean", "min", "max"), for the methods that fuse heads
    discard_ratio: float | None   # None: each method's own (Method.cli_discard_ratio); for those that discard
    output_dir: Path
    batch_size: int = 32
    per_layer: bool = False       # also the rollout through each layer (drawing.layer_figure)
    html: bool = False            # also the explorer page (explorer.py)
    report: bool = False          # also report.md and report.html over all pictures (needs evaluate)
    evaluate: bool = False        # also the perturbation test of every map (evaluate.py)
    compare: bool = False         # also score every map by every metric: comparison.md, .html, .csv
    boxes: dict | None = None     # the objects' boxes, for the comparison's localisation (localisation.read_boxes)
    sanity_pictures: int = SANITY_PICTURES  # the comparison's randomisation check runs on the first this many
    save_grid: bool = False       # also the (G, G) map as .npy
    model: str = DEFAULT_MODEL    # timm's name (architectures.py), which the weights are of
    look: Look = Look()           # how the result figures draw the maps
    quiet: int = 0                # 0 everything; 1 a line per picture and explanation; 2 the summary only

    def ratio(self, method):
        """The discard ratio Method ``method`` runs with (0 where it discards nothing)."""
        if not method.discards:
            return 0.0
        return method.cli_discard_ratio if self.discard_ratio is None else self.discard_ratio

    def fusions(self, method):
        """The head fusions Method ``method`` runs with: the job's it offers, else its own first."""
        return tuple(f for f in self.head_fusions if f in method.fusions) or method.fusions[:1]

    def explanations(self):
        """-> [(method, category)]: every method, for every class where it explains one (a
        comparison without categories: None, each picture's predicted class)."""
        if any(m.uses_gradient for m in self.methods) and not self.categories and not self.compare:
            raise ValueError("a method that uses the gradient explains a class: give categories")
        return [(m, c) for m in self.methods for c in ((self.categories or (None,)) if m.uses_gradient else (None,))]


def explain_batch(weights, batch, job, device, method, category):
    """[(path, (H, W, 3) uint8 picture, (3, 224, 224) its to_input)] -> [PictureResult]: one model
    run of Method ``method`` (for ``category``, or None), through explain() or explain_by_layer's
    two steps, and the perturbation test where asked. Results hold numpy arrays, for the writer
    threads."""
    inputs = torch.stack([model_input for _, _, model_input in batch]).to(device)
    fusions = job.fusions(method)
    if method.uses_gradient and category is None:  # a comparison: each picture's predicted class
        category = predicted_classes(weights, inputs)
    if job.per_layer or job.html:  # explain_by_layer, keeping the model's maps for the page
        run = run_method(weights, inputs, method, category)
        by_layer, own = maps_by_layer(method, run, fusions, job.ratio(method))
        maps = {f: m[-1] for f, m in by_layer.items()}  # through all L layers: explain()'s map
        logits = run.logits
        attentions = torch.stack(run.attentions, dim=1).cpu().numpy() if job.html else None  # (B, L, H, N, N)
    else:
        logits, maps = explain(weights, inputs, method, category=category, head_fusions=fusions,
                               discard_ratio=job.ratio(method))
    # a model without a classifier gives its features (model.head): shown as they are
    probabilities = (logits.softmax(dim=-1) if architecture_of(weights).classes else logits).cpu().numpy()
    classes = (probabilities.argmax(-1) if category is None  # the class each picture's map explains
               else np.broadcast_to(torch.as_tensor(category).cpu(), len(batch)))
    results = []
    for row, (path, picture, _) in enumerate(batch):
        grids = {f: m[row] for f, m in maps.items()}
        explained = int(classes[row])
        results.append(PictureResult(
            path, picture, probabilities[row], {f: g.cpu().numpy() for f, g in grids.items()},
            layers={f: (by_layer[f][:, row].cpu().numpy(), own[f][:, row].cpu().numpy())
                    for f in fusions} if job.per_layer or job.html else {},
            category=explained,
            faithfulness=perturbation_test(weights, inputs[row], patch_maps(method, grids, architecture_of(weights).P),
                                           explained) if job.evaluate else None,
            method=method, attentions=attentions[row] if job.html else None, model=job.model,
            discard_ratio=job.ratio(method)))
    return results


class DiskFull(Exception):
    """The output folder's file system filled up, so the run stopped; the message says how far
    it got."""


def run(paths, weights, job, device, printout=None):
    """Explain every picture of ``paths`` with ``weights`` (on ``device``) by each of the job's
    explanations, printing each one's lines and files as it is written, through ``printout``
    (console.Printout; by default one on sys.stdout) -> the number of pictures that failed.

    A picture that cannot be read is reported and skipped, unless it is the only one: then its
    ImageError is raised before anything is written. An explanation whose map is not finite
    (weights that overflow on the picture) is reported and skipped, its files never written. A
    full disk stops the run: writes not yet begun are dropped, no batch is started, and DiskFull
    is raised once the writes under way have ended. A run of several pictures ends with
    predictions.csv (predictions-2.csv, ... where taken) and a summary line.
    """
    from tqdm import tqdm

    printout = printout or Printout()
    explanations = job.explanations()
    keep_freed_memory()
    # Pillow warns about files it reads well (palette transparency, odd EXIF fields): a run
    # reports only what stops a picture.
    warnings.filterwarnings("ignore", module=r"PIL\.")
    names = {(m, c): Names(job.output_dir, file_tag(m, job.fusions(m), job.ratio(m), c, job.model))
             for m, c in explanations}
    overlap_model = device.type != "cpu"
    batches = [paths[i:i + job.batch_size] for i in range(0, len(paths), job.batch_size)]
    finished, failed, full, entries, predicted, scored = set(), set(), None, [], {}, []
    unwritten = 0  # the report or the predictions, when they could not be written
    printed_last = None  # the number of the picture whose lines were printed last
    disk_full = threading.Event()

    def write_unless_full(result, endings, targets):
        """-> the paths written and notes, and the result's entry in the report (or None)."""
        if disk_full.is_set():
            return None  # dropped: the run is stopping
        try:
            named = names[result.method, _asked(result, job.categories)]
            files, notes = write(result, endings, named, targets, job.look)
            return files, notes, report_entry(result, files["overlay"]) if job.report else None
        except OSError as error:
            if error.errno in (errno.ENOSPC, errno.EDQUOT):
                disk_full.set()
            raise

    def collect(number, result, write_future):
        """Print a write's lines above the progress bar, or count its failure."""
        nonlocal full, printed_last
        try:
            written = write_future.result()
        except OSError as error:
            if error.errno in (errno.ENOSPC, errno.EDQUOT):
                full = full or error  # reported once, for the whole run
            else:
                failed.add(number)
                print(f"cannot write results: {error}", file=sys.stderr)
        else:
            if written is not None:
                files, notes, entry = written
                lines = printed(result, files, notes, job.quiet, first=printed_last != number)
                printed_last = number
                if lines:
                    with bar.external_write_mode():  # above the progress bar
                        printout.line("\n".join(lines))
                finished.add(number)
                entries.extend([entry] if entry else [])

    with ThreadPoolExecutor(2) as decoders, ThreadPoolExecutor(2) as writers, \
            tqdm(total=len(paths), unit="picture", disable=None if len(paths) > 1 else True) as bar:
        decode = lambda batch: [decoders.submit(_read, path) for path in batch]
        decoding, writes = decode(batches[0]), []
        for index, (batch, following) in enumerate(zip(batches, batches[1:] + [[]])):
            with torch_threads(1):  # the workers have the cores (module docstring)
                decoded = [_with_input(future.result(), architecture_of(weights)) for future in decoding]
            while writes and not overlap_model:  # on the CPU, the model waits for every write
                collect(*writes.pop(0))
            if disk_full.is_set():
                break
            if overlap_model:
                decoding = decode(following)
            good, numbers = [], []
            for number, (path, made) in enumerate(zip(batch, decoded), start=index * job.batch_size):
                if not isinstance(made, ImageError):
                    good.append((path, *made))
                    numbers.append(number)
                elif len(paths) == 1:
                    raise made
                else:
                    failed.add(number)
                    bar.write(f"skipped {made}", file=sys.stderr)
            by_explanation = [explain_batch(weights, good, job, device, *e) for e in explanations] if good else []
            whole = [k for k in range(len(good)) if all(results[k].not_finite() is None for results in by_explanation)]
            if job.compare and whole:  # a picture with a map that is not finite is reported below, and not scored
                scored += score_batch(weights, [good[k] for k in whole], [numbers[k] for k in whole], job, device,
                                      [[results[k] for k in whole] for results in by_explanation])
            for number, results in zip(numbers, zip(*by_explanation)):  # each picture's explanations together
                for result in results:
                    reason = result.not_finite()
                    if reason:
                        failed.add(number)
                        bar.write(f"skipped {result.path}{_which(result, explanations)}: {reason}; nothing written",
                                  file=sys.stderr)
                        continue
                    predicted.setdefault((number, result.category), result)
                    endings = file_endings(result, job.save_grid, job.per_layer)
                    named = names[result.method, _asked(result, job.categories)]
                    targets = named.claim(result.path, endings)  # in picture order
                    writes.append((number, result, writers.submit(write_unless_full, result, endings, targets)))
            if not overlap_model:
                decoding = decode(following)
            while writes and writes[0][2].done():  # print in picture order
                collect(*writes.pop(0))
            bar.update(len(batch))
        for write_ in writes:
            collect(*write_)
    done = len(finished - failed)
    if full:
        raise DiskFull(f"{job.output_dir}: {full.strerror.lower()}: the run stopped with {done} of "
                       f"{len(paths)} pictures written, each whole (those listed above); nothing "
                       "partial was left")
    extras = []
    try:
        if entries:
            extras += write_report(entries, job)
        if scored:
            extras += write_comparison(scored, job.output_dir, f"Which explanation to trust: "
                                       f"{architecture(job.model).title}, {len(finished - failed)} pictures")
        if len(paths) > 1 and predicted:
            extras.append(write_predictions([predicted[k] for k in sorted(predicted) if k[0] in finished], job))
    except OSError as error:
        if error.errno in (errno.ENOSPC, errno.EDQUOT):
            raise DiskFull(f"{job.output_dir}: {error.strerror.lower()}: no report or predictions were "
                           f"written; the {done} pictures listed above are whole") from None
        print(f"cannot write the report or predictions: {error}", file=sys.stderr)
        unwritten = 1
    if extras and job.quiet < 2:
        printout.line("\n".join(map(str, extras)))
    if len(paths) > 1:
        printout.line(f"{done} of {len(paths)} pictures explained ({len(explanations)} explanation"
                      f"{'s' * (len(explanations) > 1)} each); results in {job.output_dir}")
    return len(failed) + unwritten


def _asked(result, categories):
    """The category a result was asked for: its class for a method that uses the gradient, else
    None (and None where no categories were given: a comparison's predicted classes)."""
    return result.category if result.method.uses_gradient and categories else None


def _which(result, explanations):
    """' (gradient-rollout, class 87)' where a run has several explanations, else ''."""
    if len(explanations) == 1:
        return ""
    method = result.method
    return f" ({method.file_name}" + (f", class {result.category})" if method.uses_gradient else ")")


def _read(path):
    """read_picture, its ImageError returned rather than raised (it runs in a worker thread)."""
    try:
        return read_picture(path)
    except ImageError as error:
        return error


def _with_input(picture, architecture):
    """A decoded picture -> (picture, its model input for ``architecture``); an ImageError as it is."""
    return picture if isinstance(picture, ImageError) else (picture, to_input(picture, architecture))


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
