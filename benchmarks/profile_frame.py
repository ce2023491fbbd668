"""Where a section's milliseconds go: torch.profiler over a whole-system run (stand-in prior).

Runs the pipeline like bench_e2e (synthetic sequence, ground-truth stand-in prior, single-thread by
default) under torch.profiler with the timing sections enabled (each section is a
``record_function`` range), then lists the operators that ran inside one section (default
``frontend.dynamic``): self CPU time, device time, calls, and the host synchronisations
(``cudaStreamSynchronize`` / ``cudaMemcpy*`` / ``aten::item`` / ``aten::nonzero``) in it.

    python benchmarks/profile_frame.py --device cuda --set dynamic.enabled=true --section frontend.dynamic
"""
from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from mast3r_slam import timing  # noqa: E402
from mast3r_slam.config import load_config  # noqa: E402
from mast3r_slam.pipeline import run  # noqa: E402

SYNC_NAMES = ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaMemcpy", "cudaMemcpyAsync", "aten::item",
              "aten::_local_scalar_dense", "aten::nonzero", "cudaEventSynchronize")


def _section_of(ev, wanted: str) -> bool:
    p = ev.cpu_parent
    while p is not None:
        if p.name == wanted:
            return True
        p = p.cpu_parent
    return False


def _dev_us(ev) -> float:
    for a in ("self_device_time_total", "self_cuda_time_total"):
        if hasattr(ev, a):
            return float(getattr(ev, a))
    return 0.0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--spec", default="synthetic:loop:512x384:40")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--img-size", type=int, default=512)
    ap.add_argument("--set", dest="sets", action="append", default=[], help="config override key=value (repeatable)")
    ap.add_argument("--section", default="frontend.dynamic")
    ap.add_argument("--max-frames", type=int, default=None)
    ap.add_argument("--multi", action="store_true", help="multi-process run (default: single-thread)")
    ap.add_argument("--top", type=int, default=30)
    ap.add_argument("--out", default=None, help="JSON with the table")
    args = ap.parse_args(argv)
    torch.set_grad_enabled(False)
    sets = [f"dataset.img_size={args.img_size}", f"single_thread={'false' if args.multi else 'true'}"] + args.sets
    cfg = load_config(None, sets)
    acts = [torch.profiler.ProfilerActivity.CPU]
    if args.device.startswith("cuda"):
        acts.append(torch.profiler.ProfilerActivity.CUDA)
    timing.reset()
    timing.enable(True)
    with torch.profiler.profile(activities=acts) as prof:
        m = run(cfg, dataset_spec=args.spec, prior_kind="oracle", output=Path("/tmp/profile_frame_run"), device=args.device,
                progress=False, max_frames=args.max_frames)
    timing.enable(False)
    sec = timing.summary().get(args.section, {})
    n_calls = max(sec.get("count", 0), 1)
    rows = defaultdict(lambda: [0.0, 0.0, 0])  # self cpu us, self device us, calls
    for ev in prof.events():
        if ev.name == args.section or not _section_of(ev, args.section):
            continue
        r = rows[ev.name]
        r[0] += ev.self_cpu_time_total
        r[1] += _dev_us(ev)
        r[2] += 1
    tot_cpu = sum(r[0] for r in rows.values())
    tot_dev = sum(r[1] for r in rows.values())
    print(f"\n## {args.section}: {sec.get('mean_ms', float('nan')):.2f} ms per call (timing section, CUDA-synchronised), "
          f"{sec.get('count', 0)} calls, device {torch.cuda.get_device_name() if args.device.startswith('cuda') else 'cpu'}")
    print(f"profiled ops inside it per call: self CPU {tot_cpu / n_calls / 1e3:.2f} ms, device {tot_dev / n_calls / 1e3:.2f} ms, "
          f"{sum(r[2] for r in rows.values()) / n_calls:.0f} op events\n")
    print("| op | self CPU ms / call | device ms / call | calls / call |")
    print("|---|---|---|---|")
    order = sorted(rows.items(), key=lambda kv: -kv[1][0])
    for name, (c, d, k) in order[: args.top]:
        print(f"| {name[:70]} | {c / n_calls / 1e3:.3f} | {d / n_calls / 1e3:.3f} | {k / n_calls:.1f} |")
    syncs = {k: v for k, v in rows.items() if any(k.startswith(s) for s in SYNC_NAMES)}
    print("\nhost synchronisations / copies inside the section (per call):",
          {k: round(v[2] / n_calls, 1) for k, v in syncs.items()} or "none")
    print("frames", m.get("frames"), "fps", round(m.get("fps") or 0, 2))
    if args.out:
        Path(args.out).write_text(json.dumps({"section": args.section, "timing": sec, "ops": {k: v for k, v in order}}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
