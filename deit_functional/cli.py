"""The command line shared by attention_rollout.py and gradient_rollout.py.

Parse and check every argument first, then load the weights, then decode pictures, run the
model in batches and write results while the next batch is decoded. Bad input ends the run
with one line on stderr and exit status 2 before anything is written.
"""
import argparse
import ctypes
import ctypes.util
import sys
import tempfile
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from .explain import GRADIENT_RULES
from .model import CLASSES
from .rollout import HEAD_FUSIONS

PICTURE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
DEFAULT_OUTPUT_DIR = "results"


class UsageError(Exception):
    """Bad input found before any work: reported as one line, exit status 2."""


def parser_for(gradient):
    what = ("Gradient Rollout: where DeiT-tiny looks for one class, from the gradient of that "
            "class's logit (one backward pass at inference)" if gradient else
            "Attention Rollout: where DeiT-tiny's class token looks, through all 12 layers")
    p = argparse.ArgumentParser(
        description=f"{what}. Writes, per picture, an overlay PNG at the picture's size (red = "
                    "most relevant) and the raw mask as .npy (float32, the picture's height x "
                    "width, values in [0, 1]), then prints the top-5 classes and every file written.",
        epilog="Exit status: 0 done; 1 some pictures of several failed (each reported); "
               "2 bad input or no weights, nothing written.")
    p.add_argument("--image", nargs="+", required=True, metavar="PATH",
                   help="picture file(s) or folder(s) of pictures "
                        f"({', '.join(sorted(s[1:] for s in PICTURE_SUFFIXES))})")
    if gradient:
        p.add_argument("--category", type=category_index, required=True, metavar="INDEX",
                       help="ImageNet class to explain, 0..999 (e.g. 87 African grey parrot, 258 Samoyed)")
        p.add_argument("--method", choices=GRADIENT_RULES, default="rollout",
                       help="rollout: gradient-weighted attention rollout, rows renormalised; "
                            "chefer: Chefer et al. 2021, R <- R + mean_h((grad*attn)+) R "
                            "(default: %(default)s)")
    p.add_argument("--head-fusion", choices=HEAD_FUSIONS + ("all",), default="mean",
                   help="how each layer's 3 heads are combined; 'all' writes mean, min and max "
                        "side by side in one picture (default: %(default)s)")
    p.add_argument("--discard-ratio", type=discard_ratio, metavar="R",
                   help="share of each layer's lowest attention entries set to zero, in [0, 1); "
                        "the attention to the class token is never discarded (default: 0.9"
                        + (", or 0 with --method chefer, as in the paper)" if gradient else ")"))
    p.add_argument("--weights", type=Path, metavar="FILE",
                   help="local checkpoint (.pth, .bin or .safetensors); default: timm's pretrained "
                        "weights from the local cache, or downloaded")
    p.add_argument("--output-dir", type=Path, default=Path(DEFAULT_OUTPUT_DIR), metavar="DIR",
                   help="folder for the results, created if missing; existing files are never "
                        "overwritten (default: ./%(default)s)")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu, cuda, cuda:1 (default: %(default)s)")
    p.add_argument("--batch-size", type=positive_int, default=32, metavar="N",
                   help="pictures per forward pass (default: %(default)s)")
    p.add_argument("--save-grid", action="store_true",
                   help="also save the 14x14 patch map as <name>_grid.npy")
    p.add_argument("--per-layer", action="store_true",
                   help="also write <name>_layers.png: top row, the rollout after layers 1..12 "
                        "(left to right); bottom row, each layer's raw class-token attention, heads fused")
    p.add_argument("--evaluate", action="store_true",
                   help="also score each fusion's faithfulness by the perturbation test of Chefer "
                        "et al. 2021 (probability of the " + ("--category" if gradient else "predicted")
                        + " class as the most / least relevant patches are removed): prints the "
                        "areas under the curves, writes them with the curves to <name>_evaluation.json "
                        "and plots them to <name>_evaluation.png (needs matplotlib)")
    return p


def bounded(kind, low, high, meaning):
    """An argparse type: ``kind(text)``, refused unless low <= value < high (nan never is)."""
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not {'an integer' if kind is int else 'a number'}: "
                                             f"{text!r}") from None
        if not low <= value < high:
            raise argparse.ArgumentTypeError(f"{text} is {meaning}")
        return value
    return parse


category_index = bounded(int, 0, CLASSES, f"not an ImageNet class index (0..{CLASSES - 1})")
discard_ratio = bounded(float, 0.0, 1.0, "outside [0, 1)")
positive_int = bounded(int, 1, float("inf"), "not a positive integer")


def collect_pictures(arguments):
    """Files as given, folders expanded to their pictures (sorted, not recursive)."""
    paths = []
    for argument in arguments:
        path = Path(argument)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.suffix.lower() in PICTURE_SUFFIXES and p.is_file())
            if not found:
                raise UsageError(f"{path}: folder holds no pictures")
            paths += found
        elif path.exists():
            paths.append(path)
        else:
            raise UsageError(f"{path}: no such file")
    return paths


def check_output_dir(folder):
    """Refuse an output path that is a file or cannot be written, before any work is done."""
    existing = next(p for p in [folder, *folder.absolute().parents] if p.exists())
    if not existing.is_dir():
        raise UsageError(f"{existing}: output path is not a folder")
    try:  # a real probe: permission bits say nothing for root or on a read-only file system
        tempfile.TemporaryFile(dir=existing).close()
    except OSError:
        raise UsageError(f"{existing}: output folder is not writable") from None


def check_device(name):
    import torch
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UsageError(f"unknown device {name!r}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {name}: no CUDA GPU is available here")
    try:
        torch.empty(0, device=device)  # e.g. cuda:1 on a one-GPU machine, or mps without Metal
    except (RuntimeError, AssertionError) as error:
        reason = str(error).splitlines()[0].split(". ")[0]
        raise UsageError(f"--device {name} is not usable here ({reason})") from None
    return device


class Names:
    """Output file names that carry method, fusion, ratio and category, and never collide with
    an existing file or one written earlier in this run (a counter is added instead)."""

    def __init__(self, folder, tag):
        self.folder, self.tag, self.taken = folder, tag, set()

    def claim(self, picture_path, kinds):
        stem = f"{Path(picture_path).stem}_{self.tag}"
        for n in range(1, 10_000):
            base = stem if n == 1 else f"{stem}-{n}"
            paths = {kind: self.folder / f"{base}{suffix}" for kind, suffix in kinds.items()}
            if not any(p in self.taken or p.exists() or p.is_symlink() for p in paths.values()):
                self.taken.update(paths.values())
                return paths
        raise RuntimeError(f"no free output name for {stem}")


def output_tag(args, gradient):
    method = ("chefer" if args.method == "chefer" else "gradient-rollout") if gradient else "attention-rollout"
    parts = [method, args.head_fusion, f"discard{args.discard_ratio:g}"]
    if gradient:
        parts.append(f"category{args.category}")
    return "_".join(parts)


def keep_freed_memory():
    """Ask glibc to keep large freed blocks for reuse instead of returning each to the system:
    otherwise every batch page-faults its buffers in afresh, ~10% of a folder run here (bench/).
    Elsewhere (no glibc) nothing changes."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"))
        libc.mallopt(-3, 1 << 28)  # M_MMAP_THRESHOLD: blocks up to 256 MB come from the heap
        libc.mallopt(-1, 1 << 29)  # M_TRIM_THRESHOLD: keep up to 512 MB of freed heap
    except (OSError, AttributeError, TypeError):
        pass


def main(gradient, argv=None):
    keep_freed_memory()
    parser = parser_for(gradient)
    args = parser.parse_args(argv)
    if args.discard_ratio is None:
        args.discard_ratio = 0.0 if gradient and args.method == "chefer" else 0.9
    try:
        return run(args, gradient)
    except UsageError as error:
        parser.error(str(error))  # usage line + message on stderr, exit status 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def run(args, gradient):
    from .images import ImageError, read_picture, to_input
    from .weights import WeightsError, load_weights

    paths = collect_pictures(args.image)
    check_output_dir(args.output_dir)
    device = check_device(args.device)
    try:
        weights = load_weights(args.weights, device=device)
    except WeightsError as error:
        raise UsageError(str(error)) from None

    def decode(path):
        try:
            return read_picture(path)
        except ImageError as error:
            return error

    first = None
    if len(paths) == 1:  # one picture: every problem is found before anything is written
        first = decode(paths[0])
        if isinstance(first, ImageError):
            raise UsageError(str(first))

    import torch
    from tqdm import tqdm

    fusions = HEAD_FUSIONS if args.head_fusion == "all" else (args.head_fusion,)
    names = Names(args.output_dir, output_tag(args, gradient))
    failures = 0

    def finish(future, bar):
        nonlocal failures
        try:
            bar.write(future.result(), file=sys.stdout)  # above the progress bar, if one is shown
        except OSError as error:
            failures += 1
            print(f"cannot write results: {error}", file=sys.stderr)

    # Decoding and writing run in threads. On a GPU they overlap the model; on the CPU the
    # model's threads already fill every core, and overlapping them cost 20% here (bench/), so
    # there the next batch is decoded while this one is written, between model runs.
    # Those threads use numpy, and torch runs in this thread: each thread that runs a parallel
    # torch op gets its own OpenMP worker pool, and once there are more OpenMP threads than
    # cores, libgomp cuts its spin-waits short, so the model's threads fell asleep at every
    # barrier (~700 sleeps a batch) and the model ran 4% slower (README, Speed). Only --per-layer's
    # figure still resizes the picture with torch in a writer thread.
    overlap_model = device.type != "cpu"
    batches = [paths[i:i + args.batch_size] for i in range(0, len(paths), args.batch_size)]
    with ThreadPoolExecutor(2) as decoder, ThreadPoolExecutor(2) as writer, \
            tqdm(total=len(paths), unit="picture", disable=None if len(paths) > 1 else True) as bar:
        decode_all = lambda batch: [decoder.submit(decode, p) for p in batch]
        pending, writes = decode_all(batches[0]) if first is None else [done(first)], []
        for index, batch in enumerate(batches):
            decoded = [f.result() for f in pending]
            next_batch = batches[index + 1] if index + 1 < len(batches) else []
            if overlap_model:
                pending = decode_all(next_batch)
            good = [(path, item) for path, item in zip(batch, decoded) if not isinstance(item, ImageError)]
            for item in decoded:
                if isinstance(item, ImageError):
                    failures += 1
                    bar.write(f"skipped {item}", file=sys.stderr)
            if good:
                images = torch.stack([to_input(picture) for _, picture in good]).to(device)
                results = explain_batch(weights, images, fusions, args, gradient)
                for (path, picture), result in zip(good, results):
                    targets = names.claim(path, output_kinds(result, args))  # here, not in a writer thread
                    writes.append(writer.submit(write_results, path, picture, result, targets, args))
            if not overlap_model:
                pending = decode_all(next_batch)
            while writes and (writes[0].done() or not overlap_model):  # print in order
                finish(writes.pop(0), bar)
            bar.update(len(batch))
        for future in writes:
            finish(future, bar)
    if failures:
        print(f"{failures} of {len(paths)} pictures failed", file=sys.stderr)
        return 1
    return 0


def done(value):
    """A future that already holds ``value``."""
    future = Future()
    future.set_result(value)
    return future


def explain_batch(weights, images, fusions, args, gradient):
    """Run the model on a batch -> one dict per picture of what write_results needs."""
    from .evaluate import perturbation_test
    from .explain import rollouts, rollouts_by_layer, run_model
    from .labels import top_classes

    category = args.category if gradient else None
    rule = args.method if gradient else "rollout"
    logits, attentions, gradients = run_model(weights, images, category)  # once, for everything below
    maps = rollouts(attentions, gradients, fusions, args.discard_ratio, rule)
    probabilities = logits.softmax(dim=-1).cpu()
    results = [{"report": top_classes(p), "grids": {f: m[row].cpu() for f, m in maps.items()}}
               for row, p in enumerate(probabilities)]
    if args.per_layer:
        for fusion in fusions:
            by_layer, raw = rollouts_by_layer(attentions, gradients, fusion, args.discard_ratio, rule)
            for row, result in enumerate(results):
                result.setdefault("layers", {})[fusion] = (by_layer[:, row].cpu(), raw[:, row].cpu())
    if args.evaluate:
        for row, result in enumerate(results):
            target = category if gradient else int(probabilities[row].argmax())
            scores = perturbation_test(weights, images[row], result["grids"], target)
            result["evaluation"] = {"category": target, "fusions": scores}
            result["report"] += evaluation_lines(target, scores)
    return results


def evaluation_lines(category, scores):
    from .labels import class_names
    lines = [f"  faithfulness for class {category} {class_names()[category]} "
             "(perturbation test; positive AUC: lower is better, negative AUC: higher is better)",
             "    fusion  positive AUC  negative AUC"]
    lines += [f"    {name:6}  {s['positive_auc']:12.4f}  {s['negative_auc']:12.4f}" for name, s in scores.items()]
    return lines


def output_kinds(result, args):
    """{kind: file-name ending} of the files one picture's result is written to."""
    grids, layers = result["grids"], result.get("layers", {})
    named = lambda fusion, ending: f"_{fusion}{ending}" if len(grids) > 1 else ending
    kinds = {"overlay": ".png"}
    for fusion in grids:
        kinds[f"mask {fusion}"] = named(fusion, "_mask.npy")
        if args.save_grid:
            kinds[f"grid {fusion}"] = named(fusion, "_grid.npy")
        if fusion in layers:
            kinds[f"layers {fusion}"] = named(fusion, "_layers.png")
    if "evaluation" in result:
        kinds["evaluation"] = "_evaluation.json"
        kinds["plot"] = "_evaluation.png"
    return kinds


def write_results(path, picture, result, targets, args):
    """Write one picture's files to ``targets`` {kind: path}; returns the lines to print."""
    from .render import join, layer_figure, overlay, save_json, save_npy, save_png, upsample

    grids, layers, evaluation = result["grids"], result.get("layers", {}), result.get("evaluation")
    args.output_dir.mkdir(parents=True, exist_ok=True)
    masks = {f: upsample(g, picture.shape[:2]) for f, g in grids.items()}
    save_png(targets["overlay"], join([overlay(picture, m) for m in masks.values()]))
    for fusion, mask in masks.items():
        save_npy(targets[f"mask {fusion}"], mask)
        if args.save_grid:
            save_npy(targets[f"grid {fusion}"], grids[fusion].float().numpy())
        if fusion in layers:
            save_png(targets[f"layers {fusion}"], layer_figure(picture, *layers[fusion]))
    notes = []
    if evaluation is not None:
        save_json(targets["evaluation"], {"picture": str(path), **evaluation})
        if not save_curves_plot(targets["plot"], evaluation):
            del targets["plot"]
            notes.append("  (no curves plot: matplotlib is not installed; pip install matplotlib)")
    return "\n".join([f"{path}:", *result["report"], *notes, *(str(t) for t in targets.values())])


def save_curves_plot(path, evaluation):
    """Plot the perturbation curves with matplotlib if it is installed; False where it is not."""
    try:
        import matplotlib
    except ImportError:
        return False
    matplotlib.use("Agg")
    from matplotlib import pyplot as plt
    from .labels import class_names
    from .render import write_atomically

    figure, axes = plt.subplots(1, 2, figsize=(9, 3.6), sharey=True)
    for ax, order, title in zip(axes, ("positive", "negative"),
                                ("most relevant removed first (lower is better)",
                                 "least relevant removed first (higher is better)")):
        for fusion, scores in evaluation["fusions"].items():
            ax.plot(scores["fractions"], scores[order], marker="o",
                    label=f"{fusion}: AUC {scores[order + '_auc']:.3f}")
        ax.set(title=title, xlabel="share of patches removed")
        ax.legend()
    axes[0].set_ylabel(f"p({class_names()[evaluation['category']].split(',')[0]})")
    figure.tight_layout()
    write_atomically(path, lambda p: figure.savefig(p, format="png", dpi=100))
    plt.close(figure)
    return True
