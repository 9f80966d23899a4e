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


def start_class_gateway(cls, cfg):
    """cls.gw: a started gateway with the test plugins on cls.pg, for a
    test class that also holds cls.up (a MockUpstream). If it cannot start,
    cls.up and cls.pg are closed before the error goes on."""
    import lgtest
    cls.gw = lgtest.Gateway(cfg, pg=cls.pg, env={"LLMGATE_PLUGIN_PATH": test_plugins_path()})
    try:
        cls.gw.start()
    except Exception:
        cls.up.close()
        cls.pg.destroy()
        raise


def stop_class_gateway(cls):
    """Stops what start_class_gateway() set up, and asserts that the
    gateway and the upstream exited cleanly (no crash, no sanitizer report)."""
    cls.gw.stop()
    log = cls.gw.log()
    cls.gw.close()
    rc = cls.up.close()
    cls.pg.destroy()
    assert cls.gw.returncode == 0, log[-4000:]
    assert rc == 0, rc
