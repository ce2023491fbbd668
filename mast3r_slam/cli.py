"""Command line: ``python main.py [options]`` (also installed as ``mast3r-slam``).

Heavy imports (torch, the network, OpenGL) happen inside :func:`main` after parsing, so
``--help`` is instant. User mistakes end in one red line and exit code 1 (argument errors: 2);
Ctrl-C exits with 130 after results are written.
"""
from __future__ import annotations

import argparse
import os
import sys

EXAMPLES = """\
examples:
  python main.py --dataset synthetic:loop --prior oracle --no-viz
        built-in synthetic sequence with the ground-truth stand-in prior (no weights, CPU)
  python main.py --dataset datasets/tum/rgbd_dataset_freiburg1_desk
        a TUM RGB-D sequence with the MASt3R network (checkpoints in ./checkpoints)
  python main.py --dataset datasets/tum/rgbd_dataset_freiburg1_desk --config config/eval_calib.yaml
  python main.py --dataset video.mp4 --calib config/intrinsics.yaml --set tracking.max_iters=30
  python main.py --dataset webcam:0         |  python main.py --dataset realsense
"""

PRIORS = ("mast3r", "oracle")


class _Parser(argparse.ArgumentParser):
    """argparse that reports errors in one line (no usage dump) and exits with 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        sys.stderr.write(f"{self.prog}: error: {message} (see --help)\n")
        sys.exit(2)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="main.py",
        description="MASt3R-SLAM: real-time monocular dense SLAM on the MASt3R two-view network.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    g = p.add_argument_group("input")
    g.add_argument(
        "--dataset",
        default="synthetic:loop",
        help="sequence folder, video file, image folder, webcam:N, realsense, or synthetic:<loop|fast_turn|lost|dynamic> "
        "(default: synthetic:loop)",
    )
    g.add_argument("--dataset-type", default=None, help="override content detection (tum, euroc, eth3d, 7scenes, folder, video, ...)")
    g.add_argument("--calib", default=None, metavar="YAML", help="intrinsics file (width, height, calibration); forces calibrated mode")
    g.add_argument("--max-frames", type=int, default=None, help="stop after this many frames")

    g = p.add_argument_group("configuration")
    g.add_argument("--config", default=None, metavar="YAML", help="config file (default: config/base.yaml values)")
    g.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set tracking.max_iters=30 (repeatable)",
    )

    g = p.add_argument_group("prior")
    g.add_argument(
        "--prior",
        choices=PRIORS,
        default="mast3r",
        help="mast3r: the network (official checkpoints); oracle: ground-truth stand-in built from the sequence's depth "
        "and poses (for tests and demos without weights)",
    )
    g.add_argument("--checkpoint-dir", default="checkpoints", metavar="DIR", help="folder with the MASt3R checkpoints")
    g.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")

    g = p.add_argument_group("output and display")
    g.add_argument("--output", default=None, metavar="DIR", help="results folder (default: results/<sequence>/)")
    g.add_argument("--no-viz", action="store_true", help="run without the 3D viewer window")
    g.add_argument("--viz-headless", default=None, metavar="DIR", help="render the viewer offscreen to PNG frames in DIR")
    g.add_argument("--viz-video", action="store_true", help="with --viz-headless, also write an MP4")
    g.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    args = build_parser().parse_args(argv)
    if args.max_frames is not None and args.max_frames < 1:
        build_parser().error(f"--max-frames must be >= 1, got {args.max_frames}")
    return args


def _fail(message: str, code: int = 1) -> int:
    red, reset = ("\033[31m", "\033[0m") if sys.stderr.isatty() else ("", "")
    sys.stderr.write(f"{red}error: {message}{reset}\n")
    return code


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from .errors import Mast3rSlamError

    try:
        from .config import load_config

        cfg = load_config(args.config, args.overrides)
        from .pipeline import run_from_args

        return run_from_args(args, cfg)
    except Mast3rSlamError as e:
        return _fail(str(e))
    except FileNotFoundError as e:
        return _fail(f"{e.filename}: file not found" if e.filename else str(e))
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
