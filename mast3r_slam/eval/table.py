"""Per-sequence table of a results tree: ``python -m mast3r_slam.eval.table <results_root>``.

Finds every ``metrics.json`` below the root (one per run folder, e.g.
``results/tum/calib/rgbd_dataset_freiburg1_desk/metrics.json``) and prints a markdown table
and the same rows as CSV. Columns: the run folder relative to the root, ATE RMSE of the
keyframe trajectory (the published protocol) and of all frames (metres), frames, keyframes,
frames per second and the prior. A last row averages the numeric columns over the runs that
have them.

``metrics.json`` keys read (all optional): ``ate.keyframes.rmse``, ``ate.frames.rmse``,
``frames``, ``keyframes``, ``fps``, ``prior``.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import math
import re
import sys
from pathlib import Path
from typing import Sequence

COLUMNS = ("sequence", "ate_kf_rmse_m", "ate_frames_rmse_m", "frames", "keyframes", "fps", "prior")
NUMERIC = ("ate_kf_rmse_m", "ate_frames_rmse_m", "frames", "keyframes", "fps")


def _get(d: dict, dotted: str):
    for k in dotted.split("."):
        if not isinstance(d, dict) or k not in d:
            return None
        d = d[k]
    return d


def collect(root: str | Path) -> list[dict]:
    """One row per metrics.json below ``root`` (natural order of the run folders)."""
    root = Path(root)
    rows = []
    files = sorted(root.rglob("metrics.json"), key=lambda p: [int(s) if s.isdigit() else s for s in re.split(r"(\d+)", p.parent.as_posix())])
    for f in files:
        try:
            m = json.loads(f.read_text())
        except (OSError, json.JSONDecodeError) as e:
            sys.stderr.write(f"warning: skipping {f}: {e}\n")
            continue
        rel = f.parent.relative_to(root).as_posix()
        rows.append(
            {
                "sequence": rel if rel != "." else root.name,
                "ate_kf_rmse_m": _get(m, "ate.keyframes.rmse"),
                "ate_frames_rmse_m": _get(m, "ate.frames.rmse"),
                "frames": m.get("frames"),
                "keyframes": m.get("keyframes"),
                "fps": m.get("fps"),
                "prior": m.get("prior"),
            }
        )
    return rows


def mean_row(rows: list[dict]) -> dict:
    out = {"sequence": f"mean ({len(rows)} runs)", "prior": ""}
    for c in NUMERIC:
        vals = [float(r[c]) for r in rows if isinstance(r.get(c), (int, float)) and math.isfinite(float(r[c]))]
        out[c] = sum(vals) / len(vals) if vals else None
    return out


def _fmt(c: str, v) -> str:
    if v is None:
        return ""
    if c.startswith("ate"):
        return f"{float(v):.4f}"
    if c == "fps":
        return f"{float(v):.2f}"
    if c in ("frames", "keyframes") and isinstance(v, float):
        return f"{v:.1f}"
    return str(v)


def markdown(rows: list[dict]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "|".join("---" if c in ("sequence", "prior") else "---:" for c in COLUMNS) + "|"]
    for r in rows:
        lines.append("| " + " | ".join(_fmt(c, r.get(c)) for c in COLUMNS) + " |")
    return "\n".join(lines) + "\n"


def to_csv(rows: list[dict]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(COLUMNS)
    for r in rows:
        w.writerow(["" if r.get(c) is None else r.get(c) for c in COLUMNS])
    return buf.getvalue()


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m mast3r_slam.eval.table", description="Table of the metrics.json files of a results tree.")
    ap.add_argument("root", help="results folder, e.g. results/tum/calib")
    ap.add_argument("--format", choices=("both", "markdown", "csv"), default="both")
    ap.add_argument("--csv-out", help="also write the CSV to this file")
    args = ap.parse_args(argv)
    root = Path(args.root)
    if not root.is_dir():
        sys.stderr.write(f"error: {root}: results folder not found\n")
        return 1
    rows = collect(root)
    if not rows:
        sys.stderr.write(f"error: {root}: no metrics.json files below this folder\n")
        return 1
    rows = rows + [mean_row(rows)]
    if args.format in ("both", "markdown"):
        sys.stdout.write(markdown(rows))
    if args.format == "both":
        sys.stdout.write("\n")
    if args.format in ("both", "csv"):
        sys.stdout.write(to_csv(rows))
    if args.csv_out:
        Path(args.csv_out).write_text(to_csv(rows))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
