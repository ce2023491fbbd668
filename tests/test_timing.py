"""mast3r_slam.timing: nested sections record self times that add up to the outermost section."""
import time

from mast3r_slam import timing


def test_nested_self_times_add_up():
    timing.reset()
    timing.enable(True)
    try:
        for _ in range(2):
            with timing.timed("frame"):
                time.sleep(0.01)
                with timing.timed("a"):
                    time.sleep(0.02)
                    with timing.timed("a.b"):
                        time.sleep(0.015)
                with timing.timed("c"):
                    time.sleep(0.005)
    finally:
        timing.enable(False)
    s = timing.summary()
    assert {k: v["parent"] for k, v in s.items()} == {"frame": "", "a": "frame", "a.b": "a", "c": "frame"}
    assert all(v["count"] == 2 for v in s.values())
    total = s["frame"]["total_ms"]
    assert abs(sum(v["self_ms"] for v in s.values()) - total) < 1e-6 * total
    assert 2 * 15 <= s["a.b"]["self_ms"] < 2 * 15 + 20
    assert 2 * 20 <= s["a"]["self_ms"] < 2 * 20 + 20  # a's own time, without a.b
    assert 2 * 10 <= s["frame"]["self_ms"] < 2 * 10 + 20
    assert s["a"]["total_ms"] >= s["a"]["self_ms"] + s["a.b"]["total_ms"] - 1e-6


def test_disabled_records_nothing():
    timing.reset()
    with timing.timed("x"):
        pass
    assert timing.summary() == {}
