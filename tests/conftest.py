"""Shared pytest setup: the test folders mirror the package, and every one of them imports ``helpers``."""

import os
import sys

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
if TESTS_DIR not in sys.path:
    sys.path.insert(0, TESTS_DIR)
