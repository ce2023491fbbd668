"""Outputs: TUM trajectories, PLY and GLB maps, the per-run results folder.

Submodules: :mod:`.trajectory` (TUM read/write, ground-truth readers, pose interpolation),
:mod:`.ply`, :mod:`.glb`, :mod:`.results` (``ResultsWriter``), :mod:`.atomic`.
"""
