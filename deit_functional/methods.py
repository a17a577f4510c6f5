"""METHODS: the one table of every explanation method. The command line, ``explain()``, the output
file names, the explorer, the report and the docs all read it.

A method is what its model run must keep (model_run.Keeps) and one pure function from that run
to its map: ``map(run, head_fusion, discard_ratio) -> (B, G, G)``, max 1, or for a method whose
map is per input pixel (``per_pixel``) (B, 224, 224), signed, max |value| 1. The rollouts also
say how they build up layer by layer (rollout.Rollout), which the --per-layer figure and the
explorer page show. A method's name is looked up once, where it enters (``method_named``), and
the Method itself is passed on from there.

The families, a module each: rollout.py (Attention Rollout and Flow, Gradient Rollout,
Chefer et al.'s rule), attention_gradients.py (raw attention, Grad-SAM, TAM, Beyond
Intuition, LeGrad), token_cams.py (Grad-CAM), pixel_relevance.py (input × gradient, integrated
gradients, CP-LRP and AttnLRP, whose rules are in model.py), transformer_attribution.py
(Chefer et al.'s LRP).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from functools import wraps
from typing import Callable

import torch

from . import max_flow
from .attention_gradients import LEGRAD_LAYERS, beyond_intuition, grad_sam, legrad, raw_attention, tam
from .model_run import Keeps
from .pixel_relevance import pixel_relevance
from .rollout import HEAD_FUSIONS, ROLLOUTS, Rollout, rolled_out
from .token_cams import grad_cam
from .transformer_attribution import transformer_attribution

STEPS = 20  # the integrated gradient's steps in TAM and Beyond Intuition, as both papers' code
INPUT_STEPS = 32  # integrated gradients' steps by default (--steps)


def no_check():
    """For a method that runs wherever the core packages do."""


@dataclass(frozen=True)
class Method:
    """One explanation method: what it needs from the model, its map, and how it is shown."""
    name: str                 # its key in METHODS, e.g. for explain()
    keeps: Keeps              # what the model run must keep for it
    map: Callable             # (model_run.ModelRun, head_fusion, discard_ratio) -> (B, G, G), max 1 (per_pixel: below)
    option: str               # its name under its script's --method
    file_name: str            # its name in output file names
    title: str
    description: str          # how it works, in one line, for --help
    paper: str                # where it comes from, in a few words
    fusions: tuple = HEAD_FUSIONS  # the head fusions it offers; one word where it fuses its own way
    cli_discard_ratio: float | None = None  # the command line's default discard ratio; None: it discards nothing
    check_available: Callable = no_check   # raises ImportError naming what to install
    rollout: Rollout | None = None  # how its map builds up layer by layer, where it does
    per_pixel: bool = False   # its map has a value per input pixel (B, 224, 224), signed, not per patch

    @property
    def uses_gradient(self):
        """Whether it explains one class, through gradients of that class's logit."""
        return self.keeps.explains_class

    @property
    def fuses_heads(self):
        return self.fusions == HEAD_FUSIONS

    @property
    def discards(self):
        return self.cli_discard_ratio is not None

    @property
    def steps(self):
        """The steps its integrated gradients take from the black picture (0: it integrates none)."""
        return self.keeps.input_steps

    def with_steps(self, count):
        """The same method integrating in ``count`` steps (where it integrates)."""
        if not self.steps:
            raise ValueError(f"method {self.name!r} integrates nothing: it takes no steps")
        return replace(self, keeps=replace(self.keeps, input_steps=count))


def rollout_method(name, **shown):
    """The row of a method rollout.ROLLOUTS describes."""
    spec = ROLLOUTS[name]
    return Method(name, Keeps(attention_gradients=spec.uses_gradient), rolled_out_map(spec), rollout=spec, **shown)


def rolled_out_map(spec):
    """Rollout ``spec`` as a Method's map: (run, head_fusion, discard_ratio) -> (B, G, G)."""
    @wraps(rolled_out)
    def map_of(run, head_fusion, discard_ratio):
        return rolled_out(spec, run.attentions, run.gradients, head_fusion, discard_ratio, run.prefix)
    return map_of


def fused(method_map):
    """A map of (run, head_fusion) as a Method's map; it discards nothing."""
    @wraps(method_map)
    def map_of(run, head_fusion, discard_ratio):
        return method_map(run, head_fusion)
    return map_of


def steps(count, first):
    """``count`` integration steps α from ``first`` (0 or 1/count) to 1, as floats."""
    return tuple(torch.linspace(first, 1, count).tolist())


_TABLE = [
    rollout_method(
        "attention", option="rollout", file_name="attention-rollout", cli_discard_ratio=0.9,
        title="Attention Rollout", paper="Abnar & Zuidema, ACL 2020",
        description="each layer's attention, heads fused, rows renormalised, multiplied through "
                    "the layers"),
    rollout_method(
        "gradient", option="rollout", file_name="gradient-rollout", cli_discard_ratio=0.9,
        title="Gradient Rollout", paper="Gildenblat's vit-explain, 2020",
        description="each layer's attention weighted by the gradient of the class's logit, heads "
                    "fused, negatives clamped, rows renormalised"),
    rollout_method(
        "chefer", option="chefer", file_name="chefer", cli_discard_ratio=0.0,
        title="Chefer et al.'s rule", paper="Chefer, Gur & Wolf, ICCV 2021",
        description="R <- R + fuse_h((grad*attn)+) R from R = I, rows not renormalised; by default "
                    "nothing discarded, as in the paper"),
    rollout_method(
        "flow", option="flow", file_name="attention-flow", cli_discard_ratio=0.9,
        title="Attention Flow", paper="Abnar & Zuidema, ACL 2020", check_available=max_flow.require_scipy,
        description="the maximum flow from the class token through the layers' attention, read as "
                    "capacities, to each patch; needs SciPy"),
    Method(
        "raw-attention", Keeps(), fused(raw_attention), option="raw-attention", file_name="raw-attention",
        title="Raw attention", paper="the baseline of Chefer et al., CVPR 2021",
        description="the last layer's class-token attention, heads fused"),
    Method(
        "grad-cam", Keeps(attention_input_gradient=True), fused(grad_cam), option="grad-cam",
        file_name="grad-cam", fusions=("none",), title="Grad-CAM", paper="Selvaraju et al., ICCV 2017",
        description="ReLU of the last block's attention input (norm1), its channels weighted by their "
                    "mean gradient, as pytorch-grad-cam does for ViTs; no heads to fuse"),
    Method(
        "grad-sam", Keeps(attention_gradients=True), fused(grad_sam), option="grad-sam", file_name="grad-sam",
        title="Grad-SAM", paper="Barkan et al., CIKM 2021",
        description="the mean over the layers of fuse_h(attn * ReLU(grad)), class-token row"),
    Method(
        "tam", Keeps(integrated=steps(STEPS, 0.0)), fused(tam), option="tam", file_name="tam",
        fusions=("mean",), title="Transition Attention Maps", paper="Yuan et al., NeurIPS 2021 workshop",
        description="the last layer's class-token row carried down the layers as a Markov chain, "
                    f"weighted by the gradient integrated over {STEPS} scaled copies of the picture"
                    "; heads by mean, as the paper"),
    Method(
        "beyond-intuition", Keeps(attention_gradients=True, integrated=steps(STEPS, 1 / STEPS)),
        fused(beyond_intuition), option="beyond-intuition", file_name="beyond-intuition",
        fusions=("weighted",), title="Beyond Intuition (head-wise)", paper="Chen et al., TMLR 2023",
        description="R <- R + (sum_h I_h attn_h) R from layer 4, heads weighted by |attnT grad|, "
                    f"weighted by the gradient integrated over {STEPS} steps; heads its own way"),
    Method(
        "legrad", Keeps(read_out_layers=LEGRAD_LAYERS), fused(legrad), option="legrad", file_name="legrad",
        title="LeGrad", paper="Bousselham et al., ICCV 2025",
        description="the last two layers' ReLU(d s_l / d attn_l), s_l the class logit read from "
                    "layer l's class token, heads fused, averaged over the rows"),
    Method(
        "input-gradient", Keeps(input_rules="gradient"), fused(pixel_relevance), option="input-gradient",
        file_name="input-gradient", fusions=("none",), per_pixel=True, title="Input x gradient",
        paper="Shrikumar et al., 2016", description="each input pixel times the gradient of the class's "
        "logit, summed over the colours"),
    Method(
        "integrated-gradients", Keeps(input_rules="gradient", input_steps=INPUT_STEPS), fused(pixel_relevance),
        option="integrated-gradients", file_name="integrated-gradients", fusions=("none",), per_pixel=True,
        title="Integrated gradients", paper="Sundararajan et al., ICML 2017",
        description="(picture - black) times the gradient averaged along the straight path from a "
                    f"black picture, Gauss-Legendre steps (--steps, default {INPUT_STEPS})"),
    Method(
        "cp-lrp", Keeps(input_rules="cp-lrp"), fused(pixel_relevance), option="cp-lrp", file_name="cp-lrp",
        fusions=("none",), per_pixel=True, title="CP-LRP", paper="Ali et al., ICML 2022",
        description="gradient x input with LayerNorm's sigma and the attention constants and GELU "
                    "by the identity rule: relevance conserved, but for what the biases, the class "
                    "token and the position embedding take"),
    Method(
        "attnlrp", Keeps(input_rules="attnlrp"), fused(pixel_relevance), option="attnlrp", file_name="attnlrp",
        fusions=("none",), per_pixel=True, title="AttnLRP", paper="Achtibat et al., ICML 2024",
        description="LRP with LayerNorm and GELU by the identity rule, the uniform rule on q.kT and "
                    "attn.v, softmax by its own rule"),
    Method(
        "transformer-attribution", Keeps(attention_gradients=True, attention_relevances=True),
        fused(transformer_attribution),
        option="transformer-attribution", file_name="transformer-attribution", fusions=("mean",),
        title="Transformer Attribution", paper="Chefer, Gur & Wolf, CVPR 2021",
        description="each layer's LRP relevance of its attention (their rules: alpha1-beta0, the "
                    "z-rule halved on products, residual shares rescaled) times its gradient, clamped, "
                    "heads by mean as the paper, rolled out as in chefer"),
]
METHODS = {m.name: m for m in _TABLE}


def method_named(method):
    """A Method, or a key of METHODS -> its Method; else a ValueError that lists the methods."""
    if isinstance(method, Method):
        return method
    try:
        return METHODS[method]
    except (KeyError, TypeError):
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}") from None
