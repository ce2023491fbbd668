"""Matching kernels: time breakdown, and bit-exactness against a baseline build (GPU only).

Times, on the problems of ``bench_kernels.py`` (512 x 384, one pair and six pairs, MATCH_CFG),
with CUDA events (median of --repeat runs after --warmup): the whole ``matching.match`` (and the
host time until it returns, i.e. the Python/launch cost), ``prepare_rays``, and the two kernels
alone (``iter_proj``; ``refine_matches`` on float16 descriptors as ``match`` passes them).

With ``--baseline DIR`` (a folder holding an earlier ``matching.cu`` and, optionally, the
matching module of that version as ``matching_old.py``), that version is built as a separate
extension with only the two matching bindings and timed in the same process ("before"), and every
output of the current code is compared with it for exact equality: ``iter_proj`` positions and
flags, ``refine_matches`` (float16 for F = 8..32 and 12, float32, misaligned views), and
``match`` itself, on the benchmark problems, the golden fixtures and random inputs (NaN rays,
starts outside the image, 0 / 1 / 10 iterations). When the current extension has the fused
entry points (prepare_rays, match_project, refine_matches_lin), they are compared with the op-by-op
path of the same build (matching._FUSED = False), also timed alone. NaN at the same places counts
as equal. Exit code 1 if anything differs.

    python benchmarks/bench_match_kernels.py --baseline build/match_baseline --out match.json
    python benchmarks/bench_match_kernels.py --build-only --baseline build/match_baseline  # compile only
    ... --variant uouter=build/match_variants/uouter.cu   # A/B another version of matching.cu
"""
from __future__ import annotations

import argparse
import importlib.util
import json
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

_BIND = """#include <torch/extension.h>
#include "bindings.h"
PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("iter_proj", &mast3r_slam::iter_proj_cuda, "iterative projective matching");
  m.def("refine_matches", &mast3r_slam::refine_matches_cuda, "descriptor refinement of matches");
}
"""


def build_matching_ext(name: str, cu_path: Path):
    """An extension with only the matching bindings of ``cu_path`` (headers from csrc/)."""
    from torch.utils.cpp_extension import load

    src = Path(tempfile.gettempdir()) / f"{name}_src"
    src.mkdir(exist_ok=True)
    bind = src / "bind.cpp"
    if not bind.exists() or bind.read_text() != _BIND:
        bind.write_text(_BIND)
    return load(name=name, sources=[str(bind), str(cu_path)], extra_include_paths=[str(ROOT / "csrc")], extra_cflags=["-O3"],
                extra_cuda_cflags=["-O3", "-lineinfo"], verbose=False)


def load_module(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(f"mast3r_slam.{name}", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def use_kernels(mod) -> None:
    """Make mast3r_slam.ops dispatch to ``mod`` (needs iter_proj and refine_matches)."""
    _backend._state.update(tried=True, module=mod, source="bench", error=None)


def time_ms(fn, warmup: int, repeat: int) -> tuple[float, float]:
    """(median GPU ms between events around fn, median host ms until fn returns)."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    gpu, host = [], []
    for _ in range(repeat):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        t0 = time.perf_counter()
        fn()
        host.append(1e3 * (time.perf_counter() - t0))
        end.record()
        end.synchronize()
        gpu.append(start.elapsed_time(end))
    return statistics.median(gpu), statistics.median(host)


# ----------------------------------------------------------------------------------------------
# exactness against the baseline
# ----------------------------------------------------------------------------------------------
def _same(x: torch.Tensor, y: torch.Tensor) -> bool:
    """Bit-for-bit equal values, NaN at the same places counting as equal (torch.equal says NaN != NaN)."""
    if x.shape != y.shape or x.dtype != y.dtype:
        return False
    x, y = x.cpu(), y.cpu()
    if torch.equal(x, y):
        return True
    return bool(x.is_floating_point() and ((x == y) | (torch.isnan(x) & torch.isnan(y))).all())


class Checker:
    def __init__(self):
        self.results = []

    def equal(self, what: str, a, b) -> None:
        a, b = (a if isinstance(a, (tuple, list)) else (a,)), (b if isinstance(b, (tuple, list)) else (b,))
        ok = all(_same(x, y) for x, y in zip(a, b))
        detail = ""
        if not ok:
            diffs = []
            for x, y in zip(a, b):
                if x.shape != y.shape:
                    diffs.append(f"shape {list(x.shape)} vs {list(y.shape)}")
                else:
                    ne = (x.cpu() != y.cpu()) & ~(torch.isnan(x.cpu()) & torch.isnan(y.cpu()) if x.is_floating_point() else False)
                    diffs.append(f"{int(ne.sum())}/{ne.numel()} differ")
            detail = "; ".join(diffs)
        self.results.append((what, ok, detail))
        print(f"  {'ok  ' if ok else 'FAIL'} {what} {detail}", flush=True)

    @property
    def ok(self) -> bool:
        return all(r[1] for r in self.results)


def _misaligned(t: torch.Tensor) -> torch.Tensor:
    buf = torch.empty(t.numel() + 8, dtype=t.dtype, device=t.device)
    out = buf[1:1 + t.numel()].view(t.shape)
    out.copy_(t)
    return out


def check_exact(chk: Checker, old_ext, new_ext, old_match, problems: dict, fixtures: dict | None) -> None:
    dev = torch.device("cuda")
    cases = dict(problems)
    if fixtures:
        for pair in ("01", "13"):
            cases[f"fixture_{pair}"] = tuple(fixtures[f"{k}_{pair}"].to(dev) for k in ("X11", "X21", "D11", "D21"))
    for name, (X11, X21, D11, D21) in cases.items():
        B, H, W, _ = X11.shape
        rays, target = matching.prepare_rays(X11, X21)
        if old_match is not None:
            chk.equal(f"{name}: prepare_rays", (rays, target), old_match.prepare_rays(X11, X21))
        p0 = matching._identity_pixels(H, W, dev).expand(B, -1, -1).contiguous()
        a = old_ext.iter_proj(rays, target, p0, 10, 1e-8, 1e-6)
        b = new_ext.iter_proj(rays, target, p0, 10, 1e-8, 1e-6)
        chk.equal(f"{name}: iter_proj", b, a)
        p1 = a[0].long()
        D21f = D21.reshape(B, H * W, -1)
        for dt in (torch.float16, torch.float32):
            d11, d21 = D11.to(dt).contiguous(), D21f.to(dt).contiguous()
            chk.equal(f"{name}: refine {dt}", new_ext.refine_matches(d11, d21, p1, 3, 5), old_ext.refine_matches(d11, d21, p1, 3, 5))
        if old_match is not None:
            use_kernels(old_ext)
            ref = old_match.match(X11, X21, D11, D21, **bench_kernels.MATCH_CFG)
            use_kernels(new_ext)
            chk.equal(f"{name}: match", matching.match(X11, X21, D11, D21, **bench_kernels.MATCH_CFG), ref)
            init = torch.randint(0, H * W, (B, H * W), device=dev, generator=torch.Generator(dev).manual_seed(1))
            use_kernels(old_ext)
            ref = old_match.match(X11, X21, D11, D21, init, **bench_kernels.MATCH_CFG, revalidate=True)
            use_kernels(new_ext)
            chk.equal(f"{name}: match idx_init revalidate", matching.match(X11, X21, D11, D21, init, **bench_kernels.MATCH_CFG, revalidate=True), ref)

    # random inputs
    gen = torch.Generator().manual_seed(0)
    for F in (8, 16, 24, 32, 12):
        B, H, W, N = 2, 37, 53, 1001
        D11 = torch.nn.functional.normalize(torch.randn(B, H, W, F, generator=gen), dim=-1)
        src = torch.randint(0, H * W, (B, N), generator=gen)
        D21 = D11.reshape(B, H * W, F).gather(1, src[..., None].expand(-1, -1, F)) + 0.4 * torch.randn(B, N, F, generator=gen)
        p1 = torch.stack([torch.randint(-2, W + 2, (B, N), generator=gen), torch.randint(-2, H + 2, (B, N), generator=gen)], -1)
        d11, d21, p1 = D11.half().to(dev), D21.half().to(dev), p1.to(dev)
        for r, dm in ((3, 5), (2, 3), (0, 1)):
            chk.equal(f"random F={F} r={r} d={dm}: refine fp16", new_ext.refine_matches(d11, d21, p1, r, dm),
                      old_ext.refine_matches(d11, d21, p1, r, dm))
        chk.equal(f"random F={F}: refine fp16 misaligned", new_ext.refine_matches(_misaligned(d11), _misaligned(d21), p1, 3, 5),
                  old_ext.refine_matches(d11, d21, p1, 3, 5))
    for F in (8, 24):  # coarse values: many exactly equal float16 scores (ties follow the scan order)
        B, H, W, N = 2, 23, 31, 700
        D11 = (torch.nn.functional.normalize(torch.randn(B, H, W, F, generator=gen), dim=-1) * 2).round() / 2
        D21 = (torch.nn.functional.normalize(torch.randn(B, N, F, generator=gen), dim=-1) * 2).round() / 2
        p1 = torch.stack([torch.randint(0, W, (B, N), generator=gen), torch.randint(0, H, (B, N), generator=gen)], -1).to(dev)
        d11, d21 = D11.half().to(dev), D21.half().to(dev)
        chk.equal(f"ties F={F}: refine fp16", new_ext.refine_matches(d11, d21, p1, 3, 5), old_ext.refine_matches(d11, d21, p1, 3, 5))
    B, H, W, N = 2, 41, 57, 1500
    X11 = torch.randn(B, H, W, 3, generator=gen) * 0.02 + torch.tensor([0.0, 0.0, 3.0])
    gy, gx = torch.meshgrid(torch.linspace(-1, 1, H), torch.linspace(-1.3, 1.3, W), indexing="ij")
    X11 = X11 + torch.stack([gx, gy, torch.zeros(H, W)], -1)
    X11[1, 5:8, 9:12] = float("nan")
    X21 = X11 + 0.01 * torch.randn(B, H, W, 3, generator=gen)
    rays, target = matching.prepare_rays(X11.to(dev), X21.to(dev))
    target = target[:, :N].contiguous()
    p0 = (torch.rand(B, N, 2, generator=gen) * torch.tensor([W + 6.0, H + 6.0]) - 3.0).to(dev)
    p0[0, :5] = float("nan")
    for it in (0, 1, 10):
        chk.equal(f"random iter_proj iters={it}", new_ext.iter_proj(rays, target, p0, it, 1e-8, 1e-6), old_ext.iter_proj(rays, target, p0, it, 1e-8, 1e-6))


def check_fused(chk: Checker, ext, problems: dict, fixtures: dict | None) -> None:
    """The fused CUDA paths (ext.prepare_rays, ext.match_project + ext.refine_matches_lin) against
    the op-by-op path of the same module (matching._FUSED = False), bit for bit; prepare_rays also
    with the other norm summation orders (informational: 'mode k' lines, not counted)."""
    dev = torch.device("cuda")
    use_kernels(ext)
    cases = dict(problems)
    if fixtures:
        for pair in ("01", "13"):
            cases[f"fixture_{pair}"] = tuple(fixtures[f"{k}_{pair}"].to(dev) for k in ("X11", "X21", "D11", "D21"))
    gen = torch.Generator().manual_seed(5)
    B, H, W, F = 2, 41, 57, 24
    X11 = torch.randn(B, H, W, 3, generator=gen) * 0.02 + torch.tensor([0.0, 0.0, 3.0])
    gy, gx = torch.meshgrid(torch.linspace(-1, 1, H), torch.linspace(-1.3, 1.3, W), indexing="ij")
    X11 = X11 + torch.stack([gx, gy, torch.zeros(H, W)], -1)
    X11[1, 5:8, 9:12] = float("nan")
    X11[0, 0, 0] = 0.0  # zero vector: clamp_min(eps)
    X21 = X11 + 0.01 * torch.randn(B, H, W, 3, generator=gen)
    D11 = torch.nn.functional.normalize(torch.randn(B, H, W, F, generator=gen), dim=-1)
    D21 = torch.nn.functional.normalize(D11 + 0.3 * torch.randn(B, H, W, F, generator=gen), dim=-1)
    cases["random_nan"] = tuple(t.to(dev) for t in (X11, X21, D11, D21))
    cfg = dict(bench_kernels.MATCH_CFG)
    for name, (X11, X21, D11, D21) in cases.items():
        B, H, W, _ = X11.shape
        matching._FUSED = False
        ref_rays = matching.prepare_rays(X11, X21)
        init = torch.randint(-3, H * W + 3, (B, H * W), device=dev, generator=torch.Generator(dev).manual_seed(2))
        variants = {
            "match": ((X11, X21, D11, D21), cfg),
            "match idx_init revalidate": ((X11, X21, D11, D21, init), dict(cfg, revalidate=True)),
            "match fp16 in": ((X11, X21, D11.half(), D21.half()), cfg),
            "match radius 0": ((X11, X21, D11, D21), dict(cfg, radius=0)),
            "match F=12 fallback": ((X11, X21, D11[..., :12], D21[..., :12]), cfg),
            "match fp32 refine": ((X11, X21, D11, D21, init), dict(cfg, fp16_descriptors=False, revalidate=True)),
        }
        refs = {k: matching.match(*a, **kw) for k, (a, kw) in variants.items()}
        matching._FUSED = True
        chk.equal(f"{name}: fused prepare_rays", matching.prepare_rays(X11, X21), ref_rays)
        for mode in range(4):
            got = ext.prepare_rays(X11.contiguous(), X21.contiguous(), mode)
            same = all(_same(a, b) for a, b in zip(got, ref_rays))
            print(f"       mode {mode}: prepare_rays {'equal' if same else 'differs'}", flush=True)
        for k, (a, kw) in variants.items():
            chk.equal(f"{name}: fused {k}", matching.match(*a, **kw), refs[k])
        matching._TILED = not matching._TILED
        for k in ("match", "match idx_init revalidate", "match fp16 in"):
            a, kw = variants[k]
            chk.equal(f"{name}: fused {k} (tiled={matching._TILED})", matching.match(*a, **kw), refs[k])
        matching._TILED = not matching._TILED


# ----------------------------------------------------------------------------------------------
# timing
# ----------------------------------------------------------------------------------------------
def bench(problems: dict, kernels: dict, pys: dict, warmup: int, repeat: int) -> dict:
    """kernels: label -> extension module; pys: label -> matching module."""
    out = {}
    for pname, (X11, X21, D11, D21) in problems.items():
        B, H, W, _ = X11.shape
        rays, target = matching.prepare_rays(X11, X21)
        p0 = matching._identity_pixels(H, W, X11.device).expand(B, -1, -1).contiguous()
        d11 = D11.half().contiguous()
        d21 = D21.reshape(B, H * W, -1).half().contiguous()
        first = next(iter(kernels.values()))
        p1 = first.iter_proj(rays, target, p0, 10, 1e-8, 1e-6)[0].long()
        for kl, ext in kernels.items():
            g, _ = time_ms(lambda: ext.iter_proj(rays, target, p0, 10, 1e-8, 1e-6), warmup, repeat)
            out[f"{pname}/iter_proj/{kl}"] = g
            g, _ = time_ms(lambda: ext.refine_matches(d11, d21, p1, 3, 5), warmup, repeat)
            out[f"{pname}/refine_fp16/{kl}"] = g
        for kl, ext in kernels.items():
            if hasattr(ext, "refine_matches_lin"):  # as match passes them: float32 descriptors, cast in the packing
                d11f, d21f = D11.float().contiguous(), D21.reshape(B, H * W, -1).float().contiguous()
                for tiled in (False, True):
                    g, _ = time_ms(lambda: ext.refine_matches_lin(d11f, d21f, p1, 3, 5, tiled), warmup, repeat)
                    out[f"{pname}/refine_lin{'_tiled' if tiled else ''}/{kl}"] = g
                g, _ = time_ms(lambda: ext.match_project(X11, X21, None, 10, 1e-8, 1e-6, 0.1, matching._NORM_MODE), warmup, repeat)
                out[f"{pname}/match_project/{kl}"] = g
        for pl, mod in pys.items():
            g, h = time_ms(lambda: mod.prepare_rays(X11, X21), warmup, repeat)
            out[f"{pname}/prepare_rays/{pl}"] = g
            for kl, ext in kernels.items():
                use_kernels(ext)
                g, h = time_ms(lambda: mod.match(X11, X21, D11, D21, **bench_kernels.MATCH_CFG), warmup, repeat)
                out[f"{pname}/match/{pl}+{kl}"] = g
                out[f"{pname}/match_host/{pl}+{kl}"] = h
        for k, v in out.items():
            if k.startswith(pname + "/"):
                print(f"{k:48s} {v:8.3f} ms", flush=True)
    return out


def profile_match(problem, ext, mod, path: Path | None) -> None:
    use_kernels(ext)
    X11, X21, D11, D21 = problem
    for _ in range(3):
        mod.match(X11, X21, D11, D21, **bench_kernels.MATCH_CFG)
    torch.cuda.synchronize()
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(5):
            mod.match(X11, X21, D11, D21, **bench_kernels.MATCH_CFG)
        torch.cuda.synchronize()
    table = prof.key_averages().table(sort_by="cuda_time_total", row_limit=30, max_name_column_width=60)
    if path is not None:
        path.write_text(table)
    else:
        print(table)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--baseline", default=None, help="folder with the earlier matching.cu (and matching_old.py)")
    ap.add_argument("--variant", action="append", default=[], metavar="LABEL=FILE.cu",
                    help="also build, check (vs --baseline) and time another matching.cu (repeatable)")
    ap.add_argument("--build-only", action="store_true", help="only compile the extensions (to fill the JIT cache)")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--repeat", type=int, default=30)
    ap.add_argument("--profile", default=None, help="write a torch.profiler table of the current match() (one pair) here")
    ap.add_argument("--out", default=None, help="JSON results")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("needs a CUDA GPU", file=sys.stderr)
        return 2
    base = Path(args.baseline) if args.baseline else None
    old_ext = build_matching_ext("m3r_match_baseline", base / "matching.cu") if base else None
    variants = {}
    for v in args.variant:
        label, path = v.split("=", 1)
        variants[label] = build_matching_ext(f"m3r_match_{label}", Path(path))
    t0 = time.perf_counter()
    new_ext = _backend.get_extension()
    if new_ext is None:
        print(f"extension unavailable: {_backend.extension_status()}", file=sys.stderr)
        return 2
    print(f"extensions ready ({time.perf_counter() - t0:.1f} s)", flush=True)
    if args.build_only:
        return 0
    old_match = load_module("_matching_baseline", base / "matching_old.py") if base and (base / "matching_old.py").exists() else None
    import os

    os.environ["MAST3R_SLAM_OPS"] = "cuda"
    dev = torch.device("cuda")
    problems = bench_kernels.matching_problems(dev)
    info = dict(device=torch.cuda.get_device_name(), torch=torch.__version__, cuda=torch.version.cuda)
    print(info, flush=True)
    ok = True
    if old_ext is not None:
        fx = ROOT / "tests" / "fixtures" / "kernels" / "golden_matching.npz"
        fixtures = None
        if fx.exists():
            import numpy as np

            with np.load(fx) as d:
                fixtures = {k: torch.from_numpy(np.array(d[k])) for k in d.files}
        chk = Checker()
        print("exactness vs baseline:", flush=True)
        check_exact(chk, old_ext, new_ext, old_match, problems, fixtures)
        for label, ext in variants.items():
            print(f"exactness of variant {label} vs baseline:", flush=True)
            check_exact(chk, old_ext, ext, None, problems, fixtures)
        if hasattr(new_ext, "match_project"):
            print("exactness of the fused paths vs the op-by-op path:", flush=True)
            check_fused(chk, new_ext, problems, fixtures)
        ok = chk.ok
        print(f"exactness: {'all equal' if ok else 'DIFFERENCES'} ({sum(r[1] for r in chk.results)}/{len(chk.results)})", flush=True)
    kernels = {"new": new_ext}
    pys = {"new": matching}
    if old_ext is not None:
        kernels = {"old": old_ext, "new": new_ext}
    kernels.update(variants)
    if old_match is not None:
        pys = {"old": old_match, "new": matching}
    res = bench(problems, kernels, pys, args.warmup, args.repeat)
    if args.profile:
        profile_match(problems["1pair"], new_ext, matching, Path(args.profile))
    print(f"\nmatching on {info['device']}, median ms (CUDA events)\n")
    print("| part | " + " | ".join(problems) + " |")
    print("|---|" + "---|" * len(problems))
    keys = sorted({k.split("/", 1)[1] for k in res}, key=lambda k: (k.split("/")[0], k))
    for k in keys:
        print(f"| {k} | " + " | ".join(f"{res.get(f'{p}/{k}', float('nan')):.3f}" for p in problems) + " |")
    if args.out:
        Path(args.out).write_text(json.dumps({"info": info, "exact": ok, "results": res}, indent=2))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
