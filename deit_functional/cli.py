"""The command line of attention_rollout.py and gradient_rollout.py: parse and check, then hand
the work to pipeline.run.

Every argument is checked before any work starts, and bad input ends the run with the usage
line, one error line on stderr and exit status 2, before anything is written.
"""
import argparse
from dataclasses import dataclass, replace
import math
import os
import sys
import tempfile
from pathlib import Path

import torch

from .architectures import KNOWN, ArchitectureError, architecture, at_size
from .console import Printout, names_printable
from .images import ImageError
from .drawing import BACKDROPS, Look
from .labels import class_index, feature_names, named, read_labels
from .localisation import BoxesError, read_boxes
from .sanity import PICTURES as SANITY_PICTURES
from .scores import RANDOM_SEEDS
from .model import C, DEFAULT_MODEL, READ_OUTS
from .outputs import looks_like_a_result
from .pipeline import DiskFull, Job, run
from .methods import INPUT_STEPS, METHODS, STEPS
from .rollout import HEAD_FUSIONS
from .weights import WEIGHTS_VARIABLE, WeightsError, architecture_of, at_image_size, load_weights, with_read_out

# what --evaluate adds, measured in bench/README.md ("What --evaluate costs")
EVALUATE_COST = ("on 2 CPU cores about 0.8 s more per picture with one fusion, 2 s with all three, where a "
                 "folder run without it takes about 0.02 s per picture")
PICTURE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".avif", ".heic", ".heif"}


class UsageError(Exception):
    """Bad input found before any work: reported as one line, exit status 2."""


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


def path(text):
    """An argparse type: a Path, refused when empty -- Path("") would be the current folder."""
    if not text:
        raise argparse.ArgumentTypeError("an empty path names no file or folder")
    return Path(text)


def listed(parse):
    """An argparse type for an option that takes several values: each argument may hold a
    comma-separated list, each item parsed by ``parse``."""
    def parse_list(text):
        items = [item.strip() for item in text.split(",")]
        if not all(items):
            raise argparse.ArgumentTypeError(f"an empty item in {text!r}")
        return [parse(item) for item in items]
    return parse_list


def model_name(text):
    """An argparse type: timm's name of a ViT this forward runs (architectures.architecture)."""
    try:
        architecture(text)
    except ArchitectureError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return text


BATCH = 32  # pictures per forward pass, by default
MAP_BUDGET = 2 << 30  # bytes of attention maps a default batch may keep (architectures.Architecture.map_bytes)
PAGE_TOKENS = 600  # above this many tokens the explorer page (L H N^2 bytes) is refused

# Attention Flow's cost grows as the cube of the tokens (N max-flow problems on a graph of L N^2
# edges): about a second a picture on DeiT-tiny's 197 tokens, 35 s on ViT-Ti/16 384's 577 (33
# times, where the cube says 25; discard 0, bench/README.md). On a model of more tokens than
# DeiT's, a run is told what flow will cost, and refused where one picture would take more than
# FLOW_MINUTES (DINOv2's 1,374 tokens: about 6 minutes a picture).
FLOW_SECONDS = 1.0
FLOW_MINUTES = 5
DEIT_TOKENS = KNOWN[DEFAULT_MODEL].N  # 197, where FLOW_SECONDS was measured


def flow_seconds(a, pictures=1):
    """Attention Flow's estimated cost, in seconds, for ``pictures`` of Architecture ``a``."""
    return pictures * FLOW_SECONDS * (a.N / DEIT_TOKENS) ** 3


discard_ratio = bounded(float, 0.0, 1.0, "outside [0, 1)")
positive_int = bounded(int, 1, float("inf"), "not a positive integer")


PURPOSE = {False: "where DeiT-tiny's (or --model's) class token looks, through all 12 layers",
           True: "where DeiT-tiny (or --model) looks for one class, from the gradient of that class's logit "
                 "(one backward pass at inference)"}  # by whether the methods use the gradient


def parser_for(methods):
    """The parser of a script that offers ``methods`` (Method, its default first)."""
    default = methods[0]
    p = argparse.ArgumentParser(
        description=f"{default.title}: {PURPOSE[default.uses_gradient]}. Writes, per picture, a "
                    "figure PNG (the picture, and the map over a grey copy of it: red = most relevant, "
                    "a colour bar giving the map's range, or a signed map's full-colour points; titled with method, fusion and discard ratio where "
                    "the method has them, and class) and the raw mask as .npy (float32, the picture's height x width, in [0, 1]; "
                    "signed for the per-pixel relevance methods), then prints the top-5 classes and every file written; a run of several "
                    "pictures also writes predictions.csv.",
        epilog="Exit status: 0 done; 1 some pictures failed (each reported, e.g. unreadable among several), "
               "the disk filled up (the run stops; every picture written is whole), or standard output "
               "could not be written (a closed pipe is no failure: the run goes on, silent); 2 bad input "
               "or no weights, nothing written.")
    p.add_argument("--image", nargs="+", required=True, type=path, metavar="PATH",
                   help="picture file(s) or folder(s) of pictures "
                        f"({', '.join(sorted(s[1:] for s in PICTURE_SUFFIXES))})")
    if default.uses_gradient:
        p.add_argument("--category", type=listed(str), nargs="+", required=True, metavar="CLASS",
                       help=f"ImageNet class(es) to explain, each by index 0..{C - 1} or by name, "
                            "case-insensitive, any unique start of one of its names (e.g. 87 or 'african grey', "
                            "258 or samoyed), or of the --labels file's names; for a model without a classifier "
                            "(DINO, DINOv2) a feature index; several, each explained in turn: 87 258 or 87,258")
    else:  # refused in check_applies, with a line that says where a class's map comes from
        p.add_argument("--category", nargs="+", help=argparse.SUPPRESS)
    p.set_defaults(class_specific=default.uses_gradient)
    options = {m.option: m for m in methods}
    p.add_argument("--method", type=listed(choice({**options, ALL: ALL})), nargs="+", default=[[default]],
                   metavar="NAME",
                   help="; ".join(f"{m.option}: {m.title}, {m.description} ({m.paper})" for m in methods)
                        + f" (default: {default.option}); several, each explained in turn: "
                        + " ".join(list(options)[:2]) + " or " + ",".join(list(options)[:2])
                        + f"; {ALL}: every method of both scripts ({len(METHODS)}), compared (implies --compare)")
    own_way = [m.option for m in methods if not m.fuses_heads]
    p.add_argument("--head-fusion", choices=HEAD_FUSIONS + ("all",),
                   help="how each layer's 3 heads are combined; 'all' draws mean, min and max "
                        "in one figure (default: mean; all with --report)"
                        + (f"; {', '.join(own_way)} treat the heads their own way and take none" if own_way else ""))
    discarding = [m for m in methods if m.discards]
    defaults = ", ".join(f"{m.cli_discard_ratio:g} with --method {m.option}" for m in discarding)
    p.add_argument("--discard-ratio", type=discard_ratio, metavar="R",
                   help="share of each layer's lowest attention entries set to zero, in [0, 1); the "
                        "attention to the class token is never discarded (default: " + defaults + ")"
                        + ("; only the rollouts (" + ", ".join(m.option for m in discarding) + ") discard"
                           if len(discarding) < len(methods) else ""))
    integrating = [m for m in methods if m.steps]
    if integrating:
        p.add_argument("--steps", type=positive_int, metavar="S",
                       help=f"the steps of {', '.join(m.option for m in integrating)}'s path from a black "
                            f"picture (Gauss-Legendre points; default: {integrating[0].steps}); more is closer "
                            "to the integral and costs S forward and backward passes per picture ("
                            + " and ".join(m.option for m in methods if m.keeps.integrated)
                            + f" keep their papers' {STEPS})")
    else:
        p.add_argument("--steps", type=positive_int, metavar="S",
                       help=f"with --method all: integrated-gradients' steps (default: {INPUT_STEPS})")
    p.add_argument("--overlay", choices=BACKDROPS, default="grey",
                   help="what the map is drawn over: a greyscale copy of the picture, so that red means "
                        "relevance and nothing else, or the picture in colour (default: %(default)s)")
    p.add_argument("--alpha", type=bounded(float, 0.0, math.nextafter(1.0, 2.0), "outside [0, 1]"), default=0.5,
                   metavar="A",
                   help="the map's share of each pixel of the figure, in [0, 1] (default: %(default)s)")
    p.add_argument("--weights", type=path, metavar="PATH",
                   help="local checkpoint: a .pth, .bin or .safetensors file in timm's or Hugging Face "
                        "transformers' naming, or the folder transformers' save_pretrained writes "
                        f"(e.g. facebook/deit-tiny-patch16-224's); default: the file ${WEIGHTS_VARIABLE} "
                        "names, else the pretrained weights from a local cache (the DeiT release's, timm's "
                        "or transformers'), else timm's, downloaded (README: Weights)")
    p.add_argument("--model", type=model_name, default=DEFAULT_MODEL, metavar="NAME",
                   help="which ViT to explain, by timm's name; checked: " + ", ".join(KNOWN) + " (default: "
                        "%(default)s, the homework's); another plain timm ViT is read from timm. Its input "
                        "size, mean and std are the checkpoint's own")
    p.add_argument("--labels", type=path, metavar="FILE",
                   help="the class names of a fine-tuned head, one per line, as many as the head has classes "
                        "(default: ImageNet's 1000)")
    p.add_argument("--read-out", choices=READ_OUTS, metavar="TOKEN",
                   help="a distilled DeiT's prediction, which gradients explain: mean (of the class and the "
                        "distillation token's heads; timm's, the default), cls or dist (one head); the maps "
                        "always read the class token's row")
    p.add_argument("--output-dir", type=path, default=Path("results"), metavar="DIR",
                   help="folder for the results, created if missing; existing files are never "
                        "overwritten (default: ./%(default)s)")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu, cuda, cuda:1 (default: %(default)s)")
    p.add_argument("--batch-size", type=positive_int, metavar="N",
                   help=f"pictures per forward pass (default: {BATCH}, fewer where a batch's attention maps "
                        f"would pass {MAP_BUDGET >> 30} GiB: DINOv2's are 544 MB a picture)")
    p.add_argument("--image-size", type=positive_int, metavar="S",
                   help="the model's input side in pixels, a multiple of its patch: the position embedding "
                        "resampled as timm does (default: the checkpoint's; e.g. 224 for DINOv2's 518, "
                        "whose 1,374 tokens are slow and large)")
    p.add_argument("--save-grid", action="store_true",
                   help="also save the patch map (DeiT's 14x14) as <name>_grid.npy (for a per-pixel method, "
                        "the sum over each patch)")
    p.add_argument("--per-layer", action="store_true",
                   help="also write <name>_layers.png (the rollouts: " + ", ".join(m.option for m in methods if m.rollout)
                        + "): top row, the rollout after layers 1..12 (left to right); bottom row, each "
                        "layer's raw class-token attention, heads fused")
    p.add_argument("--html", action="store_true",
                   help="also write <name>_explorer.html (the rollouts), one self-contained page (it opens "
                        "from disk, offline) to explore the picture: the map layer by layer, and where any patch or "
                        "the class token attends, head by head")
    p.add_argument("--report", action="store_true",
                   help="also write report.html (one self-contained file: figures and curves inside) and "
                        "report.md in the output folder (report-2.* and so on if taken): which head fusion "
                        "scored best, over all pictures and for each method and class of the run, then each "
                        "picture's figures, top-5 and faithfulness; implies --evaluate, and --head-fusion "
                        "all unless one is given")
    p.add_argument("--evaluate", action="store_true",
                   help="also score each fusion's faithfulness by the perturbation test of Chefer "
                        "et al. 2021 (probability of the " + ("--category" if default.uses_gradient else "predicted")
                        + " class as the most / least relevant patches are removed): prints the "
                        "areas under the curves, writes them with the curves to <name>_evaluation.json "
                        "and plots them to <name>_evaluation.png (needs matplotlib). It costs 20 more "
                        f"forward passes per picture and fusion: {EVALUATE_COST}")
    p.add_argument("--compare", action="store_true",
                   help="also score every map of the run by every metric -- patch removal (as --evaluate), "
                        "token removal, deletion and insertion against a blurred copy, the randomisation "
                        "sanity check, and with --boxes the pointing game and the relevance in the boxes -- "
                        f"against a random map ({RANDOM_SEEDS} seeds) and each map inverted, and write comparison.md, "
                        "comparison.html and comparison.csv (comparison-2.* and so on if taken): a row per "
                        "method and fusion, each metric's mean over the pictures with its 95%% bootstrap "
                        "interval, scored for " + ("each --category" if default.uses_gradient else
                                                   "each picture's predicted class (which the class-specific "
                                                   "methods of --method all explain)")
                        + "; it costs about 47 forward passes per map and picture, and the sanity check, "
                          "on the run's first --sanity-pictures, 12 more runs of each method")
    p.add_argument("--sanity-pictures", type=bounded(int, 0, float("inf"), "not a whole number >= 0"),
                   metavar="N", help="--compare's randomisation check runs on the run's first N pictures, "
                                     f"0 for none (default: {SANITY_PICTURES})")
    p.add_argument("--boxes", type=path, metavar="FILE",
                   help="the objects' boxes, for --compare's localisation scores: a CSV with the header "
                        "picture,class,x0,y0,x1,y1 or a JSON list of {picture, class, box: [x0, y0, x1, y1]}, "
                        "in the picture's pixels (x0 <= x < x1), picture by file name, class by index or name")
    p.add_argument("-q", "--quiet", action="count", default=0,
                   help="-q: one line per picture (and explanation): what was explained and the figure "
                        "written; -qq: only the last line, the run's summary (errors are always printed)")
    return p


ALL = "all"  # --method all: every method of the table


def choice(options):
    """An argparse type: one of ``options`` {name: value} -> its value."""
    def parse(text):
        if text not in options:
            raise argparse.ArgumentTypeError(f"invalid choice: {text!r} (choose from {', '.join(options)})")
        return options[text]
    return parse


def collect_pictures(arguments):
    """Files as given, folders expanded to their pictures (sorted, not recursive, hidden files
    left out). Pictures this tool wrote are never taken: skipped in a folder (with a note),
    refused when named."""
    paths = []
    for path in map(Path, arguments):
        if path.is_dir():
            found = sorted(p for p in path.iterdir()
                           if p.suffix.lower() in PICTURE_SUFFIXES and not p.name.startswith(".") and p.is_file())
            pictures = [p for p in found if not looks_like_a_result(p)]
            skipped = len(found) - len(pictures)
            if not pictures:
                raise UsageError(f"{path}: folder holds no pictures" + (" but results of earlier runs"
                                                                        if skipped else ""))
            if skipped:
                print(f"{path}: skipping {skipped} result{'s' * (skipped > 1)} of earlier runs", file=sys.stderr)
            paths += pictures
        elif path.is_file():
            if looks_like_a_result(path):
                raise UsageError(f"{path}: is a result of an earlier run, not a picture to explain "
                                 "(rename it to explain it anyway)")
            paths.append(path)
        elif path.exists():  # e.g. a named pipe, which would wait for a writer forever
            raise UsageError(f"{path}: not a regular file")
        else:
            raise UsageError(f"{path}: no such file")
    return paths


def check_output_dir(folder):
    """Refuse an output path that is a file, leads through a broken symbolic link, or cannot be
    written, before any work is done."""
    dangling = next((p for p in [folder, *folder.parents] if p.is_symlink() and not p.exists()), None)
    if dangling:
        raise UsageError(f"{dangling}: output path is a symbolic link to {os.readlink(dangling)}, which does not exist")
    existing = next(p for p in [folder, *folder.absolute().parents] if p.exists())
    if not existing.is_dir():
        raise UsageError(f"{existing}: output path is not a folder")
    try:  # a real probe: permission bits say nothing for root or on a read-only file system
        tempfile.TemporaryFile(dir=existing).close()
    except OSError:
        raise UsageError(f"{existing}: output folder is not writable") from None


def check_device(name):
    """The torch device ``name``, once a small computation on it has come back right."""
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UsageError(f"unknown device {name!r}; usable here: {', '.join(usable_devices())}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {name}: no CUDA GPU is available here; usable here: {', '.join(usable_devices())}")
    # a device torch names may still hold no data (meta), lack its backend (hpu, xpu, ...) or
    # not be present (cuda:1 on a one-GPU machine): compute on it and read the answer back
    try:
        works = (torch.ones(2, device=device) * 2).sum().item() == 4
    except Exception as error:
        reason = str(error).splitlines()[0].split(". ")[0] if str(error) else type(error).__name__
        raise UsageError(f"--device {name} is not usable here ({reason}); usable here: "
                         f"{', '.join(usable_devices())}") from None
    if not works:
        raise UsageError(f"--device {name} computes wrong results here; usable here: {', '.join(usable_devices())}")
    return device


def usable_devices():
    """The devices this machine can compute on: cpu, each CUDA GPU, Apple's mps."""
    cuda = [f"cuda:{i}" for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []
    return ["cpu", *cuda, *(["mps"] if torch.backends.mps.is_available() else [])]


def job_from(args):
    """The parsed arguments -> the pipeline's Job, checked: every option given applies to a
    method chosen."""
    chosen = flat_items(args.method)
    every = ALL in chosen
    if every:
        chosen = available(METHODS.values())
    check_applies(args, chosen)
    compare = args.compare or every
    if args.boxes is not None and not compare:
        raise UsageError("--boxes gives --compare its localisation scores: add --compare (or --method all)")
    if args.sanity_pictures is not None and not compare:
        raise UsageError("--sanity-pictures sets --compare's randomisation check: add --compare (or --method all)")
    try:
        boxes = read_boxes(args.boxes) if args.boxes is not None else None
    except BoxesError as error:
        raise UsageError(str(error)) from None
    if args.steps:
        chosen = tuple(m.with_steps(args.steps) if m.steps else m for m in chosen)
    fusion = args.head_fusion or ("all" if args.report else "mean")
    # the classes are checked here where they are ImageNet's or a --labels file's, else (a model
    # without a classifier: features, unless the weights bring a head) once the weights are in
    known = args.labels is not None or architecture(args.model).classes == C
    return Job(methods=chosen, categories=flat_items(categories(args, Outputs.of(args, C))) if known else (),
               head_fusions=HEAD_FUSIONS if fusion == "all" else (fusion,),
               discard_ratio=args.discard_ratio, output_dir=args.output_dir, batch_size=batch_size(args),
               per_layer=args.per_layer, html=args.html, report=args.report,
               evaluate=args.evaluate or args.report, compare=compare, boxes=boxes,
               sanity_pictures=SANITY_PICTURES if args.sanity_pictures is None else args.sanity_pictures,
               save_grid=args.save_grid,
               model=args.model,
               look=Look(args.overlay, args.alpha), quiet=args.quiet)


@dataclass(frozen=True)
class Outputs:
    """What the model's outputs are called: ``names`` (None: ImageNet's), and whether they are
    features (a model without a classifier) rather than classes."""
    names: tuple | None
    features: bool = False

    @staticmethod
    def of(args, classes):
        """For a head of ``classes`` (0: none): the --labels file's names, the features', or ImageNet's."""
        if args.labels is not None:
            try:
                return Outputs(tuple(read_labels(args.labels)))
            except ValueError as error:
                raise UsageError(str(error)) from None
        if classes == 0:
            return Outputs(tuple(feature_names(architecture(args.model).D)), features=True)
        return Outputs(None)


def categories(args, outputs):
    """--category's texts -> class indices, by the names of ``outputs`` (Outputs)."""
    with named(outputs.names, outputs.features):
        try:
            return [[class_index(text) for text in items] for items in getattr(args, "category", None) or []]
        except ValueError as error:
            raise UsageError(f"argument --category: {error}") from None


def sized(args):
    """--model's Architecture at --image-size."""
    a = architecture(args.model)
    try:
        return at_size(a, args.image_size) if args.image_size else a
    except ArchitectureError as error:
        raise UsageError(f"--image-size: {error}") from None


def batch_size(args):
    """--batch-size, or BATCH pictures, fewer where their maps would pass MAP_BUDGET."""
    return args.batch_size or max(1, min(BATCH, MAP_BUDGET // sized(args).map_bytes))


def check_model(args, methods, pictures):
    """Refuse what --model cannot do, before its weights load: an input size not a multiple of
    the patch, a read-out without two heads, Attention Flow where one picture would take over
    FLOW_MINUTES (the message says what the run's ``pictures`` would), an explorer page of too
    many tokens."""
    a = sized(args)
    if args.read_out is not None and not a.distilled:
        raise UsageError(f"--read-out: {a.title} ({args.model}) has one head, on its class token; only a "
                         "distilled DeiT has two")
    if any(m.name == "flow" for m in methods) and flow_seconds(a) > FLOW_MINUTES * 60:
        raise UsageError(f"--method flow: {a.title} has {a.N} tokens; Attention Flow's cost grows as their cube: "
                         f"about {flow_seconds(a) / 60:.0f} min a picture, {flow_seconds(a, pictures) / 3600:.1f} h "
                         "for these: give a smaller --image-size, or choose rollout")
    if a.N > PAGE_TOKENS and args.html:
        grid = math.isqrt(PAGE_TOKENS - a.prefix)  # the largest input whose page is allowed
        raise UsageError(f"--html: {a.title} has {a.N} tokens; its page would hold {a.map_bytes / 3 / 2**20:.0f} MB "
                         f"of maps per picture: give --image-size {grid * a.P} or less ({grid * grid + a.prefix} tokens)")


def check_head(args, weights):
    """Refuse what ``weights`` (of --model) cannot do, in one line each: a --labels file of
    another size than the head, a head not ImageNet's without one, probabilities of a model
    without a classifier. -> the Outputs of their head."""
    a = architecture_of(weights)
    title = f"{a.title} ({args.model})"
    if args.labels is not None and a.classes == 0:
        raise UsageError(f"--labels: {title} has no classifier; give --weights a checkpoint with a head")
    outputs = Outputs.of(args, a.classes)
    if args.labels is not None and len(outputs.names) != a.classes:
        raise UsageError(f"--labels {args.labels}: {len(outputs.names)} names, but the head of these weights has "
                         f"{a.classes} classes")
    if args.labels is None and a.classes not in (0, C):
        raise UsageError(f"--weights: a head of {a.classes} classes, not ImageNet's {C}: name them with --labels FILE")
    if a.classes == 0 and (args.evaluate or args.compare or args.report or ALL in flat_items(args.method)):
        raise UsageError(f"{title} has no classifier (its output is its {a.D} features), so there is no class "
                         "probability to evaluate or compare by; fine-tune a head and pass it with --weights")
    return outputs


def flat_items(lists):
    """Lists of items -> their items, in order, each once."""
    return tuple(dict.fromkeys(item for items in lists for item in items))


def available(methods):
    """The methods that can run here (e.g. not flow without SciPy)."""
    return tuple(m for m in methods if not unavailable(m))


def unavailable(method):
    """Why ``method`` cannot run here (its check_available's ImportError), or None."""
    try:
        method.check_available()
    except ImportError as error:
        return error
    return None


def check_applies(args, methods):
    """Refuse an option none of ``methods`` (Method) takes: a head fusion, a discard ratio, or a
    layer-by-layer output for a method that is not built layer by layer."""
    if not args.class_specific and args.category is not None and any(m.uses_gradient for m in methods):
        raise UsageError("--category: attention_rollout.py's --method all explains and scores each picture's "
                         "predicted class; for a class you choose run gradient_rollout.py --method all --category C")
    if not args.class_specific and args.category is not None:  # attention_rollout.py
        raise UsageError(f"--category: {', '.join(m.option for m in methods)} explain{'s' * (len(methods) == 1)} "
                         "what the model looks at, not one class; for a class's map run gradient_rollout.py")
    if args.head_fusion == "all" and not any(m.fuses_heads for m in methods):
        raise UsageError(f"--head-fusion all: {', '.join(m.option for m in methods)} fuse"
                         f"{'s' * (len(methods) == 1)} no heads by mean, min or max")
    if args.head_fusion not in (None, "all") and not any(args.head_fusion in m.fusions for m in methods):
        offered = "; ".join(f"{m.option}: {' or '.join(m.fusions)}" for m in methods)
        raise UsageError(f"--head-fusion {args.head_fusion}: no method chosen offers it ({offered})")
    if args.steps is not None and not any(m.steps for m in methods):
        fixed = [m.option for m in methods if m.keeps.integrated]
        none = [m.option for m in methods if not m.keeps.integrated]
        whose = "its paper's" if len(fixed) == 1 else "their papers'"
        why = ([f"{', '.join(fixed)} keep{'s' * (len(fixed) == 1)} {whose} {STEPS}"] if fixed else []) + \
              ([f"{', '.join(none)} take{'s' * (len(none) == 1)} no steps"] if none else [])
        raise UsageError("--steps sets integrated-gradients' steps (gradient_rollout.py); " + "; ".join(why))
    if args.discard_ratio is not None and not any(m.discards for m in methods):
        raise UsageError(f"--discard-ratio: {', '.join(m.option for m in methods)} discard"
                         f"{'s' * (len(methods) == 1)} nothing; only the rollouts do")
    flat = [m for m in methods if m.rollout is None]
    if (args.per_layer or args.html) and flat:
        option = "--per-layer" if args.per_layer else "--html"
        raise UsageError(f"{option} shows a map built layer by layer; {', '.join(m.option for m in flat)} "
                         f"{'is' if len(flat) == 1 else 'are'} not (choose a rollout)")


def script_methods(class_specific):
    """The methods (Method) a script offers, in METHODS' order, its default first:
    gradient_rollout.py the class-specific ones, attention_rollout.py the others."""
    return tuple(m for m in METHODS.values() if m.uses_gradient == class_specific)


def main(class_specific, argv=None):
    """Run gradient_rollout.py (``class_specific``) or attention_rollout.py -> exit status."""
    with names_printable():  # file names that are not valid UTF-8 print as they are (console.py)
        return _main(script_methods(class_specific), argv)


def _main(methods, argv):
    parser = parser_for(methods)
    args = parser.parse_args(argv)
    printout = Printout()
    try:
        job = job_from(args)
        for method in job.methods:
            method.check_available()  # e.g. SciPy for flow, before the model loads
        paths = collect_pictures(args.image)
        check_output_dir(args.output_dir)
        device = check_device(args.device)
        check_model(args, job.methods, len(paths))
        weights = load_weights(args.weights, device=device, model=job.model)
        outputs = check_head(args, weights)
        job = replace(job, categories=flat_items(categories(args, outputs)))  # by the head the weights have
        if args.image_size:
            weights = at_image_size(weights, args.image_size)
        weights = with_read_out(weights, args.read_out or "mean")
        a = sized(args)
        if any(m.name == "flow" for m in job.methods) and a.N > DEIT_TOKENS:
            print(f"--method flow: {a.N} tokens, so Attention Flow will take about {flow_seconds(a):.0f} s a "
                  f"picture, {flow_seconds(a, len(paths)) / 60:.0f} min in all (its cost grows as the tokens' cube)",
                  file=sys.stderr)
        if ALL in (item for items in args.method for item in items):  # every check passed: say what is left out
            for method in METHODS.values():
                if unavailable(method):
                    print(f"--method all: leaving out {method.option}: {unavailable(method)}", file=sys.stderr)
        with named(outputs.names, outputs.features):
            failures = run(paths, weights, job, device, printout)  # raises ImageError if the one picture is unreadable
    except (UsageError, WeightsError, ImageError, ImportError) as error:
        parser.error(str(error))  # usage line + message on stderr, exit status 2
    except DiskFull as error:
        print(error, file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    if failures:
        print(f"{failures} of {len(paths)} pictures failed", file=sys.stderr)
    if printout.failure():
        print(printout.failure(), file=sys.stderr)
    return 1 if failures or printout.failure() else 0
