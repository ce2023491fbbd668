"""Run a whole SLAM session: dataset loop, progress, outputs, evaluation, shutdown.

``run(...)`` reads like a table of contents: open the dataset, build the prior, create the output
folder (and write the config used) *first*, run the frame loop under ``try/finally`` so that the
trajectories and the map are written at the end, on Ctrl-C and when a worker dies, then evaluate.
"""
from __future__ import annotations

import dataclasses
import logging
import sys
import time
from pathlib import Path

import numpy as np
import torch

from .config import Config
from .errors import Mast3rSlamError, WorkerError
from .frame import Mode
from .timing import timed

log = logging.getLogger("mast3r_slam")

REPO_ROOT = Path(__file__).resolve().parent.parent


def _setup_logging(quiet: bool) -> None:
    logging.basicConfig(level=logging.WARNING if quiet else logging.INFO, format="%(message)s", stream=sys.stderr)


def pick_device(name: str | None) -> torch.device:
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise Mast3rSlamError(f"--device {name}: not a torch device (use cpu, cuda or cuda:N)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise Mast3rSlamError(f"--device {name}: CUDA is not available on this machine (use --device cpu)")
    return dev


def make_prior(kind: str, dataset, cfg: Config, device: torch.device, checkpoint_dir: str | Path):
    if kind == "oracle":
        from .priors.oracle import make_oracle_prior

        return make_oracle_prior(dataset, cfg, device)
    from .priors.network import make_mast3r_prior

    dtypes = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}
    dtype = dtypes[cfg.network.precision] if device.type == "cuda" else None
    head_dtype = cfg.network.head_precision if device.type == "cuda" else None
    return make_mast3r_prior(
        checkpoint_dir, device, dtype=dtype, head_dtype=head_dtype, cuda_graphs=device.type == "cuda" and cfg.network.cuda_graphs
    )


def default_output(dataset) -> Path:
    return Path("results") / dataset.name


def run(
    cfg: Config,
    *,
    dataset_spec: str,
    dataset_type: str | None = None,
    calib: str | None = None,
    prior_kind: str = "mast3r",
    checkpoint_dir: str | Path = "checkpoints",
    output: str | Path | None = None,
    device: str | None = None,
    viewer: bool = False,
    viz_headless: str | None = None,
    viz_video: bool = False,
    max_frames: int | None = None,
    progress: bool = True,
) -> dict:
    """Run SLAM on a sequence and write the results; returns metrics.json's contents."""
    from .datasets import load_dataset
    from .io.results import MapKeyframe, ResultsWriter
    from .slam import Slam, ViewerOptions

    torch.set_grad_enabled(False)
    dev = pick_device(device)
    if calib is not None:
        cfg = cfg.replace(use_calib=True)
    dataset = load_dataset(
        dataset_spec, dataset_type, subsample=cfg.dataset.subsample, calib_path=calib, use_calib=cfg.use_calib,
        center_principal_point=cfg.dataset.center_principle_point,
    )
    n_frames = len(dataset) if not dataset.is_live else None
    if max_frames is not None:
        n_frames = max_frames if n_frames is None else min(n_frames, max_frames)
    prior = make_prior(prior_kind, dataset, cfg, dev, checkpoint_dir)
    if prior.is_stand_in:
        log.warning("NOTE: %s", prior.description)

    out_dir = Path(output) if output is not None else default_output(dataset)
    writer = ResultsWriter(out_dir) if dataset.save_results else None
    if writer is not None:
        writer.write_config(cfg)
    viz = ViewerOptions(enabled=viewer, headless_dir=viz_headless, video=viz_video)
    if viewer and not viz_headless:
        from .viewer import display_available

        if not display_available():
            log.warning("no display: running without a window (use --viz-headless DIR to render offscreen)")
            viz.enabled = False

    slam = Slam(cfg, prior, device=dev, K=dataset.K if cfg.use_calib else None, viewer=viz, n_frames=n_frames)
    if writer is not None and cfg.dynamic.enabled:
        slam.mask_sink = writer.write_dynamic_mask  # per-frame moving-pixel masks, written as they come
    status, error = "completed", None
    bar = None
    try:
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=n_frames, unit="frame", dynamic_ncols=True, leave=True)
        i = 0
        while n_frames is None or i < n_frames:
            slam.wait_if_paused()
            if slam.should_stop():
                status = "stopped from the viewer"
                break
            with timed("frame"):  # (profiling: the whole frame, so that its sections add up)
                try:
                    with timed("frontend.load"):
                        sample = dataset.frame_rgb(i) if hasattr(dataset, "frame_rgb") else dataset[i]
                except IndexError:
                    break
                outcome = slam.track(i, sample.timestamp, sample.rgb)
                slam.check_workers()
            i += 1
            if bar is not None:
                bar.update(1)
                if i % 5 == 0 or outcome.new_keyframe:
                    bar.set_postfix(mode=outcome.mode.name, kf=len(slam.store), fps=f"{slam.store.get('fps'):.1f}", refresh=False)
    except KeyboardInterrupt:
        status, error = "interrupted", KeyboardInterrupt()
    except WorkerError as e:
        status, error = "backend died", e
    finally:
        if bar is not None:
            bar.close()
        try:
            result = slam.finish(wait_backend=status == "completed" or status.startswith("stopped"), timeout=None if status == "completed" else 10)
            metrics = _metrics(result, dataset, cfg, prior, dev, status)
            if writer is not None:
                if cfg.dynamic.enabled and status == "completed":  # map clean-up with the final poses
                    from .dynamic import cross_check

                    metrics["dynamic_pixels_cross_check"] = cross_check(cfg.dynamic, result.keyframes)
                kfs = [MapKeyframe.from_frame(f) for f in result.keyframes]
                valid = result.frame_valid
                writer.write_all(
                    frame_timestamps=[t for t, v in zip(result.timestamps, valid) if v], frame_T_WC=result.frame_T_WC[valid],
                    keyframes=kfs, config=cfg, c_thresh=slam.conf_threshold(),
                )
                _evaluate(metrics, dataset, writer, cfg)
                writer.write_metrics(metrics)
        finally:
            slam.close()
            dataset.close()
    _report(metrics, writer, status)
    if error is not None:
        raise error
    return metrics


def _metrics(result, dataset, cfg: Config, prior, dev, status: str) -> dict:
    return {
        "sequence": dataset.name,
        "status": status,
        "prior": prior.description,
        "prior_is_network": not prior.is_stand_in,
        "device": str(dev) if dev.type != "cuda" else f"cuda ({torch.cuda.get_device_name(dev)})",
        "use_calib": cfg.use_calib,
        "single_thread": cfg.single_thread,
        **result.stats,
    }


def _evaluate(metrics: dict, dataset, writer, cfg: Config) -> None:
    gt = dataset.groundtruth_path()
    if gt is None:
        return
    from .eval.ate import compute_ate

    ate = metrics.setdefault("ate", {})
    for name, fname in (("keyframes", "trajectory_keyframes.txt"), ("frames", "trajectory.txt")):
        est = writer.path(fname)
        if not est.is_file() or est.stat().st_size == 0:
            continue
        try:
            r = compute_ate(gt, est, align="sim3")
            ate[name] = {"rmse": r["rmse"], "mean": r["mean"], "median": r["median"], "max": r["max"], "n": r["n_matched"], "scale": r["scale"]}
            if cfg.use_calib:
                r2 = compute_ate(gt, est, align="se3")
                ate[name]["rmse_se3"] = r2["rmse"]
        except Mast3rSlamError as e:
            ate[name] = {"error": str(e)}
    if "rmse" in ate.get("keyframes", {}):
        metrics["ate_rmse"] = ate["keyframes"]["rmse"]


def _report(metrics: dict, writer, status: str) -> None:
    lines = []
    if "ate_rmse" in metrics:
        lines.append(f"ATE RMSE: {metrics['ate_rmse']:.4f} m (keyframes, Sim(3)-aligned)")
        af = metrics.get("ate", {}).get("frames", {})
        if "rmse" in af:
            lines.append(f"ATE RMSE (all frames): {af['rmse']:.4f} m")
    lines.append(
        f"{metrics.get('frames', 0)} frames, {metrics.get('keyframes', 0)} keyframes, {metrics.get('edges', 0)} edges, "
        f"{metrics.get('relocalisations', 0)} relocalisations, {metrics.get('fps', 0):.1f} FPS ({status})"
    )
    if not metrics.get("prior_is_network", True):
        lines.append("prior: ground-truth stand-in (not the network)")
    if writer is not None:
        lines.append(f"results: {writer.out_dir}")
    print("\n".join(lines), flush=True)


def run_from_args(args, cfg: Config) -> int:
    _setup_logging(args.quiet)
    try:
        run(
            cfg,
            dataset_spec=args.dataset,
            dataset_type=args.dataset_type,
            calib=args.calib,
            prior_kind=args.prior,
            checkpoint_dir=args.checkpoint_dir,
            output=args.output,
            device=args.device,
            viewer=not args.no_viz,
            viz_headless=args.viz_headless,
            viz_video=args.viz_video,
            max_frames=args.max_frames,
            progress=not args.quiet,
        )
    except KeyboardInterrupt:
        sys.stderr.write("interrupted: results written\n")
        return 130
    except WorkerError as e:
        sys.stderr.write(f"error: {e}\n")
        return 1
    return 0
