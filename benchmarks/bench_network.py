#!/usr/bin/env python
"""Time the MASt3R network: our fast path against an "original-style" configuration, same run.

Builds the official ViT-L network with the synthetic weights of tests/fixtures/mast3r (no
checkpoint needed; timings do not depend on the values) and measures, at 512x384 (H x W =
384 x 512), with CUDA events (median of --iters runs after warm-up):

* encode one image;
* decode one pair + both heads;
* a tracked frame: encode + pair decode;
* 4 symmetric pairs (8 directed decodes): one batched call (ours) or a Python loop (original).

Configurations (``--variants``, a comma list). ``original``: fp32 weights, TF32 matmul/conv,
explicit attention, batch 1, no CUDA graphs, pairs in a Python loop (how the original runs, apart
from its compiled RoPE kernel). Any other name is ``<trunk>[-flag...]``, trunk fp32 / fp16 / bf16
(SDPA, batched pairs, CUDA graphs on the GPU), flags:

* ``eager``: no CUDA graphs;
* ``h16`` / ``hbf16``: heads compute in fp16 / bf16 (DPT convolutions and local-feature MLP; the
  post-processing stays fp32); default: heads compute in fp32;
* ``f32heads``: head weights stored in fp32 (with fp32 heads: no per-call cast);
* ``cl``: channels-last DPT heads;
* ``convt``: cuDNN transposed convolutions instead of the matmul + pixel-shuffle form;
* ``nobench``: cuDNN autotuning off (default: on for half-precision heads, off for fp32 heads);
* ``interp``: half-precision x2 upsampling by F.interpolate instead of two interpolation matmuls;
* ``nofuse``: no fused cuDNN conv + bias + ReLU in half-precision heads;
* ``notriton``: local-feature post-processing in PyTorch ops instead of the fused Triton kernel;
* ``graphs``: no-op (graphs are on by default; kept for ``fp32-graphs``).

Examples: ``fp16`` (fp16 trunk, fp32 heads, graphs), ``fp16-h16-cl`` (the fastest configuration
we expect), ``fp16-eager``, ``fp16-f32heads``, ``fp16-cl``, ``bf16-hbf16-cl``.

Timings per configuration: encode; pair decode + heads; a tracked frame (encode + pair decode);
``Mast3rPrior.symmetric`` for B = 1, 2, 4, 8 pairs (2B directed decodes; ms per directed decode is
reported; with graphs the batch is split into the captured chunk sizes 1, 2, 4, 8).

Accuracy: outputs of each configuration against strict fp32 (TF32 off) on the fixture inputs and
on a 512x384 pair (pts3d relative error per pixel: median / max; descriptor cosine similarity:
mean / min; conf relative error), and strict fp32 against the original's golden outputs.

    python benchmarks/bench_network.py --out results/bench_network.json        # GPU (~4 minutes)
    python benchmarks/bench_network.py --small --out /tmp/bench_small.json     # CPU smoke test
    python benchmarks/bench_network.py --profile fp16-h16-cl                   # + top CUDA kernels

Prints a markdown table; --out writes everything as JSON.
"""
from __future__ import annotations

import argparse
import copy
import gc
import json
import platform
import statistics
import sys
import time
import traceback
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from mast3r_slam.network import TINY, VITL  # noqa: E402
from mast3r_slam.network.synthetic import synthetic_model  # noqa: E402

FIXTURES = ROOT / "tests" / "fixtures" / "mast3r"
ORIGINAL_MS = {"encode": 20.5, "pair": 25.8, "frame": 46.3}  # reference_benchmarks.md, H100, original code


# ---------------------------------------------------------------------------- timing
def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_fn(fn, device, iters: int, warmup: int) -> dict:
    """Median / min / max milliseconds of ``fn()`` (CUDA events on the GPU, perf_counter on the CPU)."""
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(iters):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    return {"median_ms": statistics.median(times), "min_ms": min(times), "max_ms": max(times), "n": len(times)}


# ---------------------------------------------------------------------------- inputs
def synthetic_pair(H: int, W: int, shift: int = 24, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Two normalised views [1, 3, H, W] of one smooth textured pattern, the second shifted by ``shift`` px."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:H, 0 : W + shift].astype(np.float64)
    img = np.zeros((H, W + shift, 3))
    for _ in range(12):
        f = rng.uniform(0.005, 0.05, 2)
        ph = rng.uniform(0, 2 * np.pi)
        img += rng.uniform(0.2, 1.0, 3) * np.sin(2 * np.pi * (f[0] * yy + f[1] * xx) + ph)[..., None]
    img = (img - img.min()) / (img.max() - img.min())
    img = np.clip(img + 0.05 * rng.standard_normal(img.shape), 0, 1)
    u8 = (img * 255).astype(np.uint8)
    to_t = lambda a: (torch.from_numpy(np.ascontiguousarray(a)).permute(2, 0, 1).float() / 255.0 - 0.5)[None] / 0.5  # noqa: E731
    return to_t(u8[:, :W]), to_t(u8[:, shift : shift + W])


def fixture_inputs() -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    g = np.load(FIXTURES / "golden_vitl.npz")
    A, B, P = (torch.from_numpy(g[f"img_{x}"]) for x in "ABP")
    return {"mono_A": (A, A), "mono_P": (P, P), "pair_AB": (A, B), "pair_BA": (B, A)}


# ---------------------------------------------------------------------------- accuracy
def compare(ref: dict, out: dict) -> dict:
    p_ref, p = ref["pts3d"].double(), out["pts3d"].double()
    rel = ((p - p_ref).norm(dim=-1) / p_ref.norm(dim=-1).clamp_min(1e-12)).flatten()
    cos = (ref["desc"].double() * out["desc"].double()).sum(-1).flatten()
    crel = ((out["conf"].double() - ref["conf"].double()).abs() / ref["conf"].double()).flatten()
    qrel = ((out["desc_conf"].double() - ref["desc_conf"].double()).abs() / ref["desc_conf"].double()).flatten()
    return {
        "pts3d_rel_median": float(rel.median()), "pts3d_rel_max": float(rel.max()),
        "desc_cos_mean": float(cos.mean()), "desc_cos_min": float(cos.min()),
        "conf_rel_median": float(crel.median()), "conf_rel_max": float(crel.max()),
        "desc_conf_rel_median": float(qrel.median()),
    }


def run_pair(model, img1, img2):
    f1, p1 = model.encode(img1)
    f2, p2 = model.encode(img2)
    r1, r2 = model.decode(f1, p1, f2, p2, tuple(img1.shape[-2:]), tuple(img2.shape[-2:]))
    return {k: v.float().cpu() for k, v in r1.items()}, {k: v.float().cpu() for k, v in r2.items()}


def merge_errors(errs: list[dict]) -> dict:
    out = {}
    for k in errs[0]:
        vals = [e[k] for e in errs]
        if "max" in k:
            out[k] = max(vals)
        elif "min" in k:
            out[k] = min(vals)
        else:
            out[k] = float(np.mean(vals))
    return out


def golden_check(model) -> dict:
    """Strict fp32 model against the original's golden outputs (README tolerances)."""
    g = np.load(FIXTURES / "golden_vitl.npz")
    cases = {"mono_A": "AA", "mono_P": "PP", "pair_AB": "AB", "pair_BA": "BA"}
    worst = {"enc_abs": 0.0, "pts3d_rel": 0.0, "conf_rel": 0.0, "desc_abs": 0.0, "desc_conf_rel": 0.0}
    enc = {}
    for x in "ABP":
        f, p = model.encode(torch.from_numpy(g[f"img_{x}"]).to(model.device))
        enc[x] = (f, p, tuple(g[f"img_{x}"].shape[-2:]))
        worst["enc_abs"] = max(worst["enc_abs"], float(np.abs(f.cpu().numpy() - g[f"enc_feat_{x}"]).max()))
    for tag, (a, b) in cases.items():
        res = model.decode(*enc[a][:2], *enc[b][:2], enc[a][2], enc[b][2])
        for k, r in zip(("res1", "res2"), res):
            r = {q: v.cpu().double().numpy() for q, v in r.items()}
            ref = {q: g[f"{tag}_{k}_{q}"].astype(np.float64) for q in r}
            worst["pts3d_rel"] = max(worst["pts3d_rel"], float(
                (np.linalg.norm(r["pts3d"] - ref["pts3d"], axis=-1) / np.linalg.norm(ref["pts3d"], axis=-1)).max()))
            worst["conf_rel"] = max(worst["conf_rel"], float((np.abs(r["conf"] - ref["conf"]) / ref["conf"]).max()))
            worst["desc_conf_rel"] = max(worst["desc_conf_rel"], float(
                (np.abs(r["desc_conf"] - ref["desc_conf"]) / ref["desc_conf"]).max()))
            worst["desc_abs"] = max(worst["desc_abs"], float(np.abs(r["desc"] - ref["desc"]).max()))
    worst["pass"] = bool(worst["enc_abs"] <= 1e-4 and worst["pts3d_rel"] <= 1e-3 and worst["conf_rel"] <= 1e-3
                         and worst["desc_conf_rel"] <= 1e-3 and worst["desc_abs"] <= 1e-4)
    return worst


# ---------------------------------------------------------------------------- configurations
DEFAULT_VARIANTS = "original,fp16-eager,fp16,fp16-cl,fp16-h16,fp16-h16-cl,fp16-h16-cl-eager,bf16-hbf16-cl"
_FLAGS = {"eager", "h16", "hbf16", "f32heads", "cl", "convt", "nobench", "graphs", "interp", "nofuse", "notriton"}
_TRUNKS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def parse_variant(name: str) -> dict:
    """Options of a configuration name (see the module docstring); ValueError for unknown parts."""
    if name == "original":
        return {"original": True, "trunk": torch.float32, "head": torch.float32, "flags": set()}
    trunk, *flags = name.split("-")
    bad = [f for f in flags if f not in _FLAGS]
    if trunk not in _TRUNKS or bad:
        raise ValueError(f"unknown configuration {name!r}: trunk must be one of {sorted(_TRUNKS)} and flags in "
                         f"{sorted(_FLAGS)}")
    head = torch.float16 if "h16" in flags else torch.bfloat16 if "hbf16" in flags else torch.float32
    return {"original": False, "trunk": _TRUNKS[trunk], "head": head, "flags": set(flags)}


def make_variant(base, name: str, device: torch.device):
    """(model, options) for a configuration name; ``base`` is the CPU fp32 model (left untouched)."""
    from mast3r_slam.network import heads as heads_mod

    o = parse_variant(name)
    heads_mod.F32ConvTranspose2d.use_matmul = "convt" not in o["flags"]
    heads_mod.UP2_IMPL = "interpolate" if "interp" in o["flags"] else "matmul"
    heads_mod.FUSE_CONV_RELU = "nofuse" not in o["flags"]
    heads_mod.FUSED_LOCAL = "notriton" not in o["flags"]
    m = copy.deepcopy(base)
    if o["original"]:
        m.configure(device, torch.float32).set_attention("math")
        m.decoder.paired = False  # the two decoder streams one after the other, as the original
        m.tf32 = True
        m.cudnn_benchmark = False
        return m, {"batched": False, "graphs": False, "head_dtype": "float32"}
    head_w = torch.float32 if "f32heads" in o["flags"] else None
    m.configure(device, o["trunk"], head_weight_dtype=head_w, head_dtype=o["head"]).set_attention("sdpa")
    if "cl" in o["flags"]:
        m.set_channels_last(True)
    m.tf32 = True
    m.cudnn_benchmark = False if "nobench" in o["flags"] else None  # None: on for half heads
    graphs = device.type == "cuda" and "eager" not in o["flags"]
    if graphs:
        m.enable_cuda_graphs(True)
    return m, {"batched": True, "graphs": graphs, "head_dtype": str(o["head"]).replace("torch.", "")}


def _fake_frames(feats, shape):
    """Minimal frames for Mast3rPrior (encoder features already cached)."""
    from types import SimpleNamespace

    return [SimpleNamespace(feat=f, pos=p, img_shape=shape) for f, p in feats]


def bench_variant(model, opts, device, img1, img2, iters, warmup, pair_counts) -> dict:
    from mast3r_slam.priors.network import Mast3rPrior

    H, W = img1.shape[-2:]
    img1, img2 = img1.to(device), img2.to(device)
    f1, p1 = model.encode(img1)
    f2, p2 = model.encode(img2)
    shape = (H, W)
    res = {}
    res["encode"] = time_fn(lambda: model.encode(img1), device, iters, warmup)
    res["pair"] = time_fn(lambda: model.decode(f1, p1, f2, p2, shape, shape), device, iters, warmup)

    def frame():
        f, p = model.encode(img1)
        return model.decode(f, p, f2, p2, shape, shape)

    res["frame"] = time_fn(frame, device, iters, warmup)
    prior = Mast3rPrior(model)
    for n_pairs in pair_counts:
        # n_pairs symmetric pairs = 2 n_pairs directed decodes
        fi = _fake_frames([(f1, p1), (f2, p2)] * (n_pairs // 2) + [(f1, p1)] * (n_pairs % 2), shape)
        fj = _fake_frames([(f2, p2), (f1, p1)] * (n_pairs // 2) + [(f2, p2)] * (n_pairs % 2), shape)
        if opts["batched"]:
            sym = lambda fi=fi, fj=fj: prior.symmetric(fi, fj)  # noqa: E731
        else:
            def sym(fi=fi, fj=fj):
                out = []
                for a, b in zip(fi, fj):
                    out.append(model.decode(a.feat, a.pos, b.feat, b.pos, shape, shape))
                    out.append(model.decode(b.feat, b.pos, a.feat, a.pos, shape, shape))
                return out
        t = time_fn(sym, device, iters, warmup)
        t["per_directed_ms"] = t["median_ms"] / (2 * n_pairs)
        res[f"sym{n_pairs}"] = t
    return res


def profile_variant(model, device, img1, img2, out_path=None, n_pairs: int = 4) -> str:
    """Top CUDA kernels of one pair decode and one n_pairs symmetric decode (run eagerly)."""
    from torch.profiler import ProfilerActivity, profile

    model._enc_graphs = model._dec_graphs = None  # eager: kernels visible
    H, W = img1.shape[-2:]
    f1, p1 = model.encode(img1.to(device))
    f2, p2 = model.encode(img2.to(device))
    F1, P1 = torch.cat([f1, f2] * n_pairs), torch.cat([p1, p2] * n_pairs)
    F2, P2 = torch.cat([f2, f1] * n_pairs), torch.cat([p2, p1] * n_pairs)
    text = []
    for tag, args in (("pair", (f1, p1, f2, p2)), (f"{2 * n_pairs} directed", (F1, P1, F2, P2))):
        for _ in range(3):
            model.decode(*args, (H, W), (H, W))
        _sync(device)
        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
        with profile(activities=acts) as prof:
            model.decode(*args, (H, W), (H, W))
            _sync(device)
        keys = ("self_device_time_total", "self_cuda_time_total") if device.type == "cuda" else ("self_cpu_time_total",)
        table = None
        for key in keys:  # the column was renamed across torch versions
            try:
                table = prof.key_averages().table(sort_by=key, row_limit=30, max_name_column_width=90)
                break
            except Exception as e:  # noqa: BLE001
                table = f"(profiler table failed: {e!r})"
        text.append(f"## profile: decode of {tag} (eager)\n{table}")
    out = "\n".join(text)
    if out_path:
        Path(out_path).write_text(out)
    return out


def weight_bytes(model) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--small", action="store_true", help="toy network and 64x48 images (CPU smoke test)")
    ap.add_argument("--device", default=None, help="cuda or cpu (default: cuda if available)")
    ap.add_argument("--iters", type=int, default=None, help="timed runs per measurement (default 30, small: 3)")
    ap.add_argument("--warmup", type=int, default=None, help="warm-up runs (default 5, small: 1)")
    ap.add_argument("--variants", default=DEFAULT_VARIANTS,
                    help="comma list of configurations: original or <fp32|fp16|bf16>[-flag...], flags eager, h16, "
                         "hbf16, f32heads, cl, convt, nobench (see the module docstring)")
    ap.add_argument("--pairs", default="1,2,4,8",
                    help="comma list of symmetric pair counts B to time through Mast3rPrior.symmetric (2B directed decodes)")
    ap.add_argument("--profile", default=None, help="also profile this configuration's decode (eager) and print its top kernels")
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    args = ap.parse_args(argv)

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    iters = args.iters or (3 if args.small else 30)
    warmup = args.warmup or (1 if args.small else 5)
    pair_counts = [int(x) for x in str(args.pairs).split(",") if x.strip()]
    arch = TINY if args.small else VITL
    H, W = (48, 64) if args.small else (384, 512)
    info = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__, "python": platform.python_version(), "arch": "TINY" if args.small else "ViT-L",
        "image_hw": [H, W], "iters": iters, "warmup": warmup, "pairs": pair_counts,
    }
    print(f"# MASt3R network benchmark ({info['arch']}, {H}x{W}, {info['device']}, torch {info['torch']})", flush=True)
    t0 = time.time()
    base = synthetic_model(arch)
    print(f"built synthetic weights in {time.time() - t0:.1f} s", flush=True)
    img1, img2 = synthetic_pair(H, W, shift=8 if args.small else 24)
    fixtures = fixture_inputs()

    # strict fp32 reference (TF32 off, explicit attention)
    ref_model = copy.deepcopy(base).configure(device, torch.float32).set_attention("math")
    ref_model.tf32 = False
    ref_out = {"synthetic_pair": run_pair(ref_model, img1.to(device), img2.to(device))}
    for tag, (a, b) in fixtures.items():
        ref_out[tag] = run_pair(ref_model, a.to(device), b.to(device))
    results = {"info": info, "variants": {}, "original_reference_ms": ORIGINAL_MS}
    if not args.small:
        try:
            results["golden_fp32"] = golden_check(ref_model)
        except Exception as e:  # noqa: BLE001 - report and go on
            results["golden_fp32"] = {"error": repr(e)}
    del ref_model
    if device.type == "cuda":
        torch.cuda.empty_cache()

    names = [v.strip() for v in args.variants.split(",") if v.strip()]
    if args.profile and args.profile not in names:
        names.append(args.profile)
    for name in names:
        entry = {}
        model = None
        try:
            model, opts = make_variant(base, name, device)
            entry["options"] = opts
            entry["weight_bytes"] = weight_bytes(model)
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            entry["timings"] = bench_variant(model, opts, device, img1, img2, iters, warmup, pair_counts)
            if device.type == "cuda":
                entry["peak_mem_bytes"] = torch.cuda.max_memory_allocated(device)
            r1, r2 = run_pair(model, img1.to(device), img2.to(device))
            ref1, ref2 = ref_out["synthetic_pair"]
            errs = {"synthetic_pair": merge_errors([compare(ref1, r1), compare(ref2, r2)])}
            fx = []
            for tag, (a, b) in fixtures.items():
                r1, r2 = run_pair(model, a.to(device), b.to(device))
                fx += [compare(ref_out[tag][0], r1), compare(ref_out[tag][1], r2)]
            errs["fixtures"] = merge_errors(fx)
            entry["errors_vs_fp32"] = errs
            if name == args.profile:
                entry["profile"] = profile_variant(model, device, img1, img2)
                print(entry["profile"], flush=True)
        except Exception as e:  # noqa: BLE001 - one failing variant must not hide the others
            entry["error"] = f"{type(e).__name__}: {e}"
            entry["traceback"] = traceback.format_exc()
            print(f"variant {name} failed: {entry['error']}", flush=True)
        results["variants"][name] = entry
        model = None
        gc.collect()  # the model and its graph runners reference each other
        if device.type == "cuda":
            torch.cuda.empty_cache()
        print(f"done: {name}", flush=True)

    print_table(results, pair_counts)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(results, indent=2))
        print(f"wrote {args.out}")
    return 0


def print_table(results: dict, pair_counts) -> None:
    print()
    sym_cols = "".join(f" sym B={n} ms/dir |" for n in pair_counts)
    print(f"| configuration | encode ms | pair decode+heads ms | encode+pair ms |{sym_cols} weights GB | peak GB | "
          "pts3d rel. err (median / max) | desc cos (mean / min) | conf rel. err median |")
    print("|---|---|---|---|" + "---|" * len(pair_counts) + "---|---|---|---|---|")
    for name, e in results["variants"].items():
        if "error" in e:
            print(f"| {name} | failed: {e['error'][:100]} |" + "|" * (8 + len(pair_counts)))
            continue
        t = e["timings"]
        er = e["errors_vs_fp32"]["synthetic_pair"]
        peak = e.get("peak_mem_bytes")
        syms = "".join(f" {t[f'sym{n}']['per_directed_ms']:.2f} |" for n in pair_counts)
        print(
            f"| {name} | {t['encode']['median_ms']:.2f} | {t['pair']['median_ms']:.2f} | {t['frame']['median_ms']:.2f} |"
            f"{syms} {e['weight_bytes'] / 1e9:.2f} | {peak / 1e9 if peak else float('nan'):.2f} | "
            f"{er['pts3d_rel_median']:.2e} / {er['pts3d_rel_max']:.2e} | {er['desc_cos_mean']:.6f} / {er['desc_cos_min']:.5f} | "
            f"{er['conf_rel_median']:.2e} |"
        )
    o = results["original_reference_ms"]
    print(f"\nsym B=n ms/dir: Mast3rPrior.symmetric of n pairs (2n directed decodes), median ms divided by 2n.")
    print(f"Original code on an H100 (reference_benchmarks.md): encode {o['encode']} ms, pair {o['pair']} ms, "
          f"encode+pair {o['frame']} ms.")
    if "golden_fp32" in results:
        print(f"Strict fp32 on this device vs the original's golden outputs: {results['golden_fp32']}")
    print("Errors on the fixture inputs (vs strict fp32):")
    for name, e in results["variants"].items():
        if "errors_vs_fp32" in e:
            f = e["errors_vs_fp32"]["fixtures"]
            print(f"  {name}: pts3d median {f['pts3d_rel_median']:.2e} max {f['pts3d_rel_max']:.2e}, "
                  f"desc cos mean {f['desc_cos_mean']:.6f} min {f['desc_cos_min']:.5f}, conf median {f['conf_rel_median']:.2e} "
                  f"max {f['conf_rel_max']:.2e}, desc_conf median {f['desc_conf_rel_median']:.2e}")


if __name__ == "__main__":
    sys.exit(main())
