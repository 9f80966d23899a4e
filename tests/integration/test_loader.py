#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""The plugin loader through the real binary: every refusal is one line that
names the file, both values and the fix; a good plugin's routes, hooks,
settings, migrations and lifecycle work; init failures never reach fini."""
import os
import re
import shutil
import signal
import stat
import tempfile
import unittest

import time

import common
import lgtest
from mock import MockUpstream
from pgcluster import PgCluster


def check(plugins, plugin_path=None):
    """llmgate --check with these plugins; returns the CompletedProcess."""
    cfg = {"plugins": plugins, "dependencies": {"postgres": {"url": common.NOWHERE_DB}}}
    env = {"LLMGATE_PLUGIN_PATH": plugin_path or common.test_plugins_path()}
    return lgtest.run_llmgate(["--check"], config=cfg, env=env)


def so(name):
    return os.path.join(common.TEST_PLUGIN_DIR, name + ".so")



def abi_minor():
    """LG_ABI_MINOR of the SDK headers this llmgate was built from."""
    header = os.path.join(os.environ["LLMGATE_SOURCE_ROOT"], "core", "include", "llmgate",
                          "plugin.h")
    with open(header) as f:
        return int(re.search(r"#define LG_ABI_MINOR (\d+)", f.read()).group(1))

class Refusals(unittest.TestCase):
    def assertRefused(self, r, *fragments):
        self.assertEqual(r.returncode, 2, r.stdout + r.stderr)
        lines = [l for l in r.stderr.splitlines() if "error" in l]
        self.assertEqual(len(lines), 1, r.stderr)
        for f in fragments:
            self.assertIn(f, lines[0])

    def test_wrong_major(self):
        r = check({"bad_major": {}})
        self.assertRefused(r, so("bad_major"), "ABI major is 2", "speaks 1",
                           "rebuild the plugin against llmgate-plugin-1")

    def test_newer_minor(self):
        minor = abi_minor()
        r = check({"newer_minor": {}})
        self.assertRefused(r, so("newer_minor"), "needs ABI 1.%d" % (minor + 1),
                           "has 1.%d" % minor, "upgrade llmgate")

    def test_short_descriptor(self):
        r = check({"short_size": {}})
        self.assertRefused(r, so("short_size"), "16 bytes", "needs at least", "rebuild")

    def test_duplicate_name(self):
        r = check({"good": {}, "dup_name": {}})
        self.assertRefused(r, so("dup_name"), '"good" is already taken by', so("good"))

    def test_name_differs_from_file(self):
        r = check({"wrong_name": {}})
        self.assertRefused(r, so("wrong_name"), '"something_else"', '"wrong_name"',
                           "name the file something_else.so")

    def test_not_a_plugin(self):
        r = check({"no_symbol": {}})
        self.assertRefused(r, so("no_symbol"), "exports no llmgate_plugin_v1()", "LG_PLUGIN")

    def test_missing_requirement(self):
        r = check({"good": {}, "needs_missing": {}})
        self.assertRefused(r, '"needs_missing" requires "nonexistent"',
                           "add `nonexistent: {}` under plugins:")

    def test_missing_file(self):
        r = check({"nonexistent": {}})
        self.assertRefused(r, "plugins.nonexistent", "no nonexistent.so", "--plugin-dir")

    def test_path_in_name(self):
        for name in ("../good", "sub/good", "Good"):
            r = check({name: {}})
            self.assertEqual(r.returncode, 2, r.stderr)
            self.assertIn("invalid plugin name", r.stderr)
            self.assertRegex(r.stderr, r":\d+: plugins\.")

    def test_writable_plugin_file(self):
        with tempfile.TemporaryDirectory() as d:
            shutil.copy(so("good"), d)
            os.chmod(os.path.join(d, "good.so"), 0o775)
            r = check({"good": {}}, plugin_path=d)
            self.assertRefused(r, "group- or world-writable", "chmod go-w")

    def test_unknown_setting(self):
        r = check({"good": {"colour": "red"}})
        self.assertEqual(r.returncode, 2)
        self.assertRegex(r.stderr, r"config\.yml:\d+: plugins\.good\.colour: unknown key")

    def test_setting_out_of_range(self):
        r = check({"good": {"count": 11}})
        self.assertEqual(r.returncode, 2)
        self.assertRegex(r.stderr, r"plugins\.good\.count: .*11.*out of range")

    def test_check_passes(self):
        r = check({"good": {"greeting": "hi"}, "needs_good": {}})
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("configuration OK (2 plugins: good 1.2.3, needs_good 0.0.1)", r.stdout)


class Lifecycle(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.pg = PgCluster().start()

    @classmethod
    def tearDownClass(cls):
        cls.pg.destroy()

    def gateway(self, plugins, **kw):
        return lgtest.Gateway({"plugins": plugins}, pg=self.pg,
                              env={"LLMGATE_PLUGIN_PATH": common.test_plugins_path()}, **kw)

    def test_failing_init_stops_start_without_fini(self):
        g = self.gateway({"good": {}, "fail_init": {}})
        with self.assertRaises(Exception):
            g.start()
        code = g.wait(20)
        log = g.log()
        self.assertNotEqual(code, 0)
        self.assertIn('plugin "fail_init" failed to initialise: the frobnicator is missing', log)
        self.assertNotIn("fail_init: fini called", log)
        # good initialised before fail_init failed, so good gets its fini.
        self.assertIn("good: fini", log)
        g.stop()

    def test_registration_after_init_is_refused(self):
        with self.gateway({"late_register": {}}) as g:
            self.assertEqual(g.request("GET", "/late").status, 404)
            log = g.log()
            self.assertIn("route_add=-16 hook_add=-16", log)
            self.assertIn("route_add after init() refused", log)

    def test_good_plugin_end_to_end(self):
        db = "lifecycle_good"
        self.pg.psql("CREATE DATABASE %s" % db)
        cfg = {"plugins": {"needs_good": {}, "good": {"greeting": "hi", "count": 3}},
               "dependencies": {"postgres": {"url": self.pg.url(db)}}}
        g = lgtest.Gateway(cfg, pg=self.pg, env={"LLMGATE_PLUGIN_PATH": common.test_plugins_path()})
        with g:
            r = g.request("GET", "/good/hello?name=a%20b%2Bc")
            self.assertEqual(r.status, 200)
            self.assertEqual(r.json(), {"says": "hi hi hi", "name": "a b+c"})

            r = g.request("GET", "/good/items/1")
            self.assertEqual(r.status, 401)
            self.assertEqual(r.json()["detail"], "Invalid authentication scheme.")
            r = g.request("GET", "/good/items/1", headers={"Authorization": "Bearer nope"})
            self.assertEqual(r.status, 401)
            self.assertEqual(r.json()["detail"], "Invalid API key.")
            self.assertEqual(r.json()["error"]["code"], 401)

            user = {"Authorization": "Bearer good-token"}
            r = g.request("GET", "/good/items/1", headers=user)
            self.assertEqual(r.status, 200, r.body)
            self.assertEqual(r.json(), {"id": 1, "name": "first", "user": 7})
            self.assertEqual(g.request("GET", "/good/items/2", headers=user).status, 404)
            r = g.request("GET", "/good/items/1%20OR%201%3D1", headers=user)
            self.assertEqual(r.status, 404)

            r = g.request("GET", "/good/admin", headers=user)
            self.assertEqual(r.status, 403)
            self.assertEqual(r.json()["detail"], "User has no admin rights.")
            r = g.request("GET", "/good/admin", headers={"Authorization": "Bearer good-admin"})
            self.assertEqual(r.status, 200)

            r = g.request("POST", "/good/sum", body=b"{}")
            self.assertEqual(r.json(), {"sum": 500500})
            r = g.request("POST", "/good/sum", body=b"x" * 2000)
            self.assertEqual(r.status, 413)

            r = g.request("DELETE", "/good/hello")
            self.assertEqual(r.status, 405)
            self.assertEqual(r.headers.get("allow"), "GET")

            g.send_signal(signal.SIGTERM)
            self.assertEqual(g.wait(30), 0)
        log = g.log()
        # requires: good before needs_good whatever the file order; stop and
        # fini in reverse.
        self.assertLess(log.index("[good] good: init"), log.index("[needs_good] needs_good: init"))
        self.assertIn("[good] good: start (1 items)", log)
        self.assertLess(log.index("[good] good: stop"), log.index("[good] good: fini"))
        rows = self.pg.psql("SELECT plugin, version, name FROM schema_migrations "
                            "ORDER BY applied_at, plugin, version", dbname=db)
        self.assertEqual([r[0] for r in rows], ["core", "core", "good", "good", "needs_good"])
        self.assertEqual(self.pg.psql("SELECT count(*) FROM needs_good_view", dbname=db), [["1"]])

    def test_host_services_notify_and_fetch(self):
        with MockUpstream() as up:
            cfg = {"plugins": {"good": {"upstream": up.url}}, "server": {"workers": 2}}
            with lgtest.Gateway(cfg, pg=self.pg,
                                env={"LLMGATE_PLUGIN_PATH": common.test_plugins_path()}) as g:
                # Outbound HTTP from a worker through host->fetch().
                r = g.request("GET", "/good/upstream")
                self.assertEqual(r.status, 200, r.body)
                self.assertEqual(r.headers.get("x-upstream-status"), "200")
                self.assertEqual(r.json()["object"], "list")
                self.assertEqual(up.stats()["by_path"].get("/v1/models"), 1)
                # LISTEN registered in init(), delivered once the database is up.
                self.pg.psql("NOTIFY good_events, 'ping-42'")
                deadline = time.time() + 10
                while time.time() < deadline:
                    if g.request("GET", "/good/notified").json()["last"] == "ping-42":
                        break
                    time.sleep(0.1)
                self.assertEqual(g.request("GET", "/good/notified").json()["last"], "ping-42")
                # The LISTEN connection dies and a NOTIFY is sent while it is
                # down: once it is back, the plugin hears an empty payload (a
                # gap to make up for), not silence.
                self.pg.psql("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                             "WHERE query LIKE 'LISTEN%'; NOTIFY good_events, 'lost'")
                deadline = time.time() + 10
                while time.time() < deadline:
                    if g.request("GET", "/good/notified").json()["last"] == "":
                        break
                    time.sleep(0.1)
                self.assertEqual(g.request("GET", "/good/notified").json()["last"], "")
                self.assertIn("LISTEN connection to", g.log())
            # The upstream going away is an error the plugin sees, not a hang.
            with lgtest.Gateway({"plugins": {"good": {"upstream": "http://127.0.0.1:1"}}},
                                pg=self.pg,
                                env={"LLMGATE_PLUGIN_PATH": common.test_plugins_path()}) as g:
                r = g.request("GET", "/good/upstream")
                self.assertEqual(r.status, 502)
                self.assertIn("upstream failed (1)", r.json()["detail"])


if __name__ == "__main__":
    lgtest.main()
