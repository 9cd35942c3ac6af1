"""The ``fusionkit`` command."""
from __future__ import annotations

import argparse
import sys


def _make_puzzles(args) -> int:
    from fusionkit.data.puzzles import PUZZLES, make_puzzles

    names = sorted(PUZZLES) if args.puzzle == "all" else [args.puzzle]
    for name in names:
        out = make_puzzles(name, f"{args.out}/{name}" if args.puzzle == "all" else args.out,
                           videos_per_class=args.videos_per_class, frames=args.frames, size=args.size,
                           seed=args.seed, workers=args.workers, progress=not args.quiet)
        print(f"wrote puzzle {name!r} to {out}")
    return 0


def _extract_flow(args) -> int:
    from fusionkit.data.flow import extract_flow

    report = extract_flow(args.root, args.out, backend=args.backend, workers=args.workers, progress=not args.quiet)
    print(report)
    return 1 if report.failed else 0


def _run_notebooks(args) -> int:
    from fusionkit.run_notebooks import run_notebooks

    done = run_notebooks(args.notebooks, args.out, smoke=args.smoke, data_dir=args.data, workers=args.workers)
    print(f"executed {len(done)} notebooks into {args.out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from fusionkit.data.flow import FLOW_BACKENDS
    from fusionkit.data.puzzles import PUZZLES

    parser = argparse.ArgumentParser(prog="fusionkit", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("make-puzzles", help="render a two-stream puzzle as a UCF-101-style dataset")
    p.add_argument("--puzzle", required=True, choices=[*sorted(PUZZLES), "all"])
    p.add_argument("--out", required=True, help="output folder (with --puzzle all: one subfolder per puzzle)")
    p.add_argument("--videos-per-class", type=int, default=30)
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_make_puzzles)

    p = sub.add_parser("extract-flow", help="decode videos, write RGB frames and quantised optical flow (resumable)")
    p.add_argument("--root", required=True, help="dataset root: <root>/<Class>/<video>.avi")
    p.add_argument("--out", required=True, help="cache folder for frames and flow")
    p.add_argument("--backend", default="dis", choices=sorted(FLOW_BACKENDS))
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_extract_flow)

    from fusionkit.run_notebooks import PROJECT_ROOT

    p = sub.add_parser("run-notebooks", help="build the puzzles and their flow, then execute every notebook with papermill")
    p.add_argument("--notebooks", default=str(PROJECT_ROOT / "notebooks"))
    p.add_argument("--out", default=str(PROJECT_ROOT / "build"), help="folder for the executed copies")
    p.add_argument("--data", default=str(PROJECT_ROOT / "data"), help="folder for puzzles and flow")
    p.add_argument("--smoke", action="store_true", help="SMOKE=True: tiny sizes, seconds per notebook")
    p.add_argument("--workers", type=int, default=2)
    p.set_defaults(func=_run_notebooks)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (FileNotFoundError, ValueError, KeyError, RuntimeError) as e:
        print(f"fusionkit {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
