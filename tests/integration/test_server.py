#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""The server over HTTP: health, readiness, errors, request ids, and a
database that is not there at start."""
import re
import threading
import time
import unittest

import common
import lgtest
from pgcluster import PgCluster


class Serving(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.pg = PgCluster().start()
        cls.gw = lgtest.Gateway({"plugins": {"good": {}}, "server": {"workers": 2}}, pg=cls.pg,
                                env={"LLMGATE_PLUGIN_PATH": common.test_plugins_path()})
        cls.gw.start()

    @classmethod
    def tearDownClass(cls):
        cls.gw.stop()
        cls.pg.destroy()

    def test_health_and_ready(self):
        r = self.gw.request("GET", "/health")
        self.assertEqual(r.status, 200)
        self.assertEqual(r.json(), {"status": "ok"})
        self.assertEqual(r.headers.get("content-type"), "application/json")
        deadline = time.time() + 20
        while self.gw.request("GET", "/ready").status != 200 and time.time() < deadline:
            time.sleep(0.1)
        r = self.gw.request("GET", "/ready")
        self.assertEqual(r.status, 200)
        self.assertEqual(r.json(), {"status": "ready"})

    def test_a_plugin_can_fail_ready(self):
        self.assertEqual(self.gw.request("POST", "/good/ready?why=journal%20full").status, 204)
        try:
            r = self.gw.request("GET", "/ready")
            self.assertEqual(r.status, 503)
            self.assertEqual(r.json()["detail"], "good: journal full")
            # Liveness is another matter: the process still serves.
            self.assertEqual(self.gw.request("GET", "/health").status, 200)
        finally:
            self.assertEqual(self.gw.request("POST", "/good/ready").status, 204)
        self.assertEqual(self.gw.request("GET", "/ready").status, 200)

    def test_request_id(self):
        r = self.gw.request("GET", "/health")
        rid = r.headers.get("x-request-id")
        self.assertTrue(rid and re.fullmatch(r"[A-Za-z0-9._-]{1,64}", rid), rid)
        self.assertNotEqual(rid, self.gw.request("GET", "/health").headers.get("x-request-id"))
        r = self.gw.request("GET", "/health", headers={"X-Request-Id": "abc-123.x_Y"})
        self.assertEqual(r.headers.get("x-request-id"), "abc-123.x_Y")
        # A value that could smuggle anything is replaced, not echoed.
        for bad in ("a b", "x" * 65, "a;b", "\u00e9"):
            r = self.gw.request("GET", "/health", headers={"X-Request-Id": bad})
            self.assertNotEqual(r.headers.get("x-request-id"), bad)
        self.assertIn("abc-123.x_Y", self.gw.log())

    def test_unknown_route_error_shape(self):
        r = self.gw.request("GET", "/v1/nothing/here")
        self.assertEqual(r.status, 404)
        body = r.json()
        self.assertEqual(body["detail"], "Not Found")
        self.assertEqual(body["error"]["message"], "Not Found")
        self.assertEqual(body["error"]["code"], 404)
        self.assertIn("type", body["error"])
        self.assertTrue(r.headers.get("x-request-id"))

    def test_method_not_allowed(self):
        r = self.gw.request("POST", "/health", body=b"{}")
        self.assertEqual(r.status, 405)
        self.assertEqual(r.headers.get("allow"), "GET")

    def test_head(self):
        r = self.gw.request("HEAD", "/health")
        self.assertEqual(r.status, 200)
        self.assertEqual(r.body, b"")

    def test_json_bodies_are_bounded(self):
        r = self.gw.request("POST", "/good/json", body=b'{"a": 1, "b": [1, 2]}')
        self.assertEqual(r.status, 200)
        self.assertEqual(r.json(), {"members": 2})
        for body, status, words in [
                (b'{"a": 1', 400, "invalid JSON at byte 7"),
                (b'{"a": 1, "a": 2}', 400, "duplicate"),
                (b'[' * 100000, 400, "nested too deeply"),
                (b'{"a": "\ud800"}', 400, "surrogate"),
                (b'{"a": NaN}', 400, "invalid JSON"),
                (b'{"a": "' + bytes([0xC0, 0xAF]) + b'"}', 400, "UTF-8"),
                (b'[1, 2]', 422, "must be a JSON object"),
                (b'{"l": [' + b"1," * 10000 + b'1]}', 400, "too many array elements")]:
            r = self.gw.request("POST", "/good/json", body=body)
            self.assertEqual(r.status, status, (body[:40], r.body))
            self.assertIn(words, r.body.decode())

    def test_concurrent_requests_over_two_workers(self):
        results = []

        def call():
            r = self.gw.request("GET", "/good/slow?ms=200")
            results.append(r.status)

        threads = [threading.Thread(target=call) for _ in range(20)]
        start = time.time()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        self.assertEqual(results, [200] * 20)
        # Twenty 200 ms waits on timers overlap instead of queueing (a
        # blocked loop would take 4 s); the bound is loose on purpose.
        self.assertLess(time.time() - start, 3.5)


class DatabaseAbsentAtStart(unittest.TestCase):
    def test_ready_waits_for_the_database_then_serves(self):
        pg = PgCluster()
        pg.start()
        pg.stop()
        try:
            g = lgtest.Gateway({"plugins": {"good": {}},
                                "dependencies": {"postgres": {"connect_retry": "30s"}}},
                               pg=pg, env={"LLMGATE_PLUGIN_PATH": common.test_plugins_path()},
                               ready=False)
            g.start()
            try:
                self.assertEqual(g.request("GET", "/health").status, 200)
                r = g.request("GET", "/ready")
                self.assertEqual(r.status, 503)
                r = g.request("GET", "/good/hello")
                self.assertEqual(r.status, 503)
                self.assertEqual(r.headers.get("retry-after"), "1")
                pg.pg_ctl_start()
                deadline = time.time() + 25
                while g.request("GET", "/ready").status != 200 and time.time() < deadline:
                    time.sleep(0.2)
                self.assertEqual(g.request("GET", "/ready").status, 200)
                self.assertEqual(g.request("GET", "/good/hello").status, 200)
            finally:
                g.stop()
        finally:
            pg.destroy()

    def test_unreachable_database_exits_with_host_and_no_password(self):
        pg = PgCluster(password="canary-pw-4711")
        try:
            g = lgtest.Gateway({"dependencies": {"postgres": {
                "url": "postgresql://postgres:canary-pw-4711@127.0.0.1:%d/postgres" % pg.port,
                "connect_retry": "2s"}}}, pg=pg, ready=False)
            g.start()
            code = g.wait(30)
            log = g.log()
            self.assertEqual(code, 1, log)
            self.assertIn("127.0.0.1:%d" % pg.port, log)
            self.assertNotIn("canary-pw-4711", log)
            g.stop()
        finally:
            pg.destroy()


if __name__ == "__main__":
    lgtest.main()
