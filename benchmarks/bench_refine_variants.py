"""Descriptor-refinement variants of ``refine_matches_lin`` (csrc/matching.cu, refine_tile_kernel,
chosen with MAST3R_SLAM_REFINE_VARIANT): bit-exactness of every variant against variant 0 (the
current refine_half_kernel) and GPU time per variant (GPU only).

One command builds ``csrc/matching.cu`` as a separate extension (``m3r_refine_variants``, only the
matching bindings, so a stale prebuilt ``mast3r_slam._C`` does not matter), then

1. compares, for every variant, the linear indices with variant 0's, bit for bit: the benchmark
   problems (512 x 384, 1 and 6 pairs, starts from ``match_project`` as in ``match``) with float32
   and float16 descriptors, the same with 10% outlier starts / starts outside the image / a large
   smooth shift, fully random starts, tie-heavy quantised descriptors, odd image sizes (partial
   tiles) with dilation_max 1, 2, 5, 7, a tiny image, and the whole ``matching.match``;
2. times ``refine_matches_lin`` (float32 descriptors as ``match`` passes them, tiled) and the whole
   ``matching.match`` per variant with CUDA events: --warmup runs, then the median of --repeat.

    python benchmarks/bench_refine_variants.py --out refine_variants.json
    python benchmarks/bench_refine_variants.py --variants 0,2 --repeat 200

Exit code 1 if any variant differs from variant 0 (its timing is then printed but meaningless).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from mast3r_slam import matching  # noqa: E402
from mast3r_slam.ops import _backend  # noqa: E402

import bench_kernels  # noqa: E402

ENV = "MAST3R_SLAM_REFINE_VARIANT"
ALL_VARIANTS = (0, 1, 2, 3)
DESCRIPTION = {
    0: "refine_half_kernel, 16x8 query tiles, global loads (current default)",
    1: "refine_tile_kernel, 16x8 tiles, global loads, radius 3 unrolled (7 candidates in flight)",
    2: "refine_tile_kernel, 16x16 tiles, 48x48 shared-memory window per level (110.6 KB, 2 blocks/SM)",
    3: "refine_tile_kernel, 32x16 tiles, 64x48 shared-memory window per level (147.5 KB, 1 block/SM)",
}

_BIND = """#include <torch/extension.h>
#include "bindings.h"
PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("iter_proj", &mast3r_slam::iter_proj_cuda, "iterative projective matching");
  m.def("refine_matches", &mast3r_slam::refine_matches_cuda, "descriptor refinement of matches");
  m.def("prepare_rays", &mast3r_slam::prepare_rays_cuda, "fused prepare_rays");
  m.def("match_project", &mast3r_slam::match_project_cuda, "fused projective stage of match");
  m.def("refine_matches_lin", &mast3r_slam::refine_matches_lin_cuda, "float16 refinement, linear indices out");
}
"""


def build_ext():
    from torch.utils.cpp_extension import load

    src = Path(tempfile.gettempdir()) / "m3r_refine_variants_src"
    src.mkdir(exist_ok=True)
    bind = src / "bind.cpp"
    if not bind.exists() or bind.read_text() != _BIND:
        bind.write_text(_BIND)
    return load(name="m3r_refine_variants", sources=[str(bind), str(ROOT / "csrc" / "matching.cu")],
                extra_include_paths=[str(ROOT / "csrc")], extra_cflags=["-O3"], extra_cuda_cflags=["-O3", "-lineinfo"],
                verbose=os.environ.get("MAST3R_SLAM_BUILD_VERBOSE", "0") == "1")


def set_variant(v: int) -> None:
    os.environ[ENV] = str(v)  # os.environ writes through to the C environment: the kernel host code reads it per call


def time_ms(fn, warmup: int, repeat: int) -> float:
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    ts = []
    for _ in range(repeat):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        ts.append(a.elapsed_time(b))
    return statistics.median(ts)


def use_kernels(ext) -> None:
    _backend._state.update(tried=True, module=ext, source="bench", error=None)


# ----------------------------------------------------------------------------------------------
# inputs
# ----------------------------------------------------------------------------------------------
def starts(ext, X11, X21):
    """p1 [B, HW, 2] int64 as match computes it (identity start, 10 iterations, truncation)."""
    return ext.match_project(X11.contiguous(), X21.contiguous(), None, 10, 1e-8, 1e-6, 0.1, matching._NORM_MODE)[0]


def perturbed(p1: torch.Tensor, H: int, W: int, kind: str, seed: int) -> torch.Tensor:
    g = torch.Generator(device=p1.device).manual_seed(seed)
    B, N, _ = p1.shape
    if kind == "outliers":  # 10% random pixels, 1% outside the image
        p = p1.clone()
        m = torch.rand(B, N, generator=g, device=p1.device) < 0.10
        rnd = torch.stack([torch.randint(0, W, (B, N), generator=g, device=p1.device),
                           torch.randint(0, H, (B, N), generator=g, device=p1.device)], -1)
        p[m] = rnd[m]
        o = torch.rand(B, N, generator=g, device=p1.device) < 0.01
        far = torch.stack([torch.randint(-40, W + 40, (B, N), generator=g, device=p1.device),
                           torch.randint(-40, H + 40, (B, N), generator=g, device=p1.device)], -1)
        p[o] = far[o]
        return p
    if kind == "shift":  # large smooth motion: 23 px right, 17 px up, a slight rotation
        n = torch.arange(N, device=p1.device)
        u, v = (n % W).float(), torch.div(n, W, rounding_mode="floor").float()
        a = 0.03
        uu = (torch.cos(torch.tensor(a)) * (u - W / 2) - torch.sin(torch.tensor(a)) * (v - H / 2) + W / 2 + 23).floor().long()
        vv = (torch.sin(torch.tensor(a)) * (u - W / 2) + torch.cos(torch.tensor(a)) * (v - H / 2) + H / 2 - 17).floor().long()
        return torch.stack([uu, vv], -1)[None].expand(B, -1, -1).contiguous()
    if kind == "random":  # uniformly anywhere, some outside
        return torch.stack([torch.randint(-3, W + 3, (B, N), generator=g, device=p1.device),
                            torch.randint(-3, H + 3, (B, N), generator=g, device=p1.device)], -1)
    raise ValueError(kind)


def random_problem(B, H, W, F, seed, quantised=False, dev="cuda"):
    gen = torch.Generator().manual_seed(seed)
    D11 = torch.nn.functional.normalize(torch.randn(B, H, W, F, generator=gen), dim=-1)
    if quantised:  # many exactly equal float16 scores
        D11 = (D11 * 2).round() / 2
        D21 = (torch.nn.functional.normalize(torch.randn(B, H * W, F, generator=gen), dim=-1) * 2).round() / 2
    else:  # noisy copies of shifted pixels: positive scores, the refinement moves
        sh = torch.roll(D11, shifts=(2, -3), dims=(1, 2)).reshape(B, H * W, F)
        D21 = torch.nn.functional.normalize(sh + 0.4 * torch.randn(B, H * W, F, generator=gen), dim=-1)
    n = torch.arange(H * W)
    p1 = torch.stack([n % W, n // W], -1)[None].expand(B, -1, -1).contiguous()
    return D11.to(dev), D21.to(dev), p1.to(dev)


# ----------------------------------------------------------------------------------------------
# checks
# ----------------------------------------------------------------------------------------------
class Checker:
    def __init__(self):
        self.results = []

    def run(self, what: str, variants, fn) -> None:
        """fn() -> tensor under each variant; every variant must equal variant 0."""
        set_variant(0)
        ref = fn()
        for v in variants:
            if v == 0:
                continue
            set_variant(v)
            out = fn()
            ok = out.shape == ref.shape and torch.equal(out, ref)
            detail = "" if ok else f"{int((out != ref).sum())}/{ref.numel()} differ"
            self.results.append((f"{what} [variant {v}]", ok, detail))
            print(f"  {'ok  ' if ok else 'FAIL'} {what} [variant {v}] {detail}", flush=True)
        set_variant(0)

    @property
    def ok(self) -> bool:
        return all(r[1] for r in self.results)


def check_all(chk: Checker, ext, problems: dict, variants) -> None:
    for name, (X11, X21, D11, D21) in problems.items():
        B, H, W, F = D11.shape
        p1 = starts(ext, X11, X21)
        d21 = D21.reshape(B, H * W, F)
        base = ext.refine_matches_lin(D11.contiguous(), d21.contiguous(), p1, 3, 5, True)
        lin0 = p1[..., 0] + W * p1[..., 1]
        print(f"  {name}: refinement moves {100 * (base != lin0).float().mean().item():.1f}% of the matches", flush=True)
        for dt in (torch.float32, torch.float16):
            a, q = D11.to(dt).contiguous(), d21.to(dt).contiguous()
            chk.run(f"{name} {str(dt)[6:]}", variants, lambda: ext.refine_matches_lin(a, q, p1, 3, 5, True))
        a, q = D11.contiguous(), d21.contiguous()
        for kind in ("outliers", "shift", "random"):
            pk = perturbed(p1, H, W, kind, seed=7)
            chk.run(f"{name} {kind} starts", variants, lambda: ext.refine_matches_lin(a, q, pk, 3, 5, True))
        chk.run(f"{name} dilation_max 7", variants, lambda: ext.refine_matches_lin(a, q, p1, 3, 7, True))
        use_kernels(ext)
        chk.run(f"{name} matching.match", variants,
                lambda: matching.match(X11, X21, D11, D21, **bench_kernels.MATCH_CFG)[0])
    for (B, H, W, seed) in ((2, 37, 53, 1), (1, 100, 77, 2), (3, 19, 130, 3), (1, 3, 5, 4), (2, 384, 512, 5)):
        for quant in (False, True):
            D11, D21, p1 = random_problem(B, H, W, 24, seed, quantised=quant)
            tag = f"random {B}x{H}x{W}{' ties' if quant else ''}"
            for dm in (1, 2, 5, 7):
                chk.run(f"{tag} d={dm}", variants, lambda: ext.refine_matches_lin(D11, D21, p1, 3, dm, True))
            for kind in ("outliers", "random"):
                pk = perturbed(p1, H, W, kind, seed=seed)
                chk.run(f"{tag} {kind} starts", variants, lambda: ext.refine_matches_lin(D11, D21, pk, 3, 5, True))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variants", default=",".join(map(str, ALL_VARIANTS)), help="comma-separated (0 is always checked against)")
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--repeat", type=int, default=100)
    ap.add_argument("--no-check", action="store_true")
    ap.add_argument("--out", default=None, help="JSON results")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("needs a CUDA GPU", file=sys.stderr)
        return 2
    variants = sorted({0, *(int(v) for v in args.variants.split(","))})
    t0 = time.perf_counter()
    ext = build_ext()
    print(f"extension built/loaded ({time.perf_counter() - t0:.1f} s)", flush=True)
    os.environ["MAST3R_SLAM_OPS"] = "cuda"
    dev = torch.device("cuda")
    problems = bench_kernels.matching_problems(dev)
    info = dict(device=torch.cuda.get_device_name(), torch=torch.__version__, cuda=torch.version.cuda)
    print(info, flush=True)
    for v in variants:
        print(f"  variant {v}: {DESCRIPTION.get(v, '?')}")
    ok = True
    if not args.no_check:
        chk = Checker()
        print("exactness of every variant vs variant 0:", flush=True)
        check_all(chk, ext, problems, variants)
        ok = chk.ok
        print(f"exactness: {'all equal' if ok else 'DIFFERENCES'} ({sum(r[1] for r in chk.results)}/{len(chk.results)})", flush=True)
    res = {}
    use_kernels(ext)
    for pname, (X11, X21, D11, D21) in problems.items():
        B, H, W, F = D11.shape
        p1 = starts(ext, X11, X21)
        a, q = D11.contiguous(), D21.reshape(B, H * W, F).contiguous()
        for v in variants:
            set_variant(v)
            res[f"{pname}/refine_lin/v{v}"] = time_ms(lambda: ext.refine_matches_lin(a, q, p1, 3, 5, True), args.warmup, args.repeat)
            res[f"{pname}/match/v{v}"] = time_ms(lambda: matching.match(X11, X21, D11, D21, **bench_kernels.MATCH_CFG), args.warmup,
                                                 args.repeat)
            print(f"{pname:7s} variant {v}: refine_lin {res[f'{pname}/refine_lin/v{v}']:7.3f} ms   "
                  f"match {res[f'{pname}/match/v{v}']:7.3f} ms", flush=True)
    set_variant(0)
    print(f"\nrefinement variants on {info['device']}, median ms (CUDA events, {args.repeat} runs)"
          f"{'' if ok else '  -- SOME VARIANTS DIFFER: see FAIL lines'}\n")
    print("| variant | refine 1 pair | match 1 pair | refine 6 pairs | match 6 pairs | exact |")
    print("|---|---|---|---|---|---|")
    for v in variants:
        ex = "-" if args.no_check else ("yes" if v == 0 or all(r[1] for r in chk.results if r[0].endswith(f"[variant {v}]")) else "NO")
        print(f"| {v} | {res['1pair/refine_lin/v' + str(v)]:.3f} | {res['1pair/match/v' + str(v)]:.3f} | "
              f"{res['6pairs/refine_lin/v' + str(v)]:.3f} | {res['6pairs/match/v' + str(v)]:.3f} | {ex} |")
    if args.out:
        Path(args.out).write_text(json.dumps({"info": info, "exact": ok, "results": res,
                                              "variants": {v: DESCRIPTION.get(v) for v in variants}}, indent=2))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
