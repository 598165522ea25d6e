"""Paths of the source tree for tests that run its scripts or read its data."""

import os

TESTS = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(TESTS)
PACKAGE_DATA = os.path.join(ROOT, "tensornet_fast", "data")
TEST_DATA = os.path.join(TESTS, "data")
