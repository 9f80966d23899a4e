#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Configuration errors through the real binary: file, line and key, exit
status 2; --version; config-reference and the generated docs."""
import os
import subprocess
import tempfile
import unittest

import common
import lgtest


def run_with_yaml(text, args=("--check",), env=None):
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "config.yml")
        with open(path, "w") as f:
            f.write(text)
        e = dict(os.environ, LLMGATE_PLUGIN_PATH=common.test_plugins_path())
        e.update(env or {})
        r = subprocess.run([os.environ["LLMGATE_BIN"], "--config", path] + list(args),
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           env=e, timeout=30)
        return r, path


BASE = """dependencies:
  postgres:
    url: %s
""" % common.NOWHERE_DB


class Errors(unittest.TestCase):
    def assertConfigError(self, text, line, *fragments, env=None):
        r, path = run_with_yaml(text, env=env)
        self.assertEqual(r.returncode, 2, r.stdout + r.stderr)
        self.assertIn("%s:%d:" % (path, line), r.stderr)
        for f in fragments:
            self.assertIn(f, r.stderr)

    def test_bad_yaml(self):
        self.assertConfigError(BASE + "server:\n  listen: [\"a\"\n  workers: 2\n", 6)

    def test_unknown_top_level_key(self):
        self.assertConfigError(BASE + "serverz:\n  workers: 2\n", 4, "serverz")

    def test_unknown_server_key(self):
        self.assertConfigError(BASE + "server:\n  wrokers: 2\n", 5, "server.wrokers", "unknown key")

    def test_wrong_type(self):
        self.assertConfigError(BASE + "server:\n  max_headers: lots\n", 5, "server.max_headers")

    def test_out_of_range(self):
        self.assertConfigError("dependencies:\n  postgres:\n    url: x\n    pool_size: 0\n", 4,
                               "pool_size")

    def test_unset_variable(self):
        os.environ.pop("LG_TEST_NOT_SET_ANYWHERE", None)
        text = BASE + "server:\n  listen: [\"${LG_TEST_NOT_SET_ANYWHERE}\"]\n"
        self.assertConfigError(text, 5, "LG_TEST_NOT_SET_ANYWHERE")

    def test_variables_substituted(self):
        text = ("dependencies:\n  postgres:\n    url: ${LG_TEST_DB}\n"
                "server:\n  workers: ${LG_TEST_WORKERS:-3}\n")
        r, _ = run_with_yaml(text, env={"LG_TEST_DB": common.NOWHERE_DB})
        self.assertEqual(r.returncode, 0, r.stderr)

    def test_plugin_block_error_names_line(self):
        self.assertConfigError(BASE + "plugins:\n  good:\n    count: 99\n", 6,
                               "plugins.good.count")

    def test_config_file_from_environment(self):
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "other.yml")
            with open(path, "w") as f:
                f.write(BASE + "plugins:\n  good: {}\n")
            env = dict(os.environ, CONFIG_FILE=path,
                       LLMGATE_PLUGIN_PATH=common.test_plugins_path())
            r = subprocess.run([os.environ["LLMGATE_BIN"], "--check"], cwd=d, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            self.assertEqual(r.returncode, 0, r.stderr)
            self.assertIn(path, r.stdout)

    def test_missing_file(self):
        r = subprocess.run([os.environ["LLMGATE_BIN"], "--config", "/nonexistent/c.yml",
                            "--check"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True)
        self.assertEqual(r.returncode, 2)
        self.assertIn("/nonexistent/c.yml", r.stderr)


class Commands(unittest.TestCase):
    def test_version(self):
        r = lgtest.run_llmgate(["--version"])
        self.assertEqual(r.returncode, 0)
        self.assertRegex(r.stdout, r"^llmgate \d+\.\d+\.\d+ \(plugin ABI 1\.\d+, ")

    def test_unknown_command(self):
        r = lgtest.run_llmgate(["frobnicate"])
        self.assertEqual(r.returncode, 2)
        self.assertIn('unknown command "frobnicate"', r.stderr)

    def test_config_reference_lists_core_and_plugins(self):
        r = lgtest.run_llmgate(["config-reference"],
                               env={"LLMGATE_PLUGIN_PATH": common.test_plugins_path()})
        self.assertEqual(r.returncode, 0, r.stderr)
        for key in ("max_body_bytes", "header_timeout", "pool_size", "greeting"):
            self.assertIn(key, r.stdout)

    def test_generated_docs_are_current(self):
        r = lgtest.run_llmgate(["config-reference", "--markdown"],
                               env={"LLMGATE_PLUGIN_PATH": common.PLUGIN_PATH})
        self.assertEqual(r.returncode, 0, r.stderr)
        with open(os.path.join(common.SOURCE_ROOT, "docs", "configuration.md")) as f:
            current = f.read()
        self.assertEqual(current, r.stdout,
                         "docs/configuration.md is out of date: run "
                         "`meson compile -C build config-doc`")


if __name__ == "__main__":
    lgtest.main()
