"""``fusionkit assignment release`` and ``fusionkit assignment grade`` (wired into :mod:`fusionkit.cli`).

Nothing heavy is imported until a command runs, so ``fusionkit --help`` stays fast.
"""
from __future__ import annotations

import argparse


def _release(args) -> int:
    from fusionkit.lab.assignments.notebooks import release_notebook

    out = release_notebook(args.source, args.out_dir)
    print(f"wrote the student version of {args.source} to {out}")
    return 0


def _grade(args) -> int:
    from fusionkit.lab.assignments.notebooks import grade_notebook

    report = grade_notebook(args.submission, source=args.source, out=args.out, executed=args.executed,
                            smoke=not args.full, data_dir=args.data, timeout=args.timeout)
    print(report)
    print(f"report written to {report.extra['report']}")
    return 0


def add_assignment_parser(subparsers: argparse._SubParsersAction) -> None:
    """Add ``assignment release`` and ``assignment grade`` to the ``fusionkit`` command's subparsers."""
    from fusionkit.lab.run_notebooks import PROJECT_ROOT

    parser = subparsers.add_parser("assignment", help="course assignments: release a student version, grade a submission")
    commands = parser.add_subparsers(dest="assignment_command", required=True)

    p = commands.add_parser("release", help="write the student version of an assignment notebook: solutions "
                                            "replaced by stubs, hidden tests removed, outputs cleared")
    p.add_argument("source", help="the instructor's notebook (e.g. notebooks/assignments/a1_conv_fusion.ipynb)")
    p.add_argument("out_dir", help="folder for the student version (same file name)")
    p.set_defaults(func=_release)

    p = commands.add_parser("grade", help="execute a submission with papermill, run its test cells and the block "
                                          "checker, write a JSON score report")
    p.add_argument("submission", help="the student's notebook")
    p.add_argument("--out", help="JSON report (default: <submission>.grade.json)")
    p.add_argument("--source", help="the instructor's notebook (default: notebooks/assignments/<assignment>.ipynb, "
                                    "the assignment named in the submission's metadata)")
    p.add_argument("--executed", help="executed copy of the submission (default: <submission>.graded.ipynb)")
    p.add_argument("--full", action="store_true", help="run the notebook at teaching parameters, not SMOKE=True")
    p.add_argument("--data", default=str(PROJECT_ROOT / "data"), help="DATA_DIR for the notebook (puzzles, flow)")
    p.add_argument("--timeout", type=int, default=600, help="seconds per cell")
    p.set_defaults(func=_grade)
