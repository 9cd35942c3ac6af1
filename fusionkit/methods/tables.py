"""The papers' ablation tables as data: every row by the name the paper prints, the method and
options that build it, the paper's numbers, and the orderings the paper claims.

    from fusionkit.methods.tables import get_table
    table = get_table("feichtenhofer2016", 1)       # or get_table("conv_fusion", 1)
    [row.name for row in table.rows]                 # ['Sum [22] / Softmax', ..., 'Conv / ReLU5']
    row = table.row("Conv / ReLU5")
    row.method, row.options, row.paper               # 'spatial', {'fusion': 'conv'}, {'UCF101 Acc.': 85.96}

Each paper's module registers its tables (:mod:`fusionkit.methods.conv_fusion.tables`, and the end
of :mod:`~fusionkit.methods.cmmp`, :mod:`~fusionkit.methods.ccs`, :mod:`~fusionkit.methods.cma`);
``fusionkit reproduce`` (:mod:`fusionkit.lab.reproduce`) trains every buildable row and writes ours
beside the paper's.

A row the library cannot build yet is listed all the same, with ``buildable=False`` and the reason,
so that a table here is the paper's table, not the part of it that happens to run.

Numbers are the paper's, in percent, keyed by column (:attr:`Column.key`: the paper's dataset and
the column's printed name). A column reads one output *role* of the row's model (``rgb``, ``flow``
or ``fused``; :class:`~fusionkit.models.two_stream.TwoStreamOutput`), or, where the paper puts the
output in the row (CMA's "CMA_iter1-R" and "CMA_iter1-S"), the row's own :attr:`AblationRow.role`.

Claims (:class:`Claim`) are the paper's orderings as relations between rows, e.g. "Conv >= Sum > Max
at ReLU5" is ``(("Conv / ReLU5", ">=", "Sum / ReLU5"), ("Sum / ReLU5", ">", "Max / ReLU5"))``;
:func:`check_claim` evaluates one on any numbers (the paper's, which a test checks they satisfy, or
ours).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence, Union

from fusionkit.registry import Registry

__all__ = ["Paper", "Column", "AblationRow", "Claim", "AblationTable", "PAPERS", "TABLES", "register_table",
           "get_table", "list_tables", "paper_id", "check_claim", "OPERATORS"]

ROLES = ("rgb", "flow", "fused")


@dataclass(frozen=True)
class Paper:
    id: str
    citation: str
    aliases: tuple[str, ...] = ()


PAPERS: dict[str, Paper] = {p.id: p for p in (
    Paper("feichtenhofer2016", "Feichtenhofer, Pinz & Zisserman, Convolutional Two-Stream Network Fusion for Video "
                               "Action Recognition (CVPR 2016)", ("conv_fusion", "spatial", "feichtenhofer")),
    Paper("wang2018", "Wang, Yuan & Wang, Cross-Modal Message Passing for Two-Stream Fusion (ICASSP 2018)",
          ("cmmp",)),
    Paper("zhang2019", "Zhang, Xu, Shen & Shen, Cooperative Cross-Stream Network for Discriminative Action "
                       "Representation (2019)", ("ccs",)),
    Paper("chi2019", "Chi, Tian, Mu & Tian, Two-Stream Video Classification with Cross-Modality Attention "
                     "(ICCV-W 2019)", ("cma", "nonlocal")),
)}


def paper_id(name: str) -> str:
    """The paper's id (``feichtenhofer2016``, ``wang2018``, ``zhang2019``, ``chi2019``) from it or
    from one of its aliases (its methods' names: ``conv_fusion``, ``cmmp``, ``ccs``, ``cma``)."""
    for paper in PAPERS.values():
        if name == paper.id or name in paper.aliases:
            return paper.id
    raise KeyError(f"unknown paper {name!r}; the papers are "
                   + ", ".join(f"{p.id} ({', '.join(p.aliases)})" for p in PAPERS.values()))


@dataclass(frozen=True)
class Column:
    """One column of numbers. ``role``: the output it reads (None: each row's :attr:`AblationRow.role`);
    ``dataset``: the paper's dataset for it; ``metric``: ``top1`` or ``top5``."""

    name: str
    role: str | None = "fused"
    dataset: str = ""
    metric: str = "top1"

    @property
    def key(self) -> str:
        return f"{self.dataset} {self.name}" if self.dataset else self.name


@dataclass(frozen=True)
class AblationRow:
    """One row: its name as the paper prints it, the method and options that build it
    (:func:`fusionkit.methods.run_method` keyword arguments: model and training options), the
    paper's numbers by column key, and its parameter count where the paper gives one.

    ``train``: :class:`~fusionkit.training.trainer.TrainConfig` fields this row sets (CCS's margins
    in ``extra``, CMA's ``iterations``). ``at_iteration``: read the row after this ``alternate``
    iteration of the run (CMA Table 1's rows are the iterations of one run). ``buildable=False``:
    the library cannot build the row yet; ``reason`` says why. ``note``: how the row is read here
    where that is a choice. ``extra``: the paper's other printed columns (``#layers``)."""

    name: str
    method: str | None
    options: Mapping = field(default_factory=dict)
    paper: Mapping[str, float | None] = field(default_factory=dict)
    parameters: float | None = None
    role: str | None = None
    train: Mapping = field(default_factory=dict)
    at_iteration: int | None = None
    buildable: bool = True
    reason: str = ""
    note: str = ""
    extra: Mapping = field(default_factory=dict)

    def run_key(self) -> str:
        """What the row trains: rows with the same key share one run (CMA's -R and -S rows)."""
        return json.dumps({"method": self.method, "options": self.options, "train": self.train}, sort_keys=True,
                          default=repr)


Term = Union[str, tuple[str, str]]  # a row's name (read in the claim's column) or (row name, column key)
OPERATORS = (">", ">=", "<", "<=", "~")


@dataclass(frozen=True)
class Claim:
    """An ordering the paper claims, as relations ``(a, op, b)`` between rows, each read in
    ``column`` (a column key) unless the term is ``(row, column key)``. ``op``: ``>``, ``>=``, ``<``,
    ``<=`` or ``~`` (within ``tolerance`` percentage points). ``source``: where the paper says it."""

    text: str
    relations: tuple[tuple[Term, str, Term], ...]
    column: str
    tolerance: float = 0.0
    source: str = ""


def _term(term: Term, column: str) -> tuple[str, str]:
    return (term, column) if isinstance(term, str) else tuple(term)


def _holds(a: float, op: str, b: float, tolerance: float) -> bool:
    return {">": a > b, ">=": a >= b, "<": a < b, "<=": a <= b, "~": abs(a - b) <= tolerance}[op]


def check_claim(claim: Claim, value: Callable[[str, str], float | Sequence[float] | None]) -> dict:
    """Evaluate ``claim`` on numbers ``value(row name, column key)``: a number, ``(mean, std)``, or None
    (not measured). Returns ``{"text", "holds", "resolved", "relations": [...]}``: ``holds`` is
    True / False, or None when a number is missing; ``resolved`` is False when some relation's two
    means lie within the sum of their standard deviations (the seeds do not separate them)."""
    relations, holds, resolved = [], True, True
    for a, op, b in claim.relations:
        (ra, ca), (rb, cb) = _term(a, claim.column), _term(b, claim.column)
        va, vb = value(ra, ca), value(rb, cb)
        entry = {"a": ra if ca == claim.column else f"{ra} [{ca}]", "op": op,
                 "b": rb if cb == claim.column else f"{rb} [{cb}]"}
        if va is None or vb is None:
            entry.update(a_value=None if va is None else _mean(va), b_value=None if vb is None else _mean(vb), holds=None)
            holds = None if holds is not False else False
        else:
            ma, mb = _mean(va), _mean(vb)
            ok = _holds(ma, op, mb, claim.tolerance)
            entry.update(a_value=ma, b_value=mb, holds=ok)
            noise = _std(va) + _std(vb)
            if op != "~" and abs(ma - mb) <= noise and noise > 0:
                entry["within_noise"] = True
                resolved = False
            if not ok:
                holds = False
        relations.append(entry)
    return {"text": claim.text, "source": claim.source, "holds": holds, "resolved": resolved, "relations": relations}


def _mean(v) -> float:
    return float(v[0]) if isinstance(v, (tuple, list)) else float(v)


def _std(v) -> float:
    return float(v[1]) if isinstance(v, (tuple, list)) and len(v) > 1 else 0.0


@dataclass(frozen=True)
class AblationTable:
    """A paper's table: ``paper`` (an id of :data:`PAPERS`), its ``number`` and ``title``, the
    ``columns`` of numbers, the ``rows``, the paper's ``claims``.

    ``recipe_method``: the method whose recipe trains the table (its ``pretrain`` stage trains the
    ``late`` streams that rows of fine-tuned methods start from). ``network``: model options every
    row shares. ``parameter_unit``: of :attr:`AblationRow.parameters` (``"M"``, or ``"x ResNet50"``
    for relative counts). ``resolve``: ``(row, backbone name) -> options`` where a row's options
    depend on the backbone (Feichtenhofer's "ReLU3" is a stage of the backbone used), raising
    ValueError where the backbone has no such point. ``count_parameters``: ``(row, model) -> number``
    in ``parameter_unit`` (default: all the model's parameters, in millions). ``paper_network``: the
    model options (and ``num_classes``) of the networks whose parameters the paper counts (two
    VGG-M-2048 with their fc head on UCF-101, ResNet-50 on Kinetics), at which the test suite checks
    each row's :attr:`AblationRow.parameters`. ``label``: how the paper names it where that is not
    "Table N" (CCS's Fig. 5a is registered as its table 5: ``--table 5``)."""

    paper: str
    number: int
    title: str
    columns: tuple[Column, ...]
    rows: tuple[AblationRow, ...]
    claims: tuple[Claim, ...] = ()
    recipe_method: str = "late"
    network: Mapping = field(default_factory=dict)
    parameter_unit: str = "M"
    resolve: Callable[[AblationRow, str], dict] | None = None
    count_parameters: Callable | None = None
    note: str = ""
    paper_network: Mapping = field(default_factory=dict)
    label: str = ""

    def __post_init__(self):
        problems = []
        if self.paper not in PAPERS:
            problems.append(f"unknown paper {self.paper!r}")
        keys = [c.key for c in self.columns]
        names = [r.name for r in self.rows]
        for dup in {n for n in names if names.count(n) > 1}:
            problems.append(f"two rows named {dup!r}")
        for c in self.columns:
            if c.role is not None and c.role not in ROLES:
                problems.append(f"column {c.key!r}: role {c.role!r} is not one of {ROLES}")
        for r in self.rows:
            if set(r.paper) - set(keys):
                problems.append(f"row {r.name!r}: numbers for unknown columns {sorted(set(r.paper) - set(keys))}")
            if r.role is not None and r.role not in ROLES:
                problems.append(f"row {r.name!r}: role {r.role!r} is not one of {ROLES}")
            if any(c.role is None for c in self.columns) and r.role is None:
                problems.append(f"row {r.name!r} needs a role (a column reads the row's role)")
            if r.buildable and r.method is None:
                problems.append(f"row {r.name!r} is buildable but names no method")
            if not r.buildable and not r.reason:
                problems.append(f"row {r.name!r} is not buildable and says not why")
        for claim in self.claims:
            for a, op, b in claim.relations:
                if op not in OPERATORS:
                    problems.append(f"claim {claim.text!r}: operator {op!r} is not one of {OPERATORS}")
                for row, column in (_term(a, claim.column), _term(b, claim.column)):
                    if row not in names:
                        problems.append(f"claim {claim.text!r}: no row {row!r}")
                    if column not in keys:
                        problems.append(f"claim {claim.text!r}: no column {column!r}")
        if problems:
            raise ValueError(f"{self.paper} table {self.number}: " + "; ".join(problems))

    @property
    def key(self) -> str:
        return f"{self.paper}-table{self.number}"

    @property
    def display_name(self) -> str:
        """How the paper names it: ``"Table 3"``, or its :attr:`label` (``"Fig. 5a"``)."""
        return self.label or f"Table {self.number}"

    def row(self, name: str) -> AblationRow:
        for r in self.rows:
            if r.name == name:
                return r
        raise KeyError(f"{self.key} has no row {name!r}; its rows are {[r.name for r in self.rows]}")

    def column(self, key: str) -> Column:
        for c in self.columns:
            if c.key == key:
                return c
        raise KeyError(f"{self.key} has no column {key!r}; its columns are {[c.key for c in self.columns]}")

    def role(self, row: AblationRow, column: Column) -> str:
        """The output role a cell reads."""
        return column.role or row.role

    @property
    def buildable(self) -> tuple[AblationRow, ...]:
        return tuple(r for r in self.rows if r.buildable)

    @property
    def not_buildable(self) -> tuple[AblationRow, ...]:
        return tuple(r for r in self.rows if not r.buildable)

    def paper_value(self, row: str, column: str) -> float | None:
        return self.row(row).paper.get(column)

    def check_paper_claims(self) -> list[dict]:
        """Every claim evaluated on the paper's own numbers (each should hold)."""
        return [check_claim(c, self.paper_value) for c in self.claims]


TABLES = Registry("ablation table", provider="fusionkit.methods")


def register_table(table: AblationTable) -> AblationTable:
    return TABLES.register(table.key)(table)


def get_table(paper: str, number: int) -> AblationTable:
    """Table ``number`` of ``paper`` (its id or an alias, :func:`paper_id`)."""
    key = f"{paper_id(paper)}-table{int(number)}"
    if key not in TABLES:
        have = sorted(k for k in TABLES if k.startswith(paper_id(paper) + "-"))
        raise KeyError(f"no table {number} of {paper_id(paper)} is registered; its tables are {have}")
    return TABLES[key]


def list_tables() -> list[str]:
    """The registered tables' keys, ``<paper>-table<N>``."""
    return sorted(TABLES)


def rows(columns: Sequence[Column], *specs) -> tuple[AblationRow, ...]:
    """Rows from compact specs ``(name, method, options, numbers, **fields)``: ``numbers`` in the
    columns' order (None for a dash) become :attr:`AblationRow.paper`."""
    out = []
    for spec in specs:
        name, method, options, numbers, *more = spec
        kwargs = more[0] if more else {}
        if len(numbers) != len(columns):
            raise ValueError(f"row {name!r}: {len(numbers)} numbers for {len(columns)} columns")
        paper = {c.key: v for c, v in zip(columns, numbers) if v is not None}
        out.append(AblationRow(name, method, dict(options), paper, **kwargs))
    return tuple(out)
