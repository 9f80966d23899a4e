#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""The service manager's notification protocol (systemd Type=notify): the
real gateway sends READY=1 once it serves, RELOADING=1 then READY=1 around a
SIGHUP, STOPPING=1 when the drain starts, to the datagram socket named by
$NOTIFY_SOCKET (a path, or an abstract '@' name)."""
import os
import re
import signal
import socket
import tempfile
import time
import unittest

import common
import lgtest
from pgcluster import PgCluster

WAIT = 30   # seconds for a message that should come (generous on a loaded machine)


class Listener:
    """The service manager's end: a bound AF_UNIX datagram socket."""

    def __init__(self, abstract=False):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.dir = tempfile.mkdtemp(prefix="llmgate-notify-")
        if abstract:
            name = "llmgate-notify-test-%d-%d" % (os.getpid(), time.monotonic_ns())
            self.sock.bind("\0" + name)
            self.env_value = "@" + name
        else:
            path = os.path.join(self.dir, "notify.sock")
            self.sock.bind(path)
            self.env_value = path
        self.messages = []

    def next(self, timeout=WAIT):
        """The next datagram as a dict of its assignments, or None after @timeout s."""
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(4096)
        except socket.timeout:
            return None
        fields = dict(line.split("=", 1) for line in data.decode().split("\n") if line)
        self.messages.append(fields)
        return fields

    def until(self, key, timeout=WAIT):
        """Datagrams up to and including the first that sets @key (None if none came)."""
        seen = []
        deadline = time.monotonic() + timeout
        while True:
            m = self.next(max(deadline - time.monotonic(), 0.01))
            if m is None:
                return seen, None
            seen.append(m)
            if key in m:
                return seen, m

    def close(self):
        self.sock.close()
        for name in os.listdir(self.dir):
            os.unlink(os.path.join(self.dir, name))
        os.rmdir(self.dir)


class Notify(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.pg = PgCluster().start()

    @classmethod
    def tearDownClass(cls):
        cls.pg.destroy()

    def gateway(self, notify_socket, ready=True):
        g = lgtest.Gateway({"plugins": {"mock": {}}, "server": {"workers": 2}}, pg=self.pg,
                           env={"NOTIFY_SOCKET": notify_socket,
                                "LLMGATE_PLUGIN_PATH": common.PLUGIN_PATH}, ready=ready)
        self.addCleanup(g.close)
        return g

    def listener(self, abstract=False):
        lst = Listener(abstract)
        self.addCleanup(lst.close)
        return lst

    def assert_ready_when_announced(self, lst, g):
        before, ready = lst.until("READY")
        self.assertIsNotNone(ready, "no READY=1 within %d s; got %r\n%s" % (WAIT, before, g.log()))
        self.assertEqual(ready["READY"], "1")
        self.assertIn("Serving", ready.get("STATUS", ""))
        # READY=1 is sent after the gateway became ready, never before.
        self.assertEqual(g.request("GET", "/ready").status, 200)
        self.assertEqual(g.request("GET", "/health").status, 200)
        return before

    def test_ready_reload_and_stopping(self):
        lst = self.listener()
        # start() returns once llmgate listens, before /ready: READY=1 must
        # not come before /ready says 200.
        g = self.gateway(lst.env_value, ready=False)
        g.start()
        before = self.assert_ready_when_announced(lst, g)
        statuses = [m["STATUS"] for m in before if "STATUS" in m]
        self.assertIn("Waiting for PostgreSQL", statuses)
        self.assertIn("Applying database migrations", statuses)
        self.assertLess(statuses.index("Waiting for PostgreSQL"),
                        statuses.index("Applying database migrations"))

        # A valid reload: RELOADING=1 with the time it began, then READY=1.
        t0 = time.monotonic()
        g.send_signal(signal.SIGHUP)
        reloading = lst.next()
        self.assertIsNotNone(reloading, g.log())
        self.assertEqual(reloading.get("RELOADING"), "1", reloading)
        self.assertRegex(reloading.get("MONOTONIC_USEC", ""), r"^\d+$")
        # CLOCK_MONOTONIC is the same clock as Python's time.monotonic().
        usec = int(reloading["MONOTONIC_USEC"])
        self.assertGreaterEqual(usec, int(t0 * 1e6) - 1000000)
        self.assertLessEqual(usec, int(time.monotonic() * 1e6) + 1000000)
        after = lst.next()
        self.assertIsNotNone(after, g.log())
        self.assertEqual(after.get("READY"), "1", after)
        self.assertIn("reloaded", after.get("STATUS", ""))
        self.assertIn("is valid", g.log())

        # A refused reload also ends with READY=1: the old configuration serves.
        with open(g.config_path, "a") as f:
            f.write("\nserver_typo: 1\n")
        g.send_signal(signal.SIGHUP)
        reloading = lst.next()
        self.assertEqual((reloading or {}).get("RELOADING"), "1", reloading)
        after = lst.next()
        self.assertEqual((after or {}).get("READY"), "1", after)
        self.assertIn("reload refused", after.get("STATUS", ""))
        self.assertIn("server_typo", after.get("STATUS", ""))
        self.assertEqual(g.request("GET", "/health").status, 200)

        # SIGTERM: STOPPING=1 when the drain starts, then a clean exit.
        g.send_signal(signal.SIGTERM)
        stopping = lst.next()
        self.assertEqual((stopping or {}).get("STOPPING"), "1", stopping)
        self.assertIn("SIGTERM", stopping.get("STATUS", ""))
        self.assertEqual(g.wait(WAIT), 0, g.log())
        self.assertNotIn("cannot notify", g.log())

    def test_abstract_socket_name(self):
        lst = self.listener(abstract=True)
        g = self.gateway(lst.env_value)
        g.start()
        self.assert_ready_when_announced(lst, g)
        g.send_signal(signal.SIGTERM)
        _, stopping = lst.until("STOPPING")
        self.assertIsNotNone(stopping, g.log())
        self.assertEqual(g.wait(WAIT), 0, g.log())

    def test_start_up_failure_says_stopping(self):
        # The database never answers: start-up fails after connect_retry, and
        # the manager hears STOPPING=1, never READY=1.
        lst = self.listener()
        cfg = {"plugins": {"mock": {}},
               "dependencies": {"postgres": {"url": common.NOWHERE_DB,
                                             "connect_retry": "1s"}}}
        run = lgtest.run_llmgate([], config=cfg, timeout=60,
                                 env={"NOTIFY_SOCKET": lst.env_value,
                                      "LLMGATE_PLUGIN_PATH": common.PLUGIN_PATH})
        self.assertEqual(run.returncode, 1, run.stderr)
        seen, stopping = lst.until("STOPPING", timeout=1)
        self.assertIsNotNone(stopping, "%r\n%s" % (seen, run.stderr))
        self.assertIn("start-up failed", stopping.get("STATUS", ""))
        self.assertIn("Waiting for PostgreSQL", [m.get("STATUS") for m in seen])
        self.assertFalse(any("READY" in m for m in seen), seen)

    def test_manager_gone_is_logged_once_and_not_fatal(self):
        # The socket path does not exist: every send fails, one warning says so,
        # and the gateway serves, reloads and stops as usual.
        missing = os.path.join(tempfile.gettempdir(), "llmgate-no-such-%d.sock" % os.getpid())
        g = self.gateway(missing)
        g.start()
        g.send_signal(signal.SIGHUP)
        self.assertTrue(g.wait_log(r"reload: .* is valid", WAIT), g.log())
        self.assertEqual(g.request("GET", "/health").status, 200)
        g.send_signal(signal.SIGTERM)
        self.assertEqual(g.wait(WAIT), 0, g.log())
        self.assertEqual(len(re.findall(r"cannot notify the service manager", g.log())), 1,
                         g.log())

    def test_unusable_address_is_ignored(self):
        g = self.gateway("relative/notify.sock")
        g.start()
        self.assertIn("is neither an absolute path nor an abstract", g.log())
        self.assertEqual(g.request("GET", "/health").status, 200)
        g.send_signal(signal.SIGTERM)
        self.assertEqual(g.wait(WAIT), 0, g.log())
        self.assertNotIn("cannot notify", g.log())


if __name__ == "__main__":
    lgtest.main()
