#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""The auth plugin: the master key is an admin key; anything else, or no
master key configured, is refused."""
import unittest

import common
import lgtest
from pgcluster import PgCluster

MASTER = "master-key-for-tests-7f3a"


class MasterKey(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.pg = PgCluster().start()

    @classmethod
    def tearDownClass(cls):
        cls.pg.destroy()

    def test_master_key_is_admin(self):
        cfg = {"plugins": {"auth": {"master_key": MASTER}, "good": {}}}
        with lgtest.Gateway(cfg, pg=self.pg,
                            env={"LLMGATE_PLUGIN_PATH": common.test_plugins_path()}) as g:
            ok = g.request("GET", "/good/admin", headers={"Authorization": "Bearer " + MASTER})
            self.assertEqual(ok.status, 200)
            for bad in (MASTER + "x", MASTER[:-1], "", "' OR '1'='1", "x" * 5000):
                r = g.request("GET", "/good/admin", headers={"Authorization": "Bearer " + bad})
                self.assertEqual(r.status, 401, bad[:20])
            r = g.request("GET", "/good/admin", headers={"Authorization": "Basic " + MASTER})
            self.assertEqual(r.status, 401)
            self.assertEqual(r.json()["detail"], "Invalid authentication scheme.")
            log = g.log()
        self.assertNotIn(MASTER, log)

    def test_no_master_key_configured(self):
        cfg = {"plugins": {"auth": {}, "good": {}}}
        with lgtest.Gateway(cfg, pg=self.pg,
                            env={"LLMGATE_PLUGIN_PATH": common.test_plugins_path()}) as g:
            r = g.request("GET", "/good/admin", headers={"Authorization": "Bearer changeme"})
            self.assertEqual(r.status, 401)

    def test_default_master_key_refused_beyond_loopback(self):
        for key in ("changeme", "short-key"):
            cfg = {"plugins": {"auth": {"master_key": key}},
                   "server": {"listen": ["0.0.0.0:0"]}}
            r = lgtest.run_llmgate(["--check"], config=cfg, pg=self.pg)
            self.assertEqual(r.returncode, 2, r.stderr)
            self.assertIn("set a long random master_key", r.stderr)
            self.assertNotIn(key, r.stderr)
        # On loopback the default is accepted (the embedded default).
        cfg = {"plugins": {"auth": {"master_key": "changeme"}},
               "server": {"listen": ["127.0.0.1:0", "[::1]:0"]}}
        r = lgtest.run_llmgate(["--check"], config=cfg, pg=self.pg)
        self.assertEqual(r.returncode, 0, r.stderr)
        cfg = {"plugins": {"auth": {"master_key": "x" * 40}}, "server": {"listen": ["0.0.0.0:0"]}}
        self.assertEqual(lgtest.run_llmgate(["--check"], config=cfg, pg=self.pg).returncode, 0)


if __name__ == "__main__":
    lgtest.main()
