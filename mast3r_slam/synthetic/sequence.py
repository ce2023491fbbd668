"""Synthetic sequences: spec parsing, generation in TUM layout and the on-disk cache.

Spec: ``synthetic:<name>[:<W>x<H>][:<frames>][:seed=<n>]`` (the ``synthetic:`` prefix is
optional here), e.g. ``synthetic:loop``, ``synthetic:loop:512x384``,
``synthetic:dynamic:128x96:60``. Names: ``loop``, ``fast_turn``, ``lost``, ``dynamic``.
Defaults: 320x240 and the per-name frame count of
:data:`mast3r_slam.synthetic.trajectories.DEFAULT_FRAMES`.

A generated sequence folder holds::

    rgb/<ts>.png  depth/<ts>.png (uint16, 5000 units/m, 0 = no depth)
    rgb.txt  depth.txt  groundtruth.txt (timestamp tx ty tz qx qy qz qw, camera-to-world,
                                         OpenCV camera axes)
    calibration.yaml (width, height, calibration: [fx, fy, cx, cy])
    meta.json (generator version, spec, events such as black frames or the fast-turn segment)
    dynamic only: dynamic_mask/<ts>.png (0 / 255) and objects.json (moving objects' geometry
                  and per-frame world poses)

Timestamps are ``i / 30`` seconds written with 6 decimals. Generation is deterministic (same
bytes for the same spec). The cache folder is ``datasets/synthetic/<name>_<W>x<H>_<frames>``
under the repository root (``_s<seed>`` appended for a non-zero seed), or under
``$MAST3R_SLAM_CACHE`` when set; sequences are written to a temporary folder and renamed into
place, so concurrent processes never see a half-written sequence.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np

from ..errors import DatasetError
from . import trajectories as traj
from .render import PinholeCamera, render
from .scene import add_moving_objects, build_room

GENERATOR_VERSION = 1
FPS = 30.0
DEPTH_SCALE = 5000.0
DEFAULT_SIZE = (320, 240)
NAMES = tuple(traj.TRAJECTORIES)
SPEC_HELP = "synthetic:<loop|fast_turn|lost|dynamic>[:<W>x<H>][:<frames>][:seed=<n>][:laps=<n>]"


@dataclass(frozen=True)
class SequenceSpec:
    name: str
    width: int = DEFAULT_SIZE[0]
    height: int = DEFAULT_SIZE[1]
    frames: int = 0  # 0: the name's default
    seed: int = 0
    laps: int = 1  # loop / dynamic: times round the loop

    def __post_init__(self):
        if self.frames == 0:
            object.__setattr__(self, "frames", traj.DEFAULT_FRAMES.get(self.name, 150))

    @property
    def folder_name(self) -> str:
        s = f"{self.name}_{self.width}x{self.height}_{self.frames}"
        return s + (f"_s{self.seed}" if self.seed else "") + (f"_l{self.laps}" if self.laps != 1 else "")

    @property
    def text(self) -> str:
        return (f"synthetic:{self.name}:{self.width}x{self.height}:{self.frames}" + (f":seed={self.seed}" if self.seed else "")
                + (f":laps={self.laps}" if self.laps != 1 else ""))


def parse_spec(text: str) -> SequenceSpec:
    """Parse ``synthetic:<name>[:WxH][:frames][:seed=n]``; one-line :class:`DatasetError` if bad."""
    parts = [p.strip() for p in str(text).split(":")]
    if parts and parts[0].lower() == "synthetic":
        parts = parts[1:]
    if not parts or not parts[0]:
        raise DatasetError(f"--dataset {text}: missing sequence name, expected {SPEC_HELP}")
    name = parts[0].lower().replace("-", "_")
    if name not in NAMES:
        raise DatasetError(f"--dataset {text}: unknown synthetic sequence '{parts[0]}', expected one of {', '.join(NAMES)}")
    kw: dict = {}
    for p in parts[1:]:
        m = re.fullmatch(r"(\d+)[xX](\d+)", p)
        if m:
            w, h = int(m.group(1)), int(m.group(2))
            if not (16 <= w <= 4096 and 16 <= h <= 4096):
                raise DatasetError(f"--dataset {text}: image size {w}x{h} out of range (16..4096)")
            kw["width"], kw["height"] = w, h
        elif re.fullmatch(r"\d+", p):
            n = int(p)
            if n < 2:
                raise DatasetError(f"--dataset {text}: frame count must be >= 2, got {n}")
            kw["frames"] = n
        elif re.fullmatch(r"seed=\d+", p):
            kw["seed"] = int(p.split("=")[1])
        elif re.fullmatch(r"laps=\d+", p) and name in ("loop", "dynamic"):
            kw["laps"] = max(int(p.split("=")[1]), 1)
        else:
            raise DatasetError(f"--dataset {text}: cannot parse '{p}', expected {SPEC_HELP}")
    return SequenceSpec(name, **kw)


def cache_root() -> Path:
    env = os.environ.get("MAST3R_SLAM_CACHE")
    if env:
        return Path(env).expanduser()
    from ..config import REPO_ROOT

    return REPO_ROOT / "datasets" / "synthetic"


def timestamp(i: int) -> str:
    return f"{i / FPS:.6f}"


def camera_for(spec: SequenceSpec) -> PinholeCamera:
    return PinholeCamera.default(spec.width, spec.height)


def trajectory_for(spec: SequenceSpec) -> traj.Trajectory:
    try:
        if spec.laps != 1:
            return traj.TRAJECTORIES[spec.name](spec.frames, laps=spec.laps)
        return traj.TRAJECTORIES[spec.name](spec.frames)
    except ValueError as e:
        raise DatasetError(f"--dataset {spec.text}: {e}") from None


def _quat_xyzw(R: np.ndarray) -> np.ndarray:
    """Rotation matrix -> unit quaternion [x, y, z, w] with w >= 0."""
    m = R
    tr = m[0, 0] + m[1, 1] + m[2, 2]
    cands = np.array([1 + tr, 1 + m[0, 0] - m[1, 1] - m[2, 2], 1 - m[0, 0] + m[1, 1] - m[2, 2], 1 - m[0, 0] - m[1, 1] + m[2, 2]])
    k = int(np.argmax(cands))
    s = 2 * np.sqrt(max(cands[k], 1e-300))
    if k == 0:
        q = [(m[2, 1] - m[1, 2]) / s, (m[0, 2] - m[2, 0]) / s, (m[1, 0] - m[0, 1]) / s, s / 4]
    elif k == 1:
        q = [s / 4, (m[0, 1] + m[1, 0]) / s, (m[0, 2] + m[2, 0]) / s, (m[2, 1] - m[1, 2]) / s]
    elif k == 2:
        q = [(m[0, 1] + m[1, 0]) / s, s / 4, (m[1, 2] + m[2, 1]) / s, (m[0, 2] - m[2, 0]) / s]
    else:
        q = [(m[0, 2] + m[2, 0]) / s, (m[1, 2] + m[2, 1]) / s, s / 4, (m[1, 0] - m[0, 1]) / s]
    q = np.asarray(q)
    q /= np.linalg.norm(q)
    return -q if q[3] < 0 else q


def pose_to_tum(T: np.ndarray) -> np.ndarray:
    """[4, 4] -> [7] (t, q_xyzw)."""
    return np.concatenate([T[:3, 3], _quat_xyzw(T[:3, :3])])


def _fmt_row(v) -> str:
    return " ".join(f"{x:.9f}" for x in v)


def write_sequence(spec: SequenceSpec, out_dir: str | Path, progress: bool = True) -> Path:
    """Render ``spec`` into ``out_dir`` (created; must not hold another sequence)."""
    from tqdm import tqdm

    out = Path(out_dir)
    for sub in ("rgb", "depth") + (("dynamic_mask",) if spec.name == "dynamic" else ()):
        (out / sub).mkdir(parents=True, exist_ok=True)
    cam = camera_for(spec)
    tr = trajectory_for(spec)
    n = spec.frames
    scene = build_room(spec.seed, near_objects=spec.name != "dynamic")
    movers = []
    if spec.name == "dynamic":
        movers = add_moving_objects(scene, np.random.default_rng([spec.seed, 99]), traj.moving_object_poses(n))
    black = set(tr.events.get("black_frames", []))
    rays = cam.rays()
    stamps = [timestamp(i) for i in range(n)]
    png = [cv2.IMWRITE_PNG_COMPRESSION, 3]
    depth_min, depth_max = np.inf, 0.0
    coverage = []
    dyn_ids = [k for k, p in enumerate(scene.prims) if p.dynamic]
    show = progress and spec.width * spec.height * n > 4_000_000
    for i in tqdm(range(n), desc=f"generating {spec.text}", unit="frame", disable=not show, leave=False):
        for m in movers:
            m.place(i)
        if i in black:  # lens covered: black image, no depth
            rgb = np.zeros((spec.height, spec.width, 3), np.uint8)
            depth = np.zeros((spec.height, spec.width), np.float32)
            prim = np.full((spec.height, spec.width), -1, np.int32)
        else:
            res = render(scene, cam, tr.poses[i], noise_seed=int(spec.seed * 100003 + i), rays_cam=rays)
            rgb, depth, prim = res.rgb, res.depth, res.prim_id
            depth_min, depth_max = min(depth_min, float(depth[depth > 0].min())), max(depth_max, float(depth.max()))
        cv2.imwrite(str(out / "rgb" / f"{stamps[i]}.png"), rgb[..., ::-1], png)
        d16 = np.clip(np.rint(depth * DEPTH_SCALE), 0, 65535).astype(np.uint16)
        cv2.imwrite(str(out / "depth" / f"{stamps[i]}.png"), d16, png)
        if movers:
            mask = np.isin(prim, dyn_ids)
            coverage.append(float(mask.mean()))
            cv2.imwrite(str(out / "dynamic_mask" / f"{stamps[i]}.png"), mask.astype(np.uint8) * 255, png)

    header = "# {}\n# synthetic sequence {} (mast3r_slam.synthetic v{})\n# timestamp filename\n"
    (out / "rgb.txt").write_text(
        header.format("color images", spec.text, GENERATOR_VERSION) + "".join(f"{t} rgb/{t}.png\n" for t in stamps)
    )
    (out / "depth.txt").write_text(
        header.format("depth maps", spec.text, GENERATOR_VERSION) + "".join(f"{t} depth/{t}.png\n" for t in stamps)
    )
    gt = "# ground truth trajectory\n# synthetic sequence {} (camera-to-world, OpenCV camera axes)\n# timestamp tx ty tz qx qy qz qw\n"
    (out / "groundtruth.txt").write_text(
        gt.format(spec.text) + "".join(f"{t} {_fmt_row(pose_to_tum(T))}\n" for t, T in zip(stamps, tr.poses))
    )
    (out / "calibration.yaml").write_text(
        "# pinhole intrinsics of the synthetic camera (no distortion)\n"
        f"width: {cam.width}\nheight: {cam.height}\n"
        f"calibration: [{float(cam.fx)!r}, {float(cam.fy)!r}, {float(cam.cx)!r}, {float(cam.cy)!r}]\n"
    )
    if movers:
        objects = []
        for m in movers:
            prims = []
            for p, c in zip(m.prims, m.local_c):
                d = {"type": type(p).__name__.lower(), "center": c.tolist(), "name": p.name}
                if hasattr(p, "half") and not hasattr(p, "radius"):
                    d["half_extents"] = np.asarray(p.half).tolist()
                if hasattr(p, "radius"):
                    d["radius"] = p.radius
                if hasattr(p, "half_height"):
                    d["half_height"] = p.half_height
                prims.append(d)
            poses = [[round(float(x), 9) for x in pose_to_tum(T)] for T in m.poses]
            objects.append({"name": m.name, "primitives": prims, "poses_tum": poses})
        doc = {
            "note": "moving objects: primitives in the object frame (z up, on the floor); poses_tum[i] = "
            "object-to-world [tx, ty, tz, qx, qy, qz, qw] at frame i",
            "timestamps": stamps,
            "objects": objects,
            "mask_coverage": [round(c, 6) for c in coverage],
        }
        (out / "objects.json").write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n")
    meta = {
        "generator_version": GENERATOR_VERSION,
        "spec": asdict(spec),
        "spec_text": spec.text,
        "fps": FPS,
        "depth_scale": DEPTH_SCALE,
        "events": tr.events,
        "depth_range_m": [round(depth_min, 6), round(depth_max, 6)],
        "world": "metres, z up, floor at z = 0; poses camera-to-world with OpenCV camera axes",
    }
    (out / "meta.json").write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n")  # written last
    return out


def read_meta(folder: Path) -> dict | None:
    try:
        return json.loads((Path(folder) / "meta.json").read_text())
    except (OSError, ValueError):
        return None


def _is_complete(folder: Path, spec: SequenceSpec) -> bool:
    meta = read_meta(folder)
    return meta is not None and meta.get("generator_version") == GENERATOR_VERSION and meta.get("spec") == asdict(spec)


def ensure_sequence(spec: SequenceSpec | str, root: str | Path | None = None, progress: bool = True) -> Path:
    """Folder of the sequence, generating it into the cache on first use (atomic rename)."""
    if isinstance(spec, str):
        spec = parse_spec(spec)
    root = Path(root) if root is not None else cache_root()
    final = root / spec.folder_name
    if _is_complete(final, spec):
        return final
    try:
        root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{spec.folder_name}.tmp-", dir=root))
    except OSError as e:
        raise DatasetError(f"{root}: cannot create the synthetic sequence cache ({e.strerror}); set MAST3R_SLAM_CACHE") from None
    try:
        write_sequence(spec, tmp, progress=progress)
        if final.exists() and not _is_complete(final, spec):  # stale or from another generator version
            old = root / f".{spec.folder_name}.old-{os.getpid()}"
            try:
                os.rename(final, old)
                shutil.rmtree(old, ignore_errors=True)
            except OSError:
                pass
        try:
            os.rename(tmp, final)
        except OSError:  # another process finished first
            if not _is_complete(final, spec):
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final
