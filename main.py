#!/usr/bin/env python3
"""Carvana Image Masking Challenge, end to end: `python main.py` (see README.md or --help)."""
import sys

from carvana.cli import main

if __name__ == "__main__":
    sys.exit(main())
