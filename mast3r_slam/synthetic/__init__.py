"""Synthetic test sequences: a furnished, textured room rendered by a numpy ray caster.

* :mod:`.textures` - procedural textures (value-noise fBm, wood, stone, fabric, tiles, posters);
* :mod:`.scene` - primitives (room, boxes, spheres, cylinders), the room layout, moving objects;
* :mod:`.render` - vectorised ray casting of colour, depth and primitive ids;
* :mod:`.trajectories` - ``loop``, ``fast_turn``, ``lost``, ``dynamic`` camera paths;
* :mod:`.sequence` - spec parsing, TUM-layout writer and the on-disk cache.

Use through the dataset registry: ``--dataset synthetic:loop[:WxH][:frames]`` (see
docs/SYNTHETIC.md).
"""
from .sequence import NAMES, SequenceSpec, ensure_sequence, parse_spec, write_sequence

__all__ = ["NAMES", "SequenceSpec", "ensure_sequence", "parse_spec", "write_sequence"]
