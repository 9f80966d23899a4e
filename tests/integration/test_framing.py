#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Raw HTTP against the real server: ambiguous framing is answered 400 and
the connection closed, nothing smuggled behind it is served, limits hold,
and slow clients are cut off at the absolute deadlines."""
import json
import socket
import time
import unittest

import common
import lgtest
from pgcluster import PgCluster

SMUGGLED = b"GET /good/hello?name=smuggled HTTP/1.1\r\nHost: x\r\n\r\n"


def status_of(data):
    line = data.split(b"\r\n", 1)[0]
    parts = line.split(b" ")
    return int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else None


class Framing(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.pg = PgCluster().start()
        cfg = {"plugins": {"good": {}},
               "server": {"header_timeout": "1s", "body_timeout": "1s", "idle_timeout": "2s",
                          "max_header_bytes": "8k", "max_body_bytes": "64k"}}
        cls.gw = lgtest.Gateway(cfg, pg=cls.pg,
                                env={"LLMGATE_PLUGIN_PATH": common.test_plugins_path()})
        cls.gw.start()

    @classmethod
    def tearDownClass(cls):
        cls.gw.stop()
        cls.pg.destroy()

    def assertRejected(self, raw, status=400):
        data, closed = self.gw.raw(raw + SMUGGLED)
        self.assertEqual(status_of(data), status, data[:300])
        self.assertTrue(closed, "connection left open after %r" % raw[:80])
        self.assertNotIn(b"smuggled", data)
        self.assertEqual(data.count(b"HTTP/1."), 1, data)
        body = data.split(b"\r\n\r\n", 1)[1]
        if status != 408:
            err = json.loads(body)
            self.assertEqual(err["error"]["code"], status)
            self.assertIn("detail", err)

    def test_duplicate_content_length(self):
        self.assertRejected(b"POST /good/sum HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n"
                            b"Content-Length: 0\r\n\r\nabc")

    def test_duplicate_equal_content_length(self):
        self.assertRejected(b"POST /good/sum HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n"
                            b"Content-Length: 2\r\n\r\n{}")

    def test_signed_content_length(self):
        self.assertRejected(b"POST /good/sum HTTP/1.1\r\nHost: x\r\nContent-Length: +3\r\n\r\nabc")

    def test_negative_content_length(self):
        self.assertRejected(b"POST /good/sum HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n")

    def test_space_before_colon(self):
        self.assertRejected(b"POST /good/sum HTTP/1.1\r\nHost: x\r\nTransfer-Encoding : chunked\r\n"
                            b"Content-Length: 3\r\n\r\nabc")

    def test_te_and_cl(self):
        self.assertRejected(b"POST /good/sum HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
                            b"Content-Length: 3\r\n\r\n0\r\n\r\n")

    def test_te_list(self):
        self.assertRejected(b"POST /good/sum HTTP/1.1\r\nHost: x\r\n"
                            b"Transfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n")

    def test_nul_in_header(self):
        self.assertRejected(b"GET /health HTTP/1.1\r\nHost: x\r\nX-A: a\x00b\r\n\r\n")

    def test_obs_fold(self):
        self.assertRejected(b"GET /health HTTP/1.1\r\nHost: x\r\nX-A: a\r\n b\r\n\r\n")

    def test_bare_cr(self):
        self.assertRejected(b"GET /health HTTP/1.1\r\nHost: x\rX-A: b\r\n\r\n")

    def test_duplicate_host(self):
        self.assertRejected(b"GET /health HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n")

    def test_missing_host(self):
        self.assertRejected(b"GET /health HTTP/1.1\r\n\r\n")

    def test_bad_chunk_size(self):
        self.assertRejected(b"POST /good/sum HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
                            b"\r\nzz\r\nabc\r\n0\r\n\r\n")

    def test_huge_chunk_size(self):
        data, closed = self.gw.raw(b"POST /good/sum HTTP/1.1\r\nHost: x\r\n"
                                   b"Transfer-Encoding: chunked\r\n\r\nffffffffffffffffff\r\n")
        self.assertIn(status_of(data), (400, 413))
        self.assertTrue(closed)

    def test_header_too_large(self):
        self.assertRejected(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 10000 +
                            b"\r\n\r\n", status=431)

    def test_body_too_large_is_refused_before_it_is_sent(self):
        with socket.create_connection(("127.0.0.1", self.gw.port), timeout=5) as s:
            s.sendall(b"POST /good/sum HTTP/1.1\r\nHost: x\r\nContent-Length: 1073741824\r\n\r\n")
            data = s.recv(4096)
        self.assertEqual(status_of(data), 413)

    def test_version_not_supported(self):
        data, closed = self.gw.raw(b"GET /health HTTP/2.0\r\nHost: x\r\n\r\n")
        self.assertEqual(status_of(data), 505)
        self.assertTrue(closed)

    def test_valid_pipelined_requests_are_served_in_order(self):
        req = b"GET /good/hello?name=%d HTTP/1.1\r\nHost: x\r\n\r\n"
        data, _ = self.gw.raw(req % 1 + req % 2 + req % 3 +
                              b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        self.assertEqual(data.count(b"HTTP/1.1 200"), 4)
        self.assertLess(data.index(b'"name":"1"'), data.index(b'"name":"2"'))
        self.assertLess(data.index(b'"name":"2"'), data.index(b'"name":"3"'))

    def test_chunked_request_body(self):
        data, _ = self.gw.raw(b"POST /good/sum HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
                              b"Connection: close\r\n\r\n1\r\n{\r\n1\r\n}\r\n0\r\n\r\n")
        self.assertEqual(status_of(data), 200)
        self.assertIn(b'"sum":500500', data)

    def test_slow_drip_is_cut_at_the_header_deadline(self):
        with socket.create_connection(("127.0.0.1", self.gw.port), timeout=10) as s:
            start = time.time()
            closed_at = None
            for ch in b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 100:
                try:
                    s.sendall(bytes([ch]))
                except OSError:
                    closed_at = time.time()
                    break
                s.settimeout(0.3)
                try:
                    got = s.recv(4096)
                    if got == b"" or got.startswith(b"HTTP/1.1 408"):
                        closed_at = time.time()
                        break
                except socket.timeout:
                    pass
                if time.time() - start > 15:
                    break
        self.assertIsNotNone(closed_at, "a dripping client was never cut off")
        # The deadline is 1 s from the first byte; generous bound for a loaded machine.
        self.assertLess(closed_at - start, 6)

    def test_slow_body_is_cut_at_the_body_deadline(self):
        with socket.create_connection(("127.0.0.1", self.gw.port), timeout=10) as s:
            s.sendall(b"POST /good/sum HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nab")
            start = time.time()
            s.settimeout(8)
            data = b""
            try:
                while True:
                    chunk = s.recv(4096)
                    if not chunk:
                        break
                    data += chunk
            except (socket.timeout, ConnectionResetError):
                pass
        self.assertLess(time.time() - start, 6)
        self.assertIn(status_of(data), (408, None))

    def test_idle_keepalive_is_closed(self):
        with socket.create_connection(("127.0.0.1", self.gw.port), timeout=10) as s:
            s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            s.settimeout(10)
            first = s.recv(4096)
            self.assertEqual(status_of(first), 200)
            start = time.time()
            rest = s.recv(4096)
            self.assertEqual(rest, b"")
            self.assertLess(time.time() - start, 8)

    def test_server_still_serves_after_all_this(self):
        self.assertEqual(self.gw.request("GET", "/health").status, 200)


if __name__ == "__main__":
    lgtest.main()
