"""Rebuild tests/data from the full excerpts in /work/shared/data (or another root).

    python tests/data/make_data.py [SOURCE_ROOT]

TUM: first 20 colour frames re-encoded as JPEG quality 95 (rgb.txt points at the .jpg files),
their depth PNGs losslessly recompressed, ground truth lines covering them. EuRoC: first 5
frames (PNG, lossless recompression), data.csv, sensor.yaml, ground truth lines covering them.
DAVIS: first 5 JPEG frames copied, plus an MP4 (mp4v, 30 fps) encoded from them with OpenCV.
"""
from __future__ import annotations

import shutil
import sys
from pathlib import Path

import cv2

HERE = Path(__file__).resolve().parent


def tum(src: Path, dst: Path, n: int = 20) -> None:
    (dst / "rgb").mkdir(parents=True, exist_ok=True)
    (dst / "depth").mkdir(parents=True, exist_ok=True)
    rgb_lines = [ln for ln in (src / "rgb.txt").read_text().splitlines() if ln and not ln.startswith("#")][:n]
    out = ["# color images", f"# first {n} frames of {src.name}, re-encoded as JPEG quality 95", "# timestamp filename"]
    for ln in rgb_lines:
        t, f = ln.split()
        jpg = f"rgb/{t}.jpg"
        cv2.imwrite(str(dst / jpg), cv2.imread(str(src / f)), [cv2.IMWRITE_JPEG_QUALITY, 95])
        out.append(f"{t} {jpg}")
    (dst / "rgb.txt").write_text("\n".join(out) + "\n")
    depth_lines = [ln for ln in (src / "depth.txt").read_text().splitlines() if ln and not ln.startswith("#")][:n]
    out = ["# depth maps", f"# first {n} entries of {src.name}", "# timestamp filename"]
    for ln in depth_lines:
        t, f = ln.split()
        cv2.imwrite(str(dst / f), cv2.imread(str(src / f), cv2.IMREAD_UNCHANGED), [cv2.IMWRITE_PNG_COMPRESSION, 9])
        out.append(ln)
    (dst / "depth.txt").write_text("\n".join(out) + "\n")
    t0, t1 = float(rgb_lines[0].split()[0]) - 0.05, float(rgb_lines[-1].split()[0]) + 0.05
    gt = (src / "groundtruth.txt").read_text().splitlines()
    keep = [ln for ln in gt if ln.startswith("#") or (ln and t0 <= float(ln.split()[0]) <= t1)]
    (dst / "groundtruth.txt").write_text("\n".join(keep) + "\n")


def euroc(src: Path, dst: Path, n: int = 5) -> None:
    cam_src, cam = src / "mav0" / "cam0", dst / "mav0" / "cam0"
    (cam / "data").mkdir(parents=True, exist_ok=True)
    lines = (cam_src / "data.csv").read_text().splitlines()
    header, rows = [ln for ln in lines if ln.startswith("#")], [ln for ln in lines if ln and not ln.startswith("#")][:n]
    (cam / "data.csv").write_text("\n".join(header + rows) + "\n")
    for r in rows:
        f = r.split(",")[1]
        img = cv2.imread(str(cam_src / "data" / f), cv2.IMREAD_UNCHANGED)
        cv2.imwrite(str(cam / "data" / f), img, [cv2.IMWRITE_PNG_COMPRESSION, 9])
    shutil.copy(cam_src / "sensor.yaml", cam / "sensor.yaml")
    t0, t1 = int(rows[0].split(",")[0]), int(rows[-1].split(",")[0])
    gt_src = next(src.glob("groundtruth_*.txt"))
    keep = [ln for ln in gt_src.read_text().splitlines() if ln.startswith("#") or (ln and t0 <= float(ln.split()[0]) <= t1 + 1e8)]
    (dst / gt_src.name).write_text("\n".join(keep) + "\n")


def davis(src: Path, dst: Path, n: int = 5) -> None:
    (dst / "frames").mkdir(parents=True, exist_ok=True)
    files = sorted((src / "frames").glob("*.jpg"))[:n]
    for f in files:
        shutil.copy(f, dst / "frames" / f.name)
    first = cv2.imread(str(files[0]))
    h, w = first.shape[:2]
    vw = cv2.VideoWriter(str(dst / "lady-running-5.mp4"), cv2.VideoWriter_fourcc(*"mp4v"), 30.0, (w, h))
    for f in files:
        vw.write(cv2.imread(str(f)))
    vw.release()


if __name__ == "__main__":
    root = Path(sys.argv[1]) if len(sys.argv) > 1 else Path("/work/shared/data")
    tum(root / "tum_fr1_rpy_subset", HERE / "tum_fr1_rpy")
    euroc(root / "euroc_v1_01_micro", HERE / "euroc_v1_01")
    davis(root / "davis_lady_running", HERE / "davis_lady_running")
