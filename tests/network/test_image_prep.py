"""Image preparation follows the original exactly (spec: network §5.1, SLAM §8.2)."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from mast3r_slam.frame import create_frame
from mast3r_slam.image import prepare_image


def _img(w, h, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


@pytest.mark.parametrize(
    "w, h, resized, out",
    [
        (640, 480, (512, 384), (512, 384)),  # TUM / 7-Scenes: no crop
        (752, 480, (512, 327), (512, 320)),  # EuRoC: crop 327 -> 320
        (600, 600, (512, 512), (512, 384)),  # square: forced to 4:3
        (320, 240, (512, 384), (512, 384)),  # enlarged (BICUBIC)
        (480, 640, (384, 512), (384, 512)),  # portrait stays portrait
        (854, 480, (512, 288), (512, 288)),  # 16:9 video
    ],
)
def test_sizes_filters_and_crop(w, h, resized, out):
    rgb = _img(w, h)
    prep = prepare_image(rgb, 512)
    assert prep.resized_shape == (resized[1], resized[0])
    assert prep.true_shape == (out[1], out[0])
    # reference: Pillow, LANCZOS when shrinking and BICUBIC when enlarging, then the centre crop
    pil = Image.fromarray(rgb)
    if (w, h) != resized:
        pil = pil.resize(resized, Image.LANCZOS if max(w, h) > 512 else Image.BICUBIC)
    cx, cy = resized[0] // 2, resized[1] // 2
    hw, hh = ((2 * cx) // 16) * 8, ((2 * cy) // 16) * 8
    if resized[0] == resized[1]:
        hh = 3 * hw // 4
    ref = np.asarray(pil.crop((cx - hw, cy - hh, cx + hw, cy + hh)))
    np.testing.assert_array_equal(prep.uimg, ref)
    # normalisation (x/255 - 0.5)/0.5, shape [1, 3, H, W]
    assert prep.img.shape == (1, 3, out[1], out[0])
    np.testing.assert_allclose(prep.img[0].permute(1, 2, 0).numpy(), (ref / 255.0 - 0.5) / 0.5, atol=1e-6)


def test_filter_choice_matters():
    """LANCZOS and BICUBIC give different pixels, so the size test above does check the filter."""
    rgb = _img(640, 480, 1)
    prep = prepare_image(rgb)
    bicubic = np.asarray(Image.fromarray(rgb).resize((512, 384), Image.BICUBIC))
    assert np.abs(prep.uimg.astype(int) - bicubic.astype(int)).max() > 5


def test_float_input_truncates_like_the_original():
    k = np.random.default_rng(2).integers(0, 255, (480, 640, 3))
    as_float = (k + 0.7) / 255.0  # np.uint8(x * 255) truncates to k
    np.testing.assert_array_equal(prepare_image(as_float).uimg, prepare_image(k.astype(np.uint8)).uimg)


def test_intrinsics_follow_the_original_rule():
    K = np.array([[525.0, 0, 319.5], [0, 525.0, 239.5], [0, 0, 1]])
    # 640x480 -> 512x384: scale 1.25, no crop
    Kn = prepare_image(_img(640, 480)).adjust_intrinsics(K)
    np.testing.assert_allclose(Kn, [[420.0, 0, 255.6], [0, 420.0, 191.6], [0, 0, 1]])
    # EuRoC 752x480 -> 512x327 -> 512x320: scale 752/512 and 480/327, half-crop (327-320)/2 = 3.5
    Ke = np.array([[458.654, 0, 367.215], [0, 457.296, 248.375], [0, 0, 1]])
    Kn = prepare_image(_img(752, 480)).adjust_intrinsics(Ke)
    sw, sh = 752 / 512, 480 / 327
    np.testing.assert_allclose(Kn[0], [458.654 / sw, 0, 367.215 / sw])
    np.testing.assert_allclose(Kn[1], [0, 457.296 / sh, 248.375 / sh - 3.5])
    # create_frame stores them on the frame
    f = create_frame(0, _img(752, 480), K_orig=Ke)
    np.testing.assert_allclose(f.K.numpy(), Kn, rtol=1e-6)
    assert f.img_shape == (320, 512)
