"""Memory over a long run: the synthetic loop sequence played round and round for N frames
(default 5000) with the ground-truth stand-in prior, sampling the resident memory of the frontend
and backend processes and the size of the shared keyframe store.

What it shows: memory follows the number of keyframes (their pointmaps and graph edges), not the
number of frames, and there is no fixed keyframe capacity. With keyframe re-use (on in this
benchmark: ``tracking.reuse_keyframes=true``, the setting docs/BENCHMARKS.md recommends for long
runs) revisits add no keyframes, so memory plateaus after the first pass; ``--no-reuse`` shows the
original's growth. ``backend queue`` is the number of requests the backend
had not served yet at each sample (0: it keeps up); ``drain s`` how long finish() waited for it.

    python benchmarks/long_run_memory.py --frames 5000 --size 64x48 --out memory.json
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from mast3r_slam.config import load_config  # noqa: E402
from mast3r_slam.datasets import load_dataset  # noqa: E402
from mast3r_slam.priors.oracle import make_oracle_prior  # noqa: E402
from mast3r_slam.slam import Slam  # noqa: E402


def rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def dir_mb(path: Path) -> float:
    return sum(f.stat().st_blocks * 512 for f in path.glob("*") if f.is_file()) / 2**20


class BackAndForth:
    """A dataset played back and forth for ``n`` frames: frame i shows frame j(i) of ``ds``.

    Frame ids stay distinct (the prior's cache and the SLAM state see a long sequence) while the
    camera keeps revisiting the same places."""

    def __init__(self, ds, n: int):
        self.ds, self.n, self.m = ds, n, len(ds)

    def _j(self, i: int) -> int:
        j = i % (2 * self.m - 2)
        return j if j < self.m else 2 * self.m - 2 - j

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        if not 0 <= i < self.n:
            raise IndexError(i)
        return self.ds[self._j(i)]

    def frame_rgb(self, i: int):
        return self.ds.frame_rgb(self._j(i))

    def frame_depth(self, i: int):
        return self.ds.frame_depth(self._j(i))

    def __getattr__(self, name):
        if name.startswith("__") or name in ("ds", "n", "m"):  # (unpickling in the backend process)
            raise AttributeError(name)
        return getattr(self.ds, name)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=5000)
    ap.add_argument("--size", default="64x48")
    ap.add_argument("--every", type=int, default=250)
    ap.add_argument("--single-thread", action="store_true")
    ap.add_argument("--window", type=int, default=0, help="local_opt.window_size (0: all keyframes, like the original)")
    ap.add_argument("--no-reuse", action="store_true", help="tracking.reuse_keyframes=false (the original's keyframing)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    torch.set_grad_enabled(False)
    torch.set_num_threads(1)
    W, H = (int(v) for v in args.size.split("x"))
    sets = [f"dataset.img_size={max(W, H)}", f"single_thread={'true' if args.single_thread else 'false'}"]
    if args.window:
        sets.append(f"local_opt.window_size={args.window}")
    sets.append(f"tracking.reuse_keyframes={'false' if args.no_reuse else 'true'}")
    cfg = load_config(None, sets)
    ds = BackAndForth(load_dataset(f"synthetic:loop:{W}x{H}"), args.frames)
    prior = make_oracle_prior(ds, cfg, "cpu")
    slam = Slam(cfg, prior, device="cpu", n_frames=args.frames)
    rows = []
    t0 = time.time()
    try:
        for i in range(args.frames):
            slam.track(i, f"{i / 30:.6f}", ds.frame_rgb(i).rgb)
            if i % args.every == 0 or i == args.frames - 1:
                bpid = getattr(getattr(slam.backend, "proc", None), "pid", None)
                tasks = getattr(slam.backend, "tasks", None)
                row = {
                    "frame": i,
                    "keyframes": len(slam.store),
                    "edges": slam.store.get("n_edges"),
                    "frontend_rss_mb": rss_mb(os.getpid()),
                    "backend_rss_mb": rss_mb(bpid) if bpid else 0.0,
                    "store_mb": dir_mb(slam.store.root),
                    "backend_queue": tasks.qsize() if tasks is not None else 0,
                    "reused": slam.n_reused,
                    "seconds": time.time() - t0,
                }
                rows.append(row)
                print(json.dumps(row), flush=True)
        t_fin = time.time()
        res = slam.finish()
        drain = time.time() - t_fin
    finally:
        slam.close()
    print(f"\nsets {sets}; stats {res.stats}; drain {drain:.1f} s")
    print("\n| frame | keyframes | edges | re-used | backend queue | frontend RSS MB | backend RSS MB | store MB | s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['frame']} | {r['keyframes']} | {r['edges']} | {r['reused']} | {r['backend_queue']} | {r['frontend_rss_mb']:.0f} "
              f"| {r['backend_rss_mb']:.0f} | {r['store_mb']:.1f} | {r['seconds']:.0f} |")
    if args.out:
        Path(args.out).write_text(json.dumps({"rows": rows, "stats": res.stats, "drain_s": drain, "sets": sets}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
