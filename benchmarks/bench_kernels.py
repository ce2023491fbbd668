"""Timing of the kernels of mast3r_slam.ops: CUDA extension vs PyTorch path, next to the original.

Benchmarks (synthetic inputs, network resolution 512 x 384 unless --small):
  * matching, one pair and six pairs batched (projective iterations + distance check + refinement);
  * global Gauss-Newton, 50 keyframes, 99 edge rows, 10 iterations, rays and calibrated, with
    integer and with sub-pixel matches (p_ii2jj);
  * tracking IRLS at its iteration cap (50 iterations, convergence tests disabled) and with the
    default tolerances (early stop), rays and calibrated.

Each is timed for the CUDA kernels (MAST3R_SLAM_OPS=cuda) and the PyTorch path on the same device
(MAST3R_SLAM_OPS=torch): CUDA events, median of --repeat runs after --warmup runs. A failing
benchmark is reported and the others still run. ``--check`` also compares the CUDA results with
the PyTorch ones. ``--device cpu --small`` tries the script without a GPU (PyTorch path only);
the CPU table of docs/KERNELS.md is ``--device cpu --small --graph 20,40 --threads 1``.

    python benchmarks/bench_kernels.py --check --out bench_kernels.json
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mast3r_slam import matching, ops  # noqa: E402
from mast3r_slam.lie import Sim3  # noqa: E402
from mast3r_slam.ops import _backend  # noqa: E402

# The original (MASt3R-SLAM b0ae540) on one H100, from docs/shared reference_benchmarks.md (ms).
ORIGINAL_MS = {
    "matching_1pair": 3.3,
    "matching_6pairs": 12.0,
    "gn_rays_50kf_99e_10it": 52.8,
    "gn_calib_50kf_99e_10it": 40.7,
}


# ----------------------------------------------------------------------------------------------
# synthetic problems
# ----------------------------------------------------------------------------------------------
def _intrinsics(H: int, W: int, device) -> torch.Tensor:
    f = 0.8 * W
    return torch.tensor([[f, 0.0, (W - 1) / 2], [0.0, f, (H - 1) / 2], [0.0, 0.0, 1.0]], device=device)


def _surface(H: int, W: int, K: torch.Tensor, phase: float = 0.0) -> torch.Tensor:
    """A smooth depth map on the pixel rays of K, [HW, 3]."""
    dev = K.device
    v, u = torch.meshgrid(torch.arange(H, device=dev, dtype=torch.float32), torch.arange(W, device=dev, dtype=torch.float32), indexing="ij")
    z = 2.5 + 0.4 * torch.sin(u / 37.0 + phase) + 0.3 * torch.cos(v / 23.0 - phase)
    X = torch.stack([(u - K[0, 2]) / K[0, 0] * z, (v - K[1, 2]) / K[1, 1] * z, z], -1)
    return X.reshape(-1, 3)


def _small_motion(gen: torch.Generator, scale: float, device) -> torch.Tensor:
    xi = (torch.rand(7, generator=gen) - 0.5) * 2 * torch.tensor([scale, scale, scale, scale / 2, scale / 2, scale / 2, scale / 4])
    return Sim3.exp(xi.double()).float().to(device)


def matching_problems(device) -> dict:
    """The reference benchmark's matching problems at 512x384: one pair and six pairs."""
    return {
        "1pair": make_matching_problem(1, 384, 512, device),
        "6pairs": make_matching_problem(6, 384, 512, device, seed=1),
    }


def make_matching_problem(B: int, H: int, W: int, device, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    K = _intrinsics(H, W, device)
    X11, X21, D11, D21 = [], [], [], []
    for b in range(B):
        X = _surface(H, W, K, phase=0.3 * b)
        T = _small_motion(gen, 0.05, device)
        X11.append(X.reshape(H, W, 3))
        X21.append(Sim3.act(T, X).reshape(H, W, 3))
        D = torch.nn.functional.normalize(torch.randn(H, W, 24, generator=gen).to(device), dim=-1)
        D11.append(D)
        D21.append(torch.nn.functional.normalize(D + 0.3 * torch.randn(H, W, 24, generator=gen).to(device), dim=-1))
    return torch.stack(X11), torch.stack(X21), torch.stack(D11), torch.stack(D21)


def make_graph_problem(n_kf: int, n_edges: int, H: int, W: int, device, seed: int = 0):
    """n_kf keyframes along a path, n_edges directed edge rows (consecutive ones first), matches
    from projecting j's points into i (so Xs are on K's rays: valid for the calibrated solver)."""
    gen = torch.Generator().manual_seed(seed)
    K = _intrinsics(H, W, device)
    HW = H * W
    poses = [Sim3.identity(dtype=torch.float32, device=device)]
    for _ in range(n_kf - 1):
        poses.append(Sim3.mul(poses[-1], _small_motion(gen, 0.04, device)))
    T_true = torch.stack(poses)
    Xs = torch.stack([_surface(H, W, K, phase=0.05 * k) for k in range(n_kf)])
    Cs = 1.0 + 4.0 * torch.rand(n_kf, HW, 1, generator=gen).to(device)
    pairs = [(k, k + 1) for k in range(n_kf - 1)]
    while len(pairs) < n_edges:
        i, j = sorted(torch.randint(0, n_kf, (2,), generator=gen).tolist())
        if j - i > 1:
            pairs.append((i, j))
    ii = torch.tensor([p[0] for p in pairs], device=device)
    jj = torch.tensor([p[1] for p in pairs], device=device)
    Tij = Sim3.mul(Sim3.inv(T_true[ii]), T_true[jj])
    P = Sim3.act(Tij[:, None, :], Xs[jj])  # [E, HW, 3] j's points in camera i
    uv = (P @ K.T)[..., :2] / P[..., 2:3].clamp_min(1e-6)
    u = uv[..., 0].round().long()
    v = uv[..., 1].round().long()
    inside = (u >= 0) & (u < W) & (v >= 0) & (v < H) & (P[..., 2] > 0)
    idx = torch.where(inside, v * W + u, torch.zeros_like(u))
    p = torch.where(inside[..., None], uv, torch.zeros_like(uv)).contiguous()  # exact sub-pixel matches
    valid = (inside & (torch.rand(inside.shape, generator=gen).to(device) > 0.1))[..., None]
    Q = 1.0 + 3.0 * torch.rand(len(pairs), HW, 1, generator=gen).to(device)
    T_init = torch.cat([T_true[:1], torch.stack([Sim3.mul(_small_motion(gen, 0.02, device), T_true[k]) for k in range(1, n_kf)])])
    return dict(Twc=T_init.contiguous(), Xs=Xs, Cs=Cs, K=K, ii=ii, jj=jj, idx=idx.contiguous(), valid=valid.contiguous(), Q=Q, H=H, W=W,
                p=p)


def make_tracking_problem(H: int, W: int, device, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    K = _intrinsics(H, W, device)
    X_k = _surface(H, W, K)
    T_true = _small_motion(gen, 0.08, device)
    X_f = Sim3.act(Sim3.inv(T_true), X_k) + 0.002 * torch.randn(H * W, 3, generator=gen).to(device)
    sqrt_w = (1.5 + 2.0 * torch.rand(H * W, 1, generator=gen)).sqrt().to(device)
    sqrt_w[torch.rand(H * W, generator=gen).to(device) < 0.2] = 0.0
    meas, vmeas = ops.calib_measurements(X_k, H, W, 1e-6)
    return dict(T0=Sim3.identity(1, device=device), X_f=X_f, X_k=X_k, sqrt_w=sqrt_w, meas=meas, vmeas=vmeas, K=K, H=H, W=W, T_true=T_true)


# ----------------------------------------------------------------------------------------------
# runners (each returns the outputs used by --check)
# ----------------------------------------------------------------------------------------------
MATCH_CFG = dict(max_iter=10, lambda_init=1e-8, convergence_thresh=1e-6, dist_thresh=0.1, radius=3, dilation_max=5)


def run_matching(prob):
    X11, X21, D11, D21 = prob
    return matching.match(X11, X21, D11, D21, **MATCH_CFG)


def run_gn(prob, variant: str, iters: int = 10, subpixel: bool = False):
    Twc = prob["Twc"].clone()
    p = prob["p"] if subpixel else None
    if variant == "rays":
        dx = ops.gauss_newton_rays(Twc, prob["Xs"], prob["Cs"], prob["ii"], prob["jj"], prob["idx"], prob["valid"], prob["Q"],
                                   0.003, 10.0, 0.0, 1.5, iters, 1e-8, p_ii2jj=p, width=prob["W"])
    else:
        dx = ops.gauss_newton_calib(Twc, prob["Xs"], prob["Cs"], prob["K"], prob["ii"], prob["jj"], prob["idx"], prob["valid"],
                                    prob["Q"], prob["H"], prob["W"], -10, 1e-6, 1.0, 10.0, 0.0, 1.5, iters, 1e-8, p_ii2jj=p)
    return Twc, dx


def run_tracking(prob, variant: str, cap: bool):
    tol = dict(rel_error=0.0, delta_norm=0.0, sync_every=0) if cap else dict(rel_error=1e-3, delta_norm=1e-3)
    if variant == "rays":
        return ops.track_rays(prob["T0"], prob["X_f"], prob["X_k"], prob["sqrt_w"], 0.003, 10.0, 1.345, 50, **tol)
    return ops.track_calib(prob["T0"], prob["X_f"], prob["meas"], prob["vmeas"], prob["sqrt_w"], prob["K"], prob["H"], prob["W"],
                           1.0, 10.0, -10, 1e-6, 1.345, 50, **tol)


# ----------------------------------------------------------------------------------------------
# timing
# ----------------------------------------------------------------------------------------------
def time_ms(fn, device: torch.device, warmup: int, repeat: int) -> tuple[float, list[float]]:
    for _ in range(warmup):
        fn()
    times = []
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        for _ in range(repeat):
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
    else:
        for _ in range(repeat):
            t0 = time.perf_counter()
            fn()
            times.append(1e3 * (time.perf_counter() - t0))
    return statistics.median(times), times


def _set_mode(mode: str) -> None:
    os.environ["MAST3R_SLAM_OPS"] = mode


def _frac_equal(a, b) -> float:
    return (a.cpu() == b.cpu()).float().mean().item()


def check_outputs(name: str, out_cuda, out_torch) -> dict:
    """Agreement of the CUDA and PyTorch outputs of one benchmark."""
    if name.startswith("matching"):
        idx_eq = _frac_equal(out_cuda[0], out_torch[0])
        valid_eq = _frac_equal(out_cuda[1], out_torch[1])
        return dict(idx_equal=idx_eq, valid_equal=valid_eq, ok=idx_eq >= 0.99 and valid_eq >= 0.995)
    if name.startswith("gn"):
        dpose = (out_cuda[0].cpu() - out_torch[0].cpu()).abs().max().item()
        ddx = (out_cuda[1].cpu() - out_torch[1].cpu()).abs().max().item()
        return dict(max_pose_diff=dpose, max_dx_diff=ddx, ok=dpose < 1e-3 and ddx < 1e-3)
    dpose = (out_cuda.T_CkCf.cpu() - out_torch.T_CkCf.cpu()).abs().max().item()
    return dict(max_pose_diff=dpose, iters_cuda=int(out_cuda.num_iters), iters_torch=int(out_torch.num_iters),
                ok=dpose < 1e-4 and bool(out_cuda.failed) == bool(out_torch.failed))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    ap.add_argument("--small", action="store_true", help="128 x 96 images, 10 keyframes, 19 edges (quick tries, CPU)")
    ap.add_argument("--graph", default=None, help="KEYFRAMES,EDGES of the global GN benchmark (e.g. 20,40 with --small)")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (e.g. 1 for single-threaded CPU timings)")
    ap.add_argument("--check", action="store_true", help="also compare the CUDA results with the PyTorch ones")
    ap.add_argument("--paths", default=None, help="comma list of cuda,torch (default: both on a GPU, torch on the CPU)")
    ap.add_argument("--only", default=None, help="comma list of benchmark name prefixes to run")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--repeat", type=int, default=15)
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    args = ap.parse_args(argv)

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("no CUDA device: use --device cpu --small", file=sys.stderr)
        return 2
    paths = args.paths.split(",") if args.paths else (["cuda", "torch"] if device.type == "cuda" else ["torch"])
    if args.small:
        H, W, n_kf, n_edges = 96, 128, 10, 19
    else:
        H, W, n_kf, n_edges = 384, 512, 50, 99
    if args.graph:
        n_kf, n_edges = (int(x) for x in args.graph.split(","))
    if args.threads:
        torch.set_num_threads(args.threads)

    info = dict(
        device=torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        torch=torch.__version__,
        cuda=torch.version.cuda,
        python=platform.python_version(),
        image=f"{W}x{H}",
        keyframes=n_kf,
        edges=n_edges,
        threads=torch.get_num_threads(),
    )
    if "cuda" in paths:
        t0 = time.perf_counter()
        _backend.get_extension()
        info["extension"] = _backend.extension_status()
        info["extension_load_s"] = round(time.perf_counter() - t0, 1)
        print(f"CUDA extension: {info['extension']} ({info['extension_load_s']} s)", flush=True)

    benches = {}
    try:
        benches["matching_1pair"] = (make_matching_problem(1, H, W, device), run_matching)
        benches["matching_6pairs"] = (make_matching_problem(6, H, W, device, seed=1), run_matching)
    except Exception as e:  # noqa: BLE001
        print(f"matching problem: FAILED {e!r}", file=sys.stderr)
    try:
        graph = make_graph_problem(n_kf, n_edges, H, W, device)
        tag = f"{n_kf}kf_{n_edges}e_10it"
        benches[f"gn_rays_{tag}"] = (graph, lambda p: run_gn(p, "rays"))
        benches[f"gn_calib_{tag}"] = (graph, lambda p: run_gn(p, "calib"))
        benches[f"gn_rays_subpixel_{tag}"] = (graph, lambda p: run_gn(p, "rays", subpixel=True))
        benches[f"gn_calib_subpixel_{tag}"] = (graph, lambda p: run_gn(p, "calib", subpixel=True))
    except Exception as e:  # noqa: BLE001
        print(f"graph problem: FAILED {e!r}", file=sys.stderr)
    try:
        track = make_tracking_problem(H, W, device)
        benches["track_rays_cap50"] = (track, lambda p: run_tracking(p, "rays", cap=True))
        benches["track_calib_cap50"] = (track, lambda p: run_tracking(p, "calib", cap=True))
        benches["track_rays_default"] = (track, lambda p: run_tracking(p, "rays", cap=False))
        benches["track_calib_default"] = (track, lambda p: run_tracking(p, "calib", cap=False))
    except Exception as e:  # noqa: BLE001
        print(f"tracking problem: FAILED {e!r}", file=sys.stderr)
    if args.only:
        prefixes = args.only.split(",")
        benches = {k: v for k, v in benches.items() if any(k.startswith(p) for p in prefixes)}

    results = {}
    for name, (prob, fn) in benches.items():
        entry = {"original_ms": ORIGINAL_MS.get(name)}
        outputs = {}
        for path in paths:
            try:
                _set_mode(path)
                outputs[path] = fn(prob)
                med, times = time_ms(lambda: fn(prob), device, args.warmup, args.repeat)
                entry[f"{path}_ms"] = med
                entry[f"{path}_min_ms"] = min(times)
                extra = ""
                if name.startswith("track"):
                    res = outputs[path]
                    entry[f"{path}_iters"] = int(res.num_iters)
                    extra = f" ({int(res.num_iters)} iterations)"
                print(f"{name:28s} {path:5s} {med:9.3f} ms{extra}", flush=True)
            except Exception as e:  # noqa: BLE001
                entry[f"{path}_error"] = f"{type(e).__name__}: {e}"
                print(f"{name:28s} {path:5s} FAILED: {e!r}", flush=True)
                traceback.print_exc(limit=3)
        if args.check and "cuda" in outputs and "torch" in outputs:
            try:
                entry["check"] = check_outputs(name, outputs["cuda"], outputs["torch"])
                print(f"{name:28s} check {entry['check']}", flush=True)
            except Exception as e:  # noqa: BLE001
                entry["check"] = {"ok": False, "error": f"{type(e).__name__}: {e}"}
        results[name] = entry
        del outputs
        if device.type == "cuda":
            torch.cuda.empty_cache()
    os.environ.pop("MAST3R_SLAM_OPS", None)

    # markdown table
    cols = [p for p in paths]
    print()
    print(f"Kernels on {info['device']} (torch {info['torch']}, {info['image']}, {info['threads']} threads), median ms")
    print()
    header = "| benchmark | original | " + " | ".join(f"ours ({p})" for p in cols) + " | speed-up (cuda vs original) |" + (" check |" if args.check else "")
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    for name, e in results.items():
        orig = e.get("original_ms")
        cells = []
        for p in cols:
            v = e.get(f"{p}_ms")
            cells.append(f"{v:.2f}" if v is not None else "failed")
        cu = e.get("cuda_ms")
        speed = f"{orig / cu:.1f}x" if (orig and cu) else "-"
        row = f"| {name} | {orig if orig is not None else '-'} | " + " | ".join(cells) + f" | {speed} |"
        if args.check:
            c = e.get("check")
            row += f" {'ok' if c and c.get('ok') else ('FAIL' if c else '-')} |"
        print(row)
    if args.out:
        Path(args.out).write_text(json.dumps({"info": info, "results": results}, indent=2))
        print(f"\nwrote {args.out}")
    failed_checks = [n for n, e in results.items() if e.get("check") and not e["check"].get("ok")]
    return 1 if failed_checks else 0


if __name__ == "__main__":
    sys.exit(main())
