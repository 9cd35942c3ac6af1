"""The block checker: runs a fusion block through the student contract, one scored check at a time.

``check_block("my_conv")`` builds the registered block and runs every check in :data:`CHECKS`;
``check_block(MyBlock, checks={"shapes": 2, "trains": 5})`` runs only those, with those points.
Each check builds its own fresh block, so one failure does not spoil the others, and each result
says what was tried and what to change. An exception raised inside the student's code fails that
check and keeps the student's part of the traceback (the checker's own frames are cut out); it
never stops the checker. The random states of ``random``, NumPy and torch are restored afterwards,
so running the checker in a notebook does not change what the notebook computes next.

The checks (default points in brackets; 15 in all, ``own_design`` not counted: it runs only where
an assignment names it):

- ``contract`` [1]: a :class:`~fusionkit.fusion.FusionBlock` subclass, registered with
  ``@register_fusion`` under its name, overriding ``fuse`` (not ``forward``, which does the shape
  checks), built with ``rgb_channels=``/``flow_channels=`` keywords as ``build_model`` builds it.
- ``shapes`` [2]: 2D ``[N, C, H, W]`` and 3D ``[N, C, T, H, W]`` maps, several channel counts and
  sizes (1x1 maps included); outputs keep the input shapes (or, for ``keeps_shape = False``, have
  ``out_channels`` channels), the input dtype, and finite values. With different RGB and flow
  channel counts a block may instead refuse at construction with a ``ValueError`` (sum fusion must).
- ``gradients`` [2]: the fused (RGB) output depends, through autograd, on *both* inputs, the flow
  output on the flow input, and every parameter gets a gradient. Parameters are first perturbed
  from their initial values, so a zero-initialised part (identity initialisation) cannot hide a
  dependency.
- ``gradcheck`` [1]: ``torch.autograd.gradcheck`` in float64 on a tiny input (perturbed parameters,
  eval mode): the analytical gradients match finite differences, so custom autograd code and
  non-differentiable tricks are caught, and the block runs in float64 (no hard-coded float32).
- ``initialisation`` [2]: a block that claims how it starts (class attribute ``starts_as``) does so
  exactly, in train and eval mode: ``"identity"`` returns its inputs (CMA, zero-initialised gates),
  a registered block's name matches that block (conv fusion's ``[I I]`` initialisation is
  ``"sum"``, Feichtenhofer et al. §3.5). ``check_block(..., starts_as=...)`` makes the claim
  required, whatever the class says. A block that claims nothing passes (nothing to check).
- ``deterministic`` [1]: built twice after the same seed, the blocks have equal parameters and
  give equal outputs (also on a second call: no hidden state).
- ``independent_samples`` [1]: each sample's outputs depend on that sample alone. In eval mode
  (perturbed parameters; eval so that BatchNorm's batch statistics, the one accepted mixing, are
  off), changing sample 0 of a batch of 3 leaves samples 1 and 2 unchanged, and each sample run
  alone gives what it gives in the batch. A block that adds ``flow.mean(0)`` passes every other
  check and fails this one: it leaks one video's motion into another's features.
- ``no_inplace`` [1]: the input tensors are neither changed nor written to in place (the towers
  reuse them, and autograd needs them).
- ``trains`` [4]: a two-stream network with the block after ``stage1`` of a small ``tiny`` backbone
  (built by name through ``build_model("spatial", ..., fusion=name)``) and trained by the
  :class:`~fusionkit.training.trainer.Trainer` reaches top-1 0.9 on held-out ``registration`` videos within 10
  epochs, and its epochs take at most 10 times as long as those of the reference block (conv
  fusion), timed just before in the same process (:class:`TrainingCheck` has the settings). The
  videos are rendered in memory with their exact flow
  (:class:`~fusionkit.lab.assignments.snippets.PuzzleSnippets`, 512 for training, 128 held out, 48x48).
  ``registration`` is the puzzle that needs pixel-wise fusion: with these settings late fusion ends
  at 0.50 and 0.44 (two seeds, never above 0.54) and a block that drops the flow stream at 0.20,
  while conv fusion passed for each of 36 seeds, after 2-4 epochs (3 for most), at 1.4 s an epoch
  on an idle 2-core CPU. Timing is a ratio because seconds are not comparable: the same epoch took 1.4 to 15 s on
  this shared machine as other jobs came and went.

- ``own_design`` [3; off by default, a2 names it]: the block is not a renamed copy of a library
  block (:func:`library_blocks`): its ``fuse`` code (as an AST, docstring and comments ignored) is
  not a library block's, and with its (perturbed) weights copied into a library block of the same
  tensor sizes the two give different outputs on random 2D and 3D maps. A copy earns none of its
  points. What it cannot see: a re-implementation with another weight layout (A1's conv fusion
  stacks ``[x^a; x^b]`` where the library interleaves, Eq. 3) computes the same function family
  without the same weights; the a2 rubric, graded by hand, covers that.

Instructors add a check with :func:`register_check`; a check is a function of a
:class:`BlockUnderTest` that returns a message when it passes and raises :class:`CheckFailed`
when it does not.
"""
from __future__ import annotations

import ast
import contextlib
import functools
import inspect
import random
import textwrap
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Mapping, Sequence

import numpy as np
import torch
from torch.autograd.gradcheck import GradcheckError

from fusionkit.lab.assignments.snippets import PuzzleSnippets
from fusionkit.data.puzzles import get_puzzle
from fusionkit.training.evaluate import evaluate
from fusionkit.fusion import FUSIONS, FusionBlock, build_fusion
from fusionkit.methods import build_model
from fusionkit.registry import Registry
from fusionkit.training.trainer import TrainConfig, Trainer
from fusionkit.training.runtime import seed_everything

IDENTITY = "identity"  # the ``starts_as`` value of blocks that return their inputs at initialisation
_HIDDEN_FRAMES = (str(Path(__file__).resolve().parent), str(Path(torch.nn.modules.module.__file__).resolve()))


# --- results -------------------------------------------------------------------------------------
@dataclass
class CheckResult:
    """One scored check: ``kind`` is ``"block check"`` (this module) or ``"notebook test"`` (a test
    cell of an assignment notebook, see :mod:`fusionkit.lab.assignments.notebooks`)."""

    name: str
    passed: bool
    points: float  # earned: max_points or 0
    max_points: float
    message: str
    traceback: str | None = None
    seconds: float = 0.0
    kind: str = "block check"


@dataclass
class CheckReport:
    """The results of one block (``subject`` = its name) or one graded notebook."""

    subject: str
    results: list[CheckResult]
    extra: dict = field(default_factory=dict)

    @property
    def score(self) -> float:
        return sum(r.points for r in self.results)

    @property
    def max_score(self) -> float:
        return sum(r.max_points for r in self.results)

    @property
    def passed(self) -> bool:
        return all(r.passed for r in self.results)

    def __getitem__(self, name: str) -> CheckResult:
        for r in self.results:
            if r.name == name:
                return r
        raise KeyError(f"no check named {name!r} in this report; it has {[r.name for r in self.results]}")

    def to_dict(self) -> dict:
        return {"subject": self.subject, "score": self.score, "max_score": self.max_score,
                "results": [asdict(r) for r in self.results], **self.extra}

    @classmethod
    def from_dict(cls, d: Mapping) -> "CheckReport":
        extra = {k: v for k, v in d.items() if k not in ("subject", "score", "max_score", "results")}
        return cls(d["subject"], [CheckResult(**r) for r in d["results"]], extra)

    def __str__(self) -> str:
        manual = self.extra.get("manual", [])  # a graded notebook's manually graded answers
        width = max((len(r.name) for r in self.results), default=4)
        lines = [f"{self.subject}: {self.score:g} / {self.max_score:g} points"
                 + (f" (automatic; {sum(m['points'] for m in manual):g} more points need manual grading)" if manual else "")]
        for r in self.results:
            mark = "PASS" if r.passed else "FAIL"
            lines.append(f"  {mark} {r.name:<{width}} {r.points:g}/{r.max_points:g}  {r.message}")
            if r.traceback and not r.passed:
                lines += ["      " + line for line in r.traceback.rstrip().splitlines()]
        for m in manual:
            lines.append(f"  TODO {m['grade_id']:<{width}} ?/{m['points']:g}  {m['status']} (rubric in the instructor's notebook)")
        return "\n".join(lines)


class CheckFailed(Exception):
    """Raised by a check whose expectation is not met: ``message`` says what to change, and
    ``traceback`` (the student's part of it) where, when the student's code raised."""

    def __init__(self, message: str, traceback: str | None = None):
        super().__init__(message)
        self.message, self.traceback = message, traceback


def student_traceback(error: BaseException) -> str:
    """The traceback of ``error`` without the checker's frames and torch's module-call plumbing,
    so what is left points into the student's code (and the library code it called)."""
    frames = [f for f in traceback.extract_tb(error.__traceback__)
              if not f.filename.startswith(_HIDDEN_FRAMES)]
    return "".join(traceback.format_list(frames) + traceback.format_exception_only(type(error), error))


def student_call(what: str, fn: Callable, *args, **kwargs):
    """``fn(*args, **kwargs)``; an exception in it fails the check, saying ``what`` raised what."""
    try:
        return fn(*args, **kwargs)
    except CheckFailed:
        raise
    except Exception as e:
        stub = " (a `raise NotImplementedError()` stub is still there)" if type(e) is NotImplementedError and not str(e) else ""
        raise CheckFailed(f"{what} raised {type(e).__name__}: {e}{stub}", student_traceback(e)) from e


# --- the block under test ------------------------------------------------------------------------
@dataclass(frozen=True)
class TrainingCheck:
    """Settings of the ``trains`` check (defaults measured with conv fusion; see the module docstring).

    The network: ``tiny`` backbone of ``widths``, the block after ``position`` of both towers, the
    motion tower truncated there (so the only prediction is the fused one), a per-location layer of
    ``head_hidden`` features before pooling. Training: AdamW, cosine LR, ``batch_size``; after each
    epoch the held-out top-1 is measured and training stops once it reaches ``threshold``. The check
    fails when ``epochs`` end first, or when the block's epochs take on average more than ``budget``
    times as long as an epoch of the reference block (conv fusion) measured just before in the same
    process (:func:`reference_epoch_seconds`): a ratio, as fusionkit measures speed, not seconds
    that mean different things on different machines and loads.
    """

    puzzle: str = "registration"
    videos_per_class: int = 128
    test_videos_per_class: int = 32
    frames: int = 8
    size: int = 48
    new_length: int = 2
    widths: tuple[int, ...] = (8, 16, 32)
    position: str = "stage1"
    head_hidden: int = 64
    epochs: int = 10
    batch_size: int = 16
    lr: float = 3e-3
    threshold: float = 0.9
    budget: float = 10.0  # times the reference block's seconds per epoch
    device: str = "auto"


@functools.lru_cache(maxsize=2)
def training_data(puzzle: str, videos_per_class: int, test_videos_per_class: int, frames: int, size: int,
                  new_length: int):
    """(train, held-out) snippets for the ``trains`` check, rendered once per process and setting."""
    return (PuzzleSnippets(puzzle, videos_per_class, frames, size, new_length, seed=0),
            PuzzleSnippets(puzzle, test_videos_per_class, frames, size, new_length, seed=1))


@dataclass
class BlockUnderTest:
    """What a check receives: the block's class (None when it could not be found, with the reason
    in ``lookup_error``), its registered name, and the options of this run."""

    cls: type | None
    name: str | None
    lookup_error: str | None
    kwargs: dict
    starts_as: str | None  # required claim (check_block's argument), else the class's own
    training: TrainingCheck
    seed: int

    @property
    def label(self) -> str:
        return getattr(self.cls, "__name__", None) or repr(self.name)

    def build(self, rgb_channels: int, flow_channels: int) -> FusionBlock:
        if self.cls is None:
            raise CheckFailed(self.lookup_error)
        if not (isinstance(self.cls, type) and issubclass(self.cls, FusionBlock)):
            raise CheckFailed(f"{self.label} is not a FusionBlock subclass: write `class {self.label}(FusionBlock)` "
                              f"(from fusionkit.fusion import FusionBlock)")
        block = student_call(f"{self.label}(rgb_channels={rgb_channels}, flow_channels={flow_channels})",
                             self.cls, rgb_channels=rgb_channels, flow_channels=flow_channels, **self.kwargs)
        if getattr(block, "rgb_channels", None) != rgb_channels or getattr(block, "flow_channels", None) != flow_channels:
            raise CheckFailed(f"{self.label}.__init__ must call super().__init__(rgb_channels, flow_channels) first")
        return block

    def run(self, block: FusionBlock, rgb: torch.Tensor, flow: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return student_call(f"{self.label} on rgb {shape(rgb)}, flow {shape(flow)}", block, rgb, flow)


def shape(x: torch.Tensor) -> list[int]:
    return list(x.shape)


def maps(rgb_channels: int, flow_channels: int, size: Sequence[int], dtype=torch.float32,
         requires_grad: bool = False, batch: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch of ``batch`` fixed random feature maps per stream with ``size`` = (H, W) or (T, H, W)."""
    g = torch.Generator().manual_seed(0)
    rgb = torch.randn(batch, rgb_channels, *size, generator=g, dtype=dtype).requires_grad_(requires_grad)
    flow = torch.randn(batch, flow_channels, *size, generator=g, dtype=dtype).requires_grad_(requires_grad)
    return rgb, flow


def max_difference(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max()) if a.numel() else 0.0


def tolerance(reference: torch.Tensor) -> float:
    """What float32 rounding may move an output by: 1e-5 of its scale (at least 1e-5)."""
    return 1e-5 * max(1.0, float(reference.abs().max()) if reference.numel() else 0.0)


@torch.no_grad()
def perturb(block: FusionBlock, seed: int, scale: float = 0.1) -> FusionBlock:
    """Add small noise to every parameter: moves zero-initialised parts off zero, where they would
    hide a dependency (no gradient through a zero weight's input) or sit on a kink (ReLU at 0)."""
    g = torch.Generator().manual_seed(seed)
    for p in block.parameters():
        p.add_(torch.randn(p.shape, generator=g, dtype=p.dtype) * scale)
    return block


# --- the registry of checks ----------------------------------------------------------------------
@dataclass(frozen=True)
class Check:
    name: str
    points: float  # default points
    run: Callable[[BlockUnderTest], str]
    by_default: bool = True  # run when no checks are named; False: only when an assignment names it


CHECKS = Registry("block check")


def register_check(name: str, points: float, by_default: bool = True):
    """Decorator adding a check ``fn(block_under_test) -> pass message`` (raising :class:`CheckFailed`
    on failure) to :data:`CHECKS` with its default ``points``; its docstring says what it checks.
    ``by_default=False``: the check runs only where it is named (``own_design``: a1 asks for a copy
    of conv fusion, a2 forbids one)."""

    def wrap(fn: Callable[[BlockUnderTest], str]) -> Callable[[BlockUnderTest], str]:
        CHECKS.register(name)(Check(name, points, fn, by_default))
        return fn

    return wrap


@register_check("contract", 1)
def check_contract(b: BlockUnderTest) -> str:
    """A registered FusionBlock subclass that overrides fuse and builds by keyword."""
    block = b.build(8, 8)  # fails first if it is not a FusionBlock subclass or does not build
    if b.cls.fuse is FusionBlock.fuse:
        raise CheckFailed(f"{b.label} does not override fuse(self, rgb, flow) -> (rgb, flow)")
    if b.cls.forward is not FusionBlock.forward:
        raise CheckFailed(f"{b.label} overrides forward: override fuse instead, so that FusionBlock.forward "
                          f"keeps checking the shapes going in and out")
    if b.name is None or FUSIONS.get(b.name) is not b.cls:
        raise CheckFailed(f"{b.label} is not registered: decorate it with @register_fusion(\"<name>\") "
                          f"(from fusionkit.fusion import register_fusion), so build_model can build it by name")
    channels = student_call(f"{b.label}.out_channels", getattr, block, "out_channels")
    if not isinstance(channels, int):
        raise CheckFailed(f"{b.label}.out_channels must be an int (the fused map's channels), got {channels!r}")
    n = sum(p.numel() for p in block.parameters())
    return f"{b.label} is a FusionBlock registered as {b.name!r}; built for 8/8 channels it has {n:,} parameters"


# (rgb channels, flow channels, size): 2D and 3D maps, a 1x1 map, odd sizes, then unequal channels
SHAPE_CASES: tuple[tuple[int, int, tuple[int, ...]], ...] = (
    (8, 8, (6, 5)), (16, 16, (1, 1)), (4, 4, (7, 7)), (8, 8, (3, 4, 5)), (4, 4, (1, 3, 3)),
    (8, 4, (5, 5)), (8, 4, (2, 5, 5)),
)


@register_check("shapes", 2)
def check_shapes(b: BlockUnderTest) -> str:
    """2D and 3D maps, several channel counts and sizes: output shapes, dtype, finite."""
    tried, refused = [], []
    for rgb_c, flow_c, size in SHAPE_CASES:
        what = f"{len(size)}D maps with {rgb_c} rgb / {flow_c} flow channels of size {list(size)}"
        try:
            block = b.build(rgb_c, flow_c)
        except CheckFailed as e:
            if rgb_c != flow_c and isinstance(e.__cause__, ValueError):  # refusing unequal widths is allowed
                refused.append(f"{rgb_c}/{flow_c}")
                continue
            raise
        rgb, flow = maps(rgb_c, flow_c, size)
        try:
            out = b.run(block.train(), rgb, flow)
        except CheckFailed as e:
            hint = ""
            if rgb_c != flow_c:
                hint = (" -- a block that needs equal rgb and flow channel counts must refuse others when it is "
                        "built: raise a ValueError in __init__ that says so")
            elif len(size) == 3 and all(len(s) == 2 for _, _, s in tried):
                hint = (" -- 2D maps work but 3D maps [N, C, T, H, W] fail: layers such as nn.Conv2d take 4D input "
                        "only; fusionkit.fusion.conv1x1(x, conv) applies a 1x1 nn.Conv2d to 2D and 3D maps")
            raise CheckFailed(f"{what}: {e.message}{hint}", e.traceback) from e
        # keeps_shape = False (e.g. bilinear): only batch, channels (out_channels) and the number of dims are fixed
        expected_rgb = shape(rgb) if block.keeps_shape else [2, block.out_channels]
        got_rgb = shape(out[0]) if block.keeps_shape else shape(out[0])[:2]
        if got_rgb != expected_rgb or out[0].dim() != rgb.dim() or shape(out[1]) != shape(flow):
            raise CheckFailed(f"{what}: expected outputs rgb {expected_rgb}{'' if block.keeps_shape else ' + spatial dims'} "
                              f"and flow {shape(flow)}, got {shape(out[0])} and {shape(out[1])}")
        for stream, x in zip(("rgb", "flow"), out):
            if x.dtype != rgb.dtype:
                raise CheckFailed(f"{what}: the {stream} output is {x.dtype}, the inputs {rgb.dtype}: compute in "
                                  f"the inputs' dtype (create tensors with x.new_zeros / torch.zeros_like)")
            if not torch.isfinite(x).all():
                raise CheckFailed(f"{what}: the {stream} output has NaN or inf values (a division by zero, "
                                  f"log of 0, sqrt of a negative?)")
        tried.append((rgb_c, flow_c, size))
    note = f"; refuses unequal channels ({', '.join(sorted(set(refused)))}) at construction, as allowed" if refused else ""
    return f"correct shapes for {len(tried)} cases (2D and 3D maps, 1x1 to 7x7){note}"


def _no_gradient(grad: torch.Tensor | None) -> bool:
    return grad is None or not bool(grad.abs().sum() > 0)


@register_check("gradients", 2)
def check_gradients(b: BlockUnderTest) -> str:
    """The fused output depends on both inputs; every parameter gets a gradient."""
    block = perturb(b.build(8, 8).train(), b.seed)
    rgb, flow = maps(8, 8, (5, 5), requires_grad=True)
    out_rgb, out_flow = b.run(block, rgb.clone(), flow.clone())  # activations, not leaves, as in a network
    detached = ("is there a .detach(), .data, .item(), .numpy() round trip or torch.no_grad() in fuse? "
                "Compute the output from the inputs with torch operations only")
    fused = "fused (rgb)" if block.fuses_streams else "rgb"
    paths = [(fused, out_rgb, "rgb", rgb)] + ([(fused, out_rgb, "flow", flow)] if block.fuses_streams else [])
    for output, y, name, x in [*paths, ("flow", out_flow, "flow", flow)]:
        grad = (torch.autograd.grad((y * torch.randn_like(y)).sum(), x, retain_graph=True, allow_unused=True)[0]
                if y.requires_grad else None)
        if _no_gradient(grad):
            raise CheckFailed(f"no gradient reaches the {name} input from the {output} output, so training cannot "
                              f"reach the {name} tower through the block: {detached}")
    trainable = {k: p for k, p in block.named_parameters() if p.requires_grad}
    # random weights on the outputs: a plain sum would give e.g. a BatchNorm's weight a zero gradient
    loss = (out_rgb * torch.randn_like(out_rgb)).sum() + (out_flow * torch.randn_like(out_flow)).sum()
    grads = torch.autograd.grad(loss, list(trainable.values()), allow_unused=True) if trainable else ()
    dead = [k for (k, _), g in zip(trainable.items(), grads) if _no_gradient(g)]
    if dead:
        raise CheckFailed(f"parameters {dead} get no gradient from the outputs: they are unused, or used through "
                          f".detach()/.data; use them in fuse or delete them")
    depends = "the fused output depends on rgb and flow" if block.fuses_streams else "each output depends on its input"
    return f"{depends}; " + (f"all {len(trainable)} parameter tensors get gradients" if trainable else "no parameters")


@register_check("gradcheck", 1)
def check_gradcheck(b: BlockUnderTest) -> str:
    """Float64 finite-difference gradient check on a tiny input."""
    block = perturb(b.build(3, 3), b.seed)
    student_call(f"{b.label}.double()", block.double)
    block.eval()
    rgb, flow = maps(3, 3, (3, 3), dtype=torch.float64, requires_grad=True)

    def fused(r: torch.Tensor, f: torch.Tensor):  # on activations (non-leaf copies), as in a network
        return block(r.clone(), f.clone())

    student_call(f"{b.label} on float64 maps", fused, rgb, flow)  # a plain crash reads better than gradcheck's report
    try:
        torch.autograd.gradcheck(fused, (rgb, flow), eps=1e-6, atol=1e-5, rtol=1e-3)
    except GradcheckError as e:
        first = str(e).strip().splitlines()[0].rstrip(",")
        raise CheckFailed(f"analytical gradients differ from finite differences in float64 ({first}; outputs and "
                          f"inputs are numbered rgb 0, flow 1): a .detach() or .data, a custom autograd.Function "
                          f"with a wrong backward, a non-differentiable step (rounding, argmax, comparisons), or "
                          f"state that changes from call to call") from e
    return "analytical gradients match finite differences (float64, eval mode)"


@register_check("initialisation", 2)
def check_initialisation(b: BlockUnderTest) -> str:
    """A block claiming starts_as ('identity' or a block name) starts exactly so."""
    claim = b.starts_as
    if claim is None:
        block = b.build(8, 8)
        claim = getattr(block, "starts_as", None)
        if claim is None:
            return f"{b.label} makes no claim about its initialisation (starts_as = None): nothing to check"
    if claim != IDENTITY and claim not in FUSIONS:
        raise CheckFailed(f"starts_as = {claim!r} is neither {IDENTITY!r} nor a registered fusion block "
                          f"({sorted(FUSIONS)})")
    worst = 0.0
    for size in ((5, 5), (2, 4, 4)):
        rgb, flow = maps(8, 8, size)
        reference = (rgb, flow) if claim == IDENTITY else build_fusion(claim, rgb_channels=8, flow_channels=8)(rgb, flow)
        for mode in ("train", "eval"):
            block = b.build(8, 8).train(mode == "train")
            with torch.no_grad():
                out = b.run(block, rgb.clone(), flow.clone())  # copies: the reference must not change
            for stream, y, ref in zip(("rgb", "flow"), out, reference):
                if y.shape != ref.shape:
                    raise CheckFailed(f"starts_as = {claim!r}: the {stream} output has shape {shape(y)}, "
                                      f"{claim!r} gives {shape(ref)}")
                diff = float((y - ref).abs().max())
                worst = max(worst, diff)
                if diff > 1e-6 * max(1.0, float(ref.abs().max())):
                    what = "its inputs" if claim == IDENTITY else f"{claim!r} fusion"
                    raise CheckFailed(f"starts_as = {claim!r}, but at initialisation ({mode} mode, {len(size)}D maps) "
                                      f"the {stream} output differs from {what} by up to {diff:.3g}: initialise the "
                                      f"weights so that the block computes exactly that (e.g. zero the last layer "
                                      f"of an added branch, or identity matrices), or set starts_as = None")
    return f"exactly {claim!r} at initialisation (max difference {worst:.1g}; 2D and 3D maps, train and eval mode)"


@register_check("deterministic", 1)
def check_deterministic(b: BlockUnderTest) -> str:
    """Same seed, same block, same outputs; no hidden state between calls."""
    blocks = []
    for _ in range(2):
        seed_everything(b.seed)
        blocks.append(b.build(8, 8).train())
    states = [block.state_dict() for block in blocks]
    for key in states[0]:
        if not torch.equal(states[0][key], states[1][key]):
            raise CheckFailed(f"two blocks built after seeding random, numpy and torch with {b.seed} differ in "
                              f"{key!r}: something is drawn from an unseeded generator (np.random.default_rng() "
                              f"without a seed, a torch.Generator without manual_seed, the time)")
    rgb, flow = maps(8, 8, (5, 5))
    outs = []
    for block in (blocks[0], blocks[1], blocks[0]):
        seed_everything(b.seed + 1)
        with torch.no_grad():  # fresh copies: an in-place edit is no_inplace's business, not this check's
            outs.append(b.run(block, rgb.clone(), flow.clone()))
    for i, (other, what) in enumerate(((outs[1], "an identical block"), (outs[2], "a second call"))):
        if not all(torch.equal(x, y) for x, y in zip(outs[0], other)):
            raise CheckFailed(f"same weights, same input, same seed, but {what} gives a different output: "
                              + ("the block draws from an unseeded generator in fuse" if i == 0 else
                                 "fuse keeps state between calls (a counter, a cache, a running value); make "
                                 "its output a function of the inputs and parameters only"))
    return "equal parameters and outputs from the same seed; no state carried between calls"


@register_check("independent_samples", 1)
def check_independent_samples(b: BlockUnderTest) -> str:
    """Each sample's outputs depend on that sample alone (eval mode, perturbed parameters)."""
    block = perturb(b.build(8, 8), b.seed).eval()  # eval: BatchNorm's batch statistics are the one accepted mixing
    mixing = ("the block mixes the videos of a batch (a mean, sum, max or softmax over dim 0, or a reshape/view "
              "that merges the batch with other dimensions): a video's features must depend on that video "
              "alone, so reduce over channels, space or time (dims 1 and up), never over dim 0")
    worst, g, skipped = 0.0, torch.Generator().manual_seed(b.seed + 2), ""
    for size in ((5, 5), (2, 4, 4)):
        rgb, flow = maps(8, 8, size, batch=3)
        where = f"{len(size)}D maps, a batch of 3, eval mode"
        with torch.no_grad():
            try:
                batched = b.run(block, rgb.clone(), flow.clone())
            except CheckFailed:
                if len(size) == 2:
                    raise
                skipped = " (3D maps not tried: the block fails on them, the shapes check says why)"
                break
            if not all(torch.equal(y, z) for y, z in zip(batched, b.run(block, rgb.clone(), flow.clone()))):
                raise CheckFailed(f"the same batch gives different outputs on a second call ({where}), so what "
                                  f"the other samples do cannot be told apart: make the output a function of the "
                                  f"inputs and parameters only (the deterministic check says more)")
            rgb_moved, flow_moved = rgb.clone(), flow.clone()
            rgb_moved[0] += torch.randn(rgb[0].shape, generator=g)
            flow_moved[0] += torch.randn(flow[0].shape, generator=g)
            moved = b.run(block, rgb_moved, flow_moved)
            for stream, y, z in zip(("rgb", "flow"), batched, moved):
                diff = max_difference(y[1:], z[1:])
                worst = max(worst, diff)
                if diff > tolerance(y):
                    raise CheckFailed(f"changing sample 0 of the batch changes the {stream} output of samples 1 "
                                      f"and 2 by up to {diff:.3g} ({where}): {mixing}")
            for i in range(3):
                alone = b.run(block, rgb[i:i + 1].clone(), flow[i:i + 1].clone())
                for stream, y, z in zip(("rgb", "flow"), batched, alone):
                    diff = max_difference(y[i:i + 1], z) if y[i:i + 1].shape == z.shape else float("inf")
                    worst = max(worst, diff)
                    if diff > tolerance(y):
                        raise CheckFailed(f"sample {i} run on its own gives a {stream} output that differs by up "
                                          f"to {diff:.3g} from the same sample run in a batch of 3 ({where}): "
                                          f"the output depends on the batch it comes in; {mixing}")
    return (f"each sample's outputs depend on that sample alone (perturbing one leaves the others unchanged; "
            f"batched and one-by-one outputs agree to {worst:.1g}; 2D and 3D maps, eval mode){skipped}")


@register_check("no_inplace", 1)
def check_no_inplace(b: BlockUnderTest) -> str:
    """The inputs are not modified in place."""
    block = b.build(8, 8).train()
    rgb, flow = maps(8, 8, (5, 5))
    before = [(x.clone(), x._version) for x in (rgb, flow)]
    b.run(block, rgb, flow)
    for stream, x, (copy, version) in zip(("rgb", "flow"), (rgb, flow), before):
        if x._version != version or not torch.equal(x, copy):
            raise CheckFailed(f"{b.label} modified its {stream} input in place (e.g. `{stream} += ...`, "
                              f"`{stream}.mul_(...)`, `{stream}[...] = ...`, or nn.ReLU(inplace=True) applied to "
                              f"it): the network reuses that tensor and autograd needs it; compute a new tensor "
                              f"instead (`{stream} = {stream} + ...`)")
    return "the inputs are left unchanged"


def spatial_trainer(spec: TrainingCheck, fusion: str, position: str | None, fusion_options: dict, seed: int,
                    train_set) -> tuple[torch.nn.Module, Trainer]:
    """The ``trains`` check's network with ``fusion`` after ``position`` (None: the last stage), and its trainer."""
    seed_everything(seed)
    model = build_model("spatial", len(get_puzzle(spec.puzzle).classes), fusion=fusion, position=position,
                        backbone="tiny", widths=spec.widths, new_length=spec.new_length, dropout=0.0,
                        head_hidden=spec.head_hidden, fusion_options=fusion_options)
    config = TrainConfig(epochs=spec.epochs, batch_size=spec.batch_size, optimizer="adamw", lr=spec.lr,
                         weight_decay=1e-4, schedule="separate", seed=seed, device=spec.device, progress=False)
    return model, Trainer(model, train_set, config)


def reference_epoch_seconds(spec: TrainingCheck, train_set, seed: int) -> float:
    """Seconds one training epoch of the reference block (``conv``, identity-initialised) takes in the
    ``trains`` check's network, measured here and now: the time budget is a multiple of it, so it
    means the same on a loaded 2-core laptop and on a GPU."""
    _, trainer = spatial_trainer(spec, "conv", spec.position, {}, seed, train_set)
    start = time.perf_counter()
    trainer.train_epoch(0)
    return time.perf_counter() - start


@register_check("trains", 4)
def check_trains(b: BlockUnderTest) -> str:
    """Learns the registration puzzle in a two-stream network, within a time budget."""
    spec = b.training
    probe = b.build(spec.widths[0], spec.widths[0])  # fails early, with the lookup or construction error
    if b.name is None or FUSIONS.get(b.name) is not b.cls:
        raise CheckFailed(f"{b.label} is not registered, and build_model builds blocks by their registered name: "
                          f"decorate it with @register_fusion(\"<name>\")")
    # a block that changes the channel count fits only after the last stage (TwoStreamNet's rule; None = there)
    position = spec.position if probe.keeps_shape else None
    train_set, test_set = training_data(spec.puzzle, spec.videos_per_class, spec.test_videos_per_class, spec.frames,
                                        spec.size, spec.new_length)
    reference = reference_epoch_seconds(spec, train_set, b.seed)
    model, trainer = student_call(f"build_model('spatial', fusion={b.name!r})", spatial_trainer, spec, b.name,
                                  position, b.kwargs, b.seed, train_set)
    where = f"on held-out {spec.puzzle} videos ({b.name} after {position or 'the last stage'})"
    accuracy, seconds = [], 0.0
    for epoch in range(spec.epochs):
        start = time.perf_counter()
        student_call(f"training epoch {epoch + 1}", trainer.train_epoch, epoch)
        seconds += time.perf_counter() - start
        per_epoch = seconds / (epoch + 1)
        if per_epoch > spec.budget * reference:
            raise CheckFailed(f"an epoch takes {per_epoch:.1f} s, {per_epoch / reference:.0f} times as long as with "
                              f"conv fusion ({reference:.1f} s, measured just before); the budget is {spec.budget:g} "
                              f"times: the block is too slow (a Python loop over pixels or channels?)")
        metrics = student_call("evaluation", evaluate, model, test_set, batch_size=64, device=spec.device)
        accuracy.append(metrics[model.output_roles()["fused"]]["top1"])  # spatial-S: the only prediction
        if accuracy[-1] >= spec.threshold:
            return (f"top-1 {accuracy[-1]:.2f} {where} after {epoch + 1} epochs; {per_epoch:.1f} s an epoch, "
                    f"{per_epoch / reference:.1f} times conv fusion's (needs {spec.threshold:.2f} within "
                    f"{spec.epochs} epochs, at most {spec.budget:g} times)")
    curve = " ".join(f"{a:.2f}" for a in accuracy)
    raise CheckFailed(f"top-1 {where} stayed below {spec.threshold:.2f} for {spec.epochs} epochs (per epoch: {curve}). "
                      f"Near 0.5 the network knows the direction but not which sprite moves, as late fusion: the "
                      f"block must combine the two maps at each location; near 0.25 the flow stream does not get "
                      f"through at all")


def library_blocks() -> dict[str, type]:
    """The registered fusion blocks that fusionkit itself defines (not students', not tests')."""
    return {name: cls for name, cls in sorted(FUSIONS.items()) if cls.__module__.startswith("fusionkit.")}


def fuse_source(cls: type) -> str | None:
    """``cls.fuse``'s code as an AST dump without its docstring (so comments, blank lines and the
    docstring do not tell two copies apart), or None when its source cannot be read."""
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(cls.fuse)))
    except (OSError, TypeError, SyntaxError):
        return None
    function = tree.body[0]
    body = function.body
    if body and isinstance(body[0], ast.Expr) and isinstance(getattr(body[0], "value", None), ast.Constant) \
            and isinstance(body[0].value.value, str):
        function.body = body[1:]
    return ast.dump(function, annotate_fields=False)


@torch.no_grad()
def copy_state(source: torch.nn.Module, target: torch.nn.Module) -> bool:
    """Copy ``source``'s floating-point parameters and buffers into ``target``'s, matched in order by
    size (reshaped where the layouts differ, e.g. a ``[D, 2D]`` matrix into a ``[D, 2D, 1, 1]`` conv);
    False, copying nothing, when the two do not hold tensors of the same sizes."""
    def tensors(module):
        return [t for t in module.state_dict().values() if t.is_floating_point()]

    theirs, ours = tensors(source), tensors(target)
    if sorted(t.numel() for t in theirs) != sorted(t.numel() for t in ours):
        return False
    unused = list(theirs)
    for t in ours:
        match = next(x for x in unused if x.numel() == t.numel())
        unused.remove(match)
        t.copy_(match.reshape(t.shape))
    return True


def same_function(b: BlockUnderTest, block: FusionBlock, library: FusionBlock) -> float | None:
    """The largest output difference between ``block`` and ``library`` (weights already shared) on
    random 2D and 3D maps in eval mode, or None when their outputs differ in shape or beyond rounding."""
    worst = 0.0
    for size in ((5, 5), (2, 4, 4)):
        rgb, flow = maps(8, 8, size)
        with torch.no_grad():
            mine = b.run(block, rgb.clone(), flow.clone())
            try:
                theirs = library(rgb.clone(), flow.clone())
            except Exception:  # the library block does not take these maps: not the same function
                return None
        for y, z in zip(mine, theirs):
            if y.shape != z.shape or max_difference(y, z) > tolerance(z):
                return None
            worst = max(worst, max_difference(y, z))
    return worst


@register_check("own_design", 3, by_default=False)
def check_own_design(b: BlockUnderTest) -> str:
    """Not a renamed copy of a library block: neither its fuse code nor, with weights copied, its outputs."""
    block = perturb(b.build(8, 8), b.seed).eval()
    library = library_blocks()
    if b.cls.__module__.startswith("fusionkit.") or b.cls in library.values():
        raise CheckFailed(f"{b.label} is fusionkit's own block: design a block of your own")
    no_points = ("a renamed copy of a library block earns no design points: design a block of your own (the ideas "
                 "in section 1, or yours) and say in the rationale what it does that {name!r} does not")
    mine = fuse_source(b.cls)
    for name, cls in library.items():
        if mine is not None and mine == fuse_source(cls):
            raise CheckFailed(f"{b.label}.fuse is the code of the library's {name!r} block ({cls.__name__}.fuse): "
                              + no_points.format(name=name))
        try:
            reference = build_fusion(name, rgb_channels=8, flow_channels=8).eval()
        except Exception:  # needs options, or other channel counts: not comparable here
            continue
        if not copy_state(block, reference):
            continue
        worst = same_function(b, block, reference)
        if worst is not None:
            raise CheckFailed(f"{b.label} computes what the library's {name!r} block ({cls.__name__}) computes: with "
                              f"its weights copied into {name!r}, the outputs on random 2D and 3D maps agree to "
                              f"{worst:.1g}; " + no_points.format(name=name))
    return (f"not a copy of any of the {len(library)} library blocks (fuse's code differs, and so do the outputs "
            f"wherever the weights could be copied)")


# --- the entry point -----------------------------------------------------------------------------
@contextlib.contextmanager
def preserved_random_state() -> Iterator[None]:
    """Leave the ``random``, NumPy and torch (CPU) generators as they were."""
    states = random.getstate(), np.random.get_state(), torch.get_rng_state()
    try:
        yield
    finally:
        random.setstate(states[0])
        np.random.set_state(states[1])
        torch.set_rng_state(states[2])


def resolve_block(block: str | type) -> tuple[type | None, str | None, str | None]:
    """(class, registered name, lookup error) of a block given by name or class."""
    if isinstance(block, str):
        if block not in FUSIONS:
            return None, block, (f"no fusion block named {block!r} is registered (registered: {sorted(FUSIONS)}): "
                                 f"decorate your class with @register_fusion({block!r}) and run its cell without errors")
        return FUSIONS[block], block, None
    if not isinstance(block, type):
        return None, None, f"expected a fusion block's registered name or its class, got {block!r}"
    name = getattr(block, "registered_name", "") or None
    return block, (name if name is not None and FUSIONS.get(name) is block else None), None


def select_checks(checks: Sequence[str] | Mapping[str, float] | None) -> list[tuple[Check, float]]:
    """The checks to run with their points: all registered (default points), the named ones
    (default points), or a mapping name -> points."""
    if checks is None:
        return [(c, c.points) for c in CHECKS.values() if c.by_default]
    if isinstance(checks, Mapping):
        return [(CHECKS.lookup(name), float(points)) for name, points in checks.items()]
    return [(CHECKS.lookup(name), CHECKS.lookup(name).points) for name in checks]


def check_block(block: str | type, checks: Sequence[str] | Mapping[str, float] | None = None, *,
                fusion_options: Mapping | None = None, starts_as: str | None = None,
                training: TrainingCheck | Mapping | None = None, seed: int = 0) -> CheckReport:
    """Run ``block`` (a registered name, or the class) through the checks and report each one.

    Args:
        checks: which checks, by name (default points) or as ``{name: points}``; default: those of
            :data:`CHECKS` that run by default (all but ``own_design``), in their order.
        fusion_options: extra constructor arguments, e.g. ``{"init": "identity"}`` for the library's
            ``conv`` block.
        starts_as: require this initialisation (``"identity"`` or a registered block's name), in
            place of the block's own ``starts_as`` claim.
        training: settings of the ``trains`` check (a :class:`TrainingCheck` or a dict of its fields).
        seed: seeds the blocks' construction, the perturbations and the training.
    Returns a :class:`CheckReport`; a failing or crashing block is a report with failed checks, not
    an exception. Unknown check names raise ``KeyError`` (that is the caller's mistake).
    """
    selected = select_checks(checks)
    if isinstance(training, Mapping):
        training = TrainingCheck(**training)
    cls, name, error = resolve_block(block)
    subject = BlockUnderTest(cls, name, error, dict(fusion_options or {}), starts_as, training or TrainingCheck(), seed)
    results = []
    with preserved_random_state():
        for check, points in selected:
            start = time.perf_counter()
            try:
                message, passed, trace = check.run(subject), True, None
            except CheckFailed as e:
                message, passed, trace = e.message, False, e.traceback
            except Exception as e:  # a crash outside student_call: still the block's failure, with its traceback
                message, passed, trace = f"{type(e).__name__}: {e}", False, student_traceback(e)
            results.append(CheckResult(check.name, passed, points if passed else 0.0, points, message, trace,
                                       round(time.perf_counter() - start, 3)))
    return CheckReport(name or subject.label, results)

