"""MASt3R-SLAM entry point: ``python main.py --help``."""
import sys

from mast3r_slam.cli import main

if __name__ == "__main__":
    sys.exit(main())
