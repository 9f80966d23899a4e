# SPDX-License-Identifier: Apache-2.0
"""Shared bits of the integration tests: paths from meson, and configs."""
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "lib"))

TEST_PLUGIN_DIR = os.environ.get("LLMGATE_TEST_PLUGIN_DIR", "")
PLUGIN_PATH = os.environ.get("LLMGATE_PLUGIN_PATH", "")
SOURCE_ROOT = os.environ.get("LLMGATE_SOURCE_ROOT", os.path.join(HERE, "..", ".."))
BUILD_ROOT = os.environ.get("LLMGATE_BUILD_ROOT", "")

# A database URL that nothing listens on: for commands that never connect.
NOWHERE_DB = "postgresql://postgres:unused@127.0.0.1:1/postgres"


def test_plugins_path():
    """Test plugins first, then the real ones."""
    return TEST_PLUGIN_DIR + ":" + PLUGIN_PATH
