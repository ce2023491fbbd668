#!/usr/bin/env python
"""Time the MASt3R network: our fast path against an "original-style" configuration, same run.

Builds the official ViT-L network with the synthetic weights of tests/fixtures/mast3r (no
checkpoint needed; timings do not depend on the values) and measures, at 512x384 (H x W =
384 x 512), with CUDA events (median of --iters runs after warm-up):

* encode one image;
* decode one pair + both heads;
* a tracked frame: encode + pair decode;
* 4 symmetric pairs (8 directed decodes): one batched call (ours) or a Python loop (original).

Configurations:

* ``original``: fp32 weights, TF32 matmul/conv, explicit attention, batch 1, no CUDA graphs,
  pairs in a Python loop (how the original runs, apart from its compiled RoPE kernel);
* ``fp16-eager``: fp16 trunk, SDPA, batched pairs, no graphs (what plain PyTorch tricks give);
* ``fp16`` / ``bf16``: half trunk, fp32 heads, SDPA, CUDA graphs, batched pairs (our fast path);
* ``fp16-f32heads``: same with the head weights stored in fp32 (no per-call cast);
* ``fp16-cl``, ``fp16-f32heads-cl``: same with channels-last DPT heads.

Accuracy: outputs of each configuration against strict fp32 (TF32 off) on the fixture inputs and
on a 512x384 pair (pts3d relative error per pixel: median / max; descriptor cosine similarity:
mean / min; conf relative error), and strict fp32 against the original's golden outputs.

    python benchmarks/bench_network.py --out results/bench_network.json        # GPU
    python benchmarks/bench_network.py --small --out /tmp/bench_small.json     # CPU smoke test

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
def make_variant(base, name: str, device: torch.device):
    """(model, options) for a configuration name; ``base`` is the CPU fp32 model (left untouched)."""
    m = copy.deepcopy(base)
    if name == "original":
        m.configure(device, torch.float32).set_attention("math")
        m.decoder.paired = False  # the two decoder streams one after the other, as the original
        m.tf32 = True
        return m, {"batched": False, "graphs": False}
    dt = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp16-eager": torch.float16, "fp32-graphs": torch.float32,
          "fp16-f32heads": torch.float16, "fp16-cl": torch.float16, "fp16-f32heads-cl": torch.float16}[name]
    head_dt = torch.float32 if name in ("fp16-f32heads", "fp32-graphs", "fp16-f32heads-cl") else None
    m.configure(device, dt, head_weight_dtype=head_dt).set_attention("sdpa")
    if name.endswith("-cl"):
        m.set_channels_last(True)
    m.tf32 = True
    graphs = device.type == "cuda" and name != "fp16-eager"
    if graphs:
        m.enable_cuda_graphs(True)
    return m, {"batched": True, "graphs": graphs}


def bench_variant(model, opts, device, img1, img2, iters, warmup, n_pairs: int) -> dict:
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
    # n_pairs symmetric pairs = 2 n_pairs directed decodes
    fi = [f1, f2] * (n_pairs // 2) + [f1] * (n_pairs % 2)
    pi = [p1, p2] * (n_pairs // 2) + [p1] * (n_pairs % 2)
    fj = [f2, f1] * (n_pairs // 2) + [f2] * (n_pairs % 2)
    pj = [p2, p1] * (n_pairs // 2) + [p2] * (n_pairs % 2)
    if opts["batched"]:
        F1, P1 = torch.cat(fi + fj), torch.cat(pi + pj)
        F2, P2 = torch.cat(fj + fi), torch.cat(pj + pi)
        sym = lambda: model.decode(F1, P1, F2, P2, shape, shape)  # noqa: E731
    else:
        def sym():
            out = []
            for a, pa, b, pb in zip(fi, pi, fj, pj):
                out.append(model.decode(a, pa, b, pb, shape, shape))
                out.append(model.decode(b, pb, a, pa, shape, shape))
            return out
    res[f"sym{n_pairs}"] = time_fn(sym, device, iters, warmup)
    return res


def weight_bytes(model) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--small", action="store_true", help="toy network and 64x48 images (CPU smoke test)")
    ap.add_argument("--device", default=None, help="cuda or cpu (default: cuda if available)")
    ap.add_argument("--iters", type=int, default=None, help="timed runs per measurement (default 30, small: 3)")
    ap.add_argument("--warmup", type=int, default=None, help="warm-up runs (default 5, small: 1)")
    ap.add_argument("--variants", default="original,fp16-eager,fp16,bf16,fp16-f32heads,fp16-cl",
                    help="comma list of: original, fp16-eager, fp16, bf16, fp16-f32heads, fp16-cl, "
                         "fp16-f32heads-cl, fp32-graphs")
    ap.add_argument("--pairs", type=int, default=4, help="symmetric pairs in the backend measurement")
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    args = ap.parse_args(argv)

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    iters = args.iters or (3 if args.small else 30)
    warmup = args.warmup or (1 if args.small else 5)
    arch = TINY if args.small else VITL
    H, W = (48, 64) if args.small else (384, 512)
    info = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__, "python": platform.python_version(), "arch": "TINY" if args.small else "ViT-L",
        "image_hw": [H, W], "iters": iters, "warmup": warmup,
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

    for name in [v.strip() for v in args.variants.split(",") if v.strip()]:
        entry = {}
        try:
            model, opts = make_variant(base, name, device)
            entry["options"] = opts
            entry["weight_bytes"] = weight_bytes(model)
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            entry["timings"] = bench_variant(model, opts, device, img1, img2, iters, warmup, args.pairs)
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
            del model
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

    print_table(results, args.pairs)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(results, indent=2))
        print(f"wrote {args.out}")
    return 0


def print_table(results: dict, n_pairs: int) -> None:
    sym = f"sym{n_pairs}"
    print()
    print(f"| configuration | encode ms | pair decode+heads ms | encode+pair ms | {n_pairs} sym. pairs ms | weights GB | "
          "peak GB | pts3d rel. err (median / max) | desc cos (mean / min) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, e in results["variants"].items():
        if "error" in e:
            print(f"| {name} | failed: {e['error'][:80]} |||||||| ")
            continue
        t = e["timings"]
        er = e["errors_vs_fp32"]["synthetic_pair"]
        peak = e.get("peak_mem_bytes")
        print(
            f"| {name} | {t['encode']['median_ms']:.2f} | {t['pair']['median_ms']:.2f} | {t['frame']['median_ms']:.2f} | "
            f"{t[sym]['median_ms']:.2f} | {e['weight_bytes'] / 1e9:.2f} | {peak / 1e9 if peak else float('nan'):.2f} | "
            f"{er['pts3d_rel_median']:.2e} / {er['pts3d_rel_max']:.2e} | {er['desc_cos_mean']:.5f} / {er['desc_cos_min']:.4f} |"
        )
    o = results["original_reference_ms"]
    print(f"\nOriginal code on an H100 (reference_benchmarks.md): encode {o['encode']} ms, pair {o['pair']} ms, "
          f"encode+pair {o['frame']} ms.")
    if "golden_fp32" in results:
        print(f"Strict fp32 on this device vs the original's golden outputs: {results['golden_fp32']}")
    print("Errors on the fixture inputs (vs strict fp32):")
    for name, e in results["variants"].items():
        if "errors_vs_fp32" in e:
            f = e["errors_vs_fp32"]["fixtures"]
            print(f"  {name}: pts3d median {f['pts3d_rel_median']:.2e} max {f['pts3d_rel_max']:.2e}, "
                  f"desc cos mean {f['desc_cos_mean']:.5f} min {f['desc_cos_min']:.4f}, conf median {f['conf_rel_median']:.2e}")


if __name__ == "__main__":
    sys.exit(main())
