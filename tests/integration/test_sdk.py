#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""The SDK as a third party sees it: build and install llmgate into a
temporary prefix, build examples/hello there with nothing but pkg-config
llmgate-plugin-1, and load it into the installed server (which finds its
plugins in its own plugin directory)."""
import glob
import os
import shutil
import subprocess
import tempfile
import unittest

import common
import lgtest
from pgcluster import PgCluster


class Sdk(unittest.TestCase):
    def test_out_of_tree_plugin(self):
        with tempfile.TemporaryDirectory() as tmp:
            prefix = os.path.join(tmp, "prefix")
            build = os.path.join(tmp, "build")
            subprocess.run(["meson", "setup", build, common.SOURCE_ROOT, "--prefix", prefix,
                            "-Dtests=false", "-Dbuildtype=plain"], check=True,
                           stdout=subprocess.DEVNULL)
            subprocess.run(["meson", "install", "-C", build, "--quiet"], check=True,
                           stdout=subprocess.DEVNULL)
            pcs = glob.glob(os.path.join(prefix, "**", "llmgate-plugin-1.pc"), recursive=True)
            self.assertEqual(len(pcs), 1, pcs)
            binary = os.path.join(prefix, "bin", "llmgate")
            headers = glob.glob(os.path.join(prefix, "include", "llmgate-1", "llmgate", "*.h"))
            self.assertEqual(sorted(os.path.basename(h) for h in headers),
                             ["db.h", "host.h", "http.h", "plugin.h", "provider.h"])

            # Only the installed tree and pkg-config: no path into the source.
            src = os.path.join(tmp, "hello")
            shutil.copytree(os.path.join(common.SOURCE_ROOT, "examples", "hello"), src)
            env = dict(os.environ, PKG_CONFIG_PATH=os.path.dirname(pcs[0]))
            for var in ("LLMGATE_PLUGIN_PATH", "LLMGATE_TEST_PLUGIN_DIR"):
                env.pop(var, None)
            r = subprocess.run(["make", "-C", src, "install"], env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
            self.assertEqual(r.returncode, 0, r.stdout)
            plugindir = subprocess.run(["pkg-config", "--variable=plugindir",
                                        "llmgate-plugin-1"], env=env, check=True,
                                       stdout=subprocess.PIPE, text=True).stdout.strip()
            self.assertTrue(plugindir.startswith(prefix), plugindir)
            self.assertTrue(os.path.exists(os.path.join(plugindir, "hello.so")))
            self.assertTrue(os.path.exists(os.path.join(plugindir, "mock.so")))

            with PgCluster() as pg:
                g = lgtest.Gateway({"plugins": {"mock": {}, "hello": {"greeting": "Bonjour"}}},
                                   pg=pg, binary=binary, env={"LLMGATE_PLUGIN_PATH": ""})
                with g:
                    lgtest.wait_ready(g)
                    r = g.request("GET", "/hello/world")
                    self.assertEqual(r.status, 200, r.body)
                    self.assertEqual(r.json(), {"greeting": "Bonjour", "name": "world",
                                                "visits": 1})
                    r = g.request("GET", "/hello/world")
                    self.assertEqual(r.json()["visits"], 2)
                    r = g.request("GET", "/hello/%27%3B%20DROP%20TABLE%20hello_visit%3B--")
                    self.assertEqual(r.status, 200)
                    self.assertEqual(r.json()["name"], "'; DROP TABLE hello_visit;--")
                self.assertEqual(pg.psql("SELECT name, visits FROM hello_visit ORDER BY name"),
                                 [["'; DROP TABLE hello_visit;--", "1"], ["world", "2"]])
                self.assertEqual(pg.psql("SELECT version, name FROM schema_migrations "
                                         "WHERE plugin = 'hello'"), [["1", "hello_visit"]])


if __name__ == "__main__":
    lgtest.main()
