"""End-to-end timing of SLAM with the ground-truth stand-in prior (everything but the network).

Runs the pipeline on a synthetic sequence (default 512x384 loop) and reports:
* whole-run frames per second (single-thread and multi-process runs);
* where the milliseconds of a frame go (sections of mast3r_slam.timing, CUDA-synchronised);
* the backend's milliseconds per new keyframe;
* the stand-in prior's own time (which the network replaces; excluded in "FPS without prior").

The frontend frame time with the real network is the sum of measured parts: network encode + pair
decode (benchmarks/bench_network.py), matching and tracking at its iteration cap
(benchmarks/bench_kernels.py); pass their JSON files with --network-json / --kernels-json to
print that sum too.

    python benchmarks/bench_e2e.py --device cuda --out e2e.json
    python benchmarks/bench_e2e.py --device cpu --spec synthetic:loop:128x96:40 --threads 1

Sections nest (mast3r_slam.timing): ``frame`` is the whole frame in the SLAM loop (loading,
tracking, store writes and, single-thread, the backend's keyframe work); the table gives every
section's *self* time so that the self times add up to ``frame``; "not in any sub-section" is the
self time of ``frame`` itself.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from mast3r_slam import timing  # noqa: E402
from mast3r_slam.config import load_config  # noqa: E402
from mast3r_slam.pipeline import run  # noqa: E402


def one_run(spec: str, device: str, sets: list[str], out: Path, max_frames: int | None) -> dict:
    cfg = load_config(None, sets)
    timing.reset()
    timing.enable(True)
    t0 = time.perf_counter()
    m = run(cfg, dataset_spec=spec, prior_kind="oracle", output=out, device=device, progress=False, max_frames=max_frames)
    wall = time.perf_counter() - t0
    timing.enable(False)
    sec = timing.summary()
    return {"metrics": {k: m.get(k) for k in ("frames", "keyframes", "edges", "fps", "seconds", "ate_rmse", "relocalisations")}, "sections": sec, "wall_s": wall}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--spec", default="synthetic:loop:512x384:120")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--img-size", type=int, default=None, help="network image size (default: the long side of a synthetic spec, else 512)")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--max-frames", type=int, default=None)
    ap.add_argument("--modes", default="single,multi")
    ap.add_argument("--network-json", default=None)
    ap.add_argument("--kernels-json", default=None)
    ap.add_argument("--out", default=None)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override (repeatable), e.g. dynamic.enabled=false")
    args = ap.parse_args(argv)
    torch.set_grad_enabled(False)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    if args.img_size is None:
        size = next((p for p in args.spec.split(":") if "x" in p and p.replace("x", "").isdigit()), None)
        args.img_size = max(int(v) for v in size.split("x")) if size else 512
    res = {"device": torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu", "spec": args.spec, "sets": args.set, "runs": {}}
    tmp = Path(args.out).parent if args.out else Path("results")
    for mode in args.modes.split(","):
        sets = [f"dataset.img_size={args.img_size}", f"single_thread={'true' if mode == 'single' else 'false'}", *args.set]
        r = one_run(args.spec, args.device, sets, tmp / f"e2e_{mode}", args.max_frames)
        sec = r["sections"]
        n = r["metrics"]["frames"] or 1
        prior_ms = sum(v["total_ms"] for k, v in sec.items() if "prior" in k and k.startswith("frontend"))
        r["fps_without_prior"] = n / max(r["metrics"]["seconds"] - prior_ms / 1e3, 1e-9)
        if "backend.keyframe" in sec:
            r["backend_ms_per_keyframe"] = sec["backend.keyframe"]["mean_ms"]
        res["runs"][mode] = r
    # frontend frame time with the network, from the component benchmarks
    if args.network_json and args.kernels_json:
        net = json.loads(Path(args.network_json).read_text())
        ker = json.loads(Path(args.kernels_json).read_text())
        res["network_json"] = net.get("summary", net)
        res["kernels_json"] = ker.get("summary", ker)
    print(f"\n## End to end ({res['device']}, {args.spec}, network image {args.img_size}, stand-in prior{', ' + ' '.join(args.set) if args.set else ''})\n")
    print("| run | frames | keyframes | FPS | FPS without the stand-in prior | backend ms / keyframe | ATE (m) |")
    print("|---|---|---|---|---|---|---|")
    for mode, r in res["runs"].items():
        m = r["metrics"]
        print(f"| {mode} | {m['frames']} | {m['keyframes']} | {m['fps']:.1f} | {r['fps_without_prior']:.1f} | "
              f"{r.get('backend_ms_per_keyframe', float('nan')):.1f} | {m.get('ate_rmse') or float('nan'):.4f} |")
    for mode, r in res["runs"].items():
        sec = r["sections"]
        n = r["metrics"]["frames"] or 1
        frame_ms = sec.get("frame", {}).get("total_ms", float("nan")) / n
        covered = sum(v["self_ms"] for k, v in sec.items() if k != "frame") / n
        r["frame_ms"], r["sections_ms_per_frame"] = frame_ms, covered
        print(f"\n### Sections ({mode} run; {n} frames)\n")
        print(f"frame total {frame_ms:.2f} ms per frame (run {1e3 * r['metrics']['seconds'] / n:.2f} ms per frame incl. start-up and the backend's "
              f"final drain) vs sum of sections {covered:.2f} ms per frame; not in any sub-section: {frame_ms - covered:.2f} ms per frame")
        if mode != "single":
            print("(multi-process: backend sections run in the backend process and are not collected here)")
        print("\n| section | parent | calls | mean ms | self ms / call | self ms / frame | total ms |")
        print("|---|---|---|---|---|---|---|")
        for k, v in sec.items():
            print(f"| {k} | {v['parent'] or '-'} | {v['count']} | {v['mean_ms']:.2f} | {v['self_ms'] / max(v['count'], 1):.2f} | "
                  f"{v['self_ms'] / n:.2f} | {v['total_ms']:.0f} |")
    if args.out:
        Path(args.out).write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
