#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""SIGTERM drains requests in flight; SIGHUP reloads or keeps the old
configuration."""
import os
import signal
import socket
import threading
import time
import unittest

import common
import lgtest
from pgcluster import PgCluster


class Signals(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.pg = PgCluster().start()

    @classmethod
    def tearDownClass(cls):
        cls.pg.destroy()

    def gateway(self, **server):
        cfg = {"plugins": {"good": {}}, "server": dict({"workers": 2}, **server)}
        g = lgtest.Gateway(cfg, pg=self.pg, env={"LLMGATE_PLUGIN_PATH": common.test_plugins_path()})
        g.start()
        deadline = time.time() + 20
        while g.request("GET", "/ready").status != 200 and time.time() < deadline:
            time.sleep(0.1)
        return g

    def test_sigterm_lets_requests_in_flight_finish(self):
        g = self.gateway()
        results = []

        def call():
            try:
                results.append(g.request("GET", "/good/slow?ms=1500", timeout=20).status)
            except Exception as e:  # noqa: BLE001 - recorded and asserted below
                results.append(repr(e))

        threads = [threading.Thread(target=call) for _ in range(30)]
        for t in threads:
            t.start()
        time.sleep(0.5)  # all 30 are in flight
        g.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        # No longer accepting: a new connection is refused or closed unanswered.
        with self.assertRaises(Exception):
            g.request("GET", "/health", timeout=2)
        for t in threads:
            t.join()
        self.assertEqual(g.wait(30), 0)
        self.assertEqual(results, [200] * 30, results)
        log = g.log()
        self.assertIn("SIGTERM: no longer accepting", log)
        self.assertIn("[good] good: stop", log)
        self.assertEqual(log.count('"GET /good/slow" 200'), 30)
        g.stop()

    def test_drain_deadline_cuts_what_is_left(self):
        g = self.gateway(drain_timeout="1s")
        results = []

        def call():
            try:
                results.append(g.request("GET", "/good/slow?ms=20000", timeout=30).status)
            except Exception as e:  # noqa: BLE001
                results.append(type(e).__name__)

        t = threading.Thread(target=call)
        t.start()
        time.sleep(0.5)
        start = time.time()
        g.send_signal(signal.SIGTERM)
        self.assertEqual(g.wait(20), 0)
        self.assertLess(time.time() - start, 10)
        t.join()
        self.assertNotEqual(results, [200])
        self.assertIn("drain deadline reached with 1 request in flight", g.log())
        g.stop()

    def test_drain_deadline_with_a_hook_still_pending(self):
        # The AUTH hook waits 3 s for the database; the drain deadline (1 s)
        # closes the connection first; the hook's answer arrives on a request
        # without a connection, which must neither crash nor be answered.
        g = self.gateway(drain_timeout="1s")
        sock = g.connect()
        sock.sendall(b"GET /good/items/1 HTTP/1.1\r\nHost: x\r\n"
                     b"Authorization: Bearer good-slow?ms=3000\r\n\r\n")
        time.sleep(0.5)
        g.send_signal(signal.SIGTERM)
        self.assertEqual(g.wait(20), 0, g.log())
        sock.settimeout(5)
        self.assertEqual(sock.recv(4096), b"")
        sock.close()
        self.assertIn("drain deadline reached with 1 request in flight", g.log())
        g.stop()

    def test_sighup_keeps_old_config_when_new_one_is_broken(self):
        g = self.gateway()
        with open(g.config_path, "a") as f:
            f.write("\nserver_typo: 1\n")
        g.send_signal(signal.SIGHUP)
        deadline = time.time() + 10
        while "reload refused" not in g.log() and time.time() < deadline:
            time.sleep(0.1)
        self.assertIn("reload refused, the running configuration stays", g.log())
        self.assertIn("server_typo", g.log())
        self.assertEqual(g.request("GET", "/good/hello").status, 200)
        g.stop()

    def test_sighup_with_valid_config(self):
        g = self.gateway()
        g.send_signal(signal.SIGHUP)
        deadline = time.time() + 10
        while "reload:" not in g.log() and time.time() < deadline:
            time.sleep(0.1)
        self.assertIn("is valid", g.log())
        self.assertEqual(g.request("GET", "/health").status, 200)
        g.stop()


if __name__ == "__main__":
    lgtest.main()
