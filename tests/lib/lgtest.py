# SPDX-License-Identifier: Apache-2.0
"""Helpers for llmgate's integration tests (Python standard library only).

A test file in tests/integration/ starts like this:

    import os, sys
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
    import lgtest
    from mock import MockUpstream
    from pgcluster import PgCluster

and ends with

    if __name__ == "__main__":
        lgtest.main()

Gateway runs the real server ($LLMGATE_BIN) with a config given as a dict
(written as YAML, one JSON flow value per top-level key) or as raw YAML text.
For a dict the harness fills in server.listen = ["127.0.0.1:0"] (an ephemeral
port per test) and dependencies.postgres.url = pg.url() unless the config sets
them. Raw YAML is used as it is; it can refer to ${LG_TEST_PG_URL}, which the
harness exports (the server substitutes ${VAR} before parsing).

    with PgCluster() as pg, MockUpstream() as up:
        with lgtest.Gateway({"plugins": {"openai": {}}, "models": [...]}, pg=pg) as gw:
            r = gw.request("POST", "/v1/chat/completions", {"model": "m", ...},
                           headers={"Authorization": "Bearer " + key})
            self.assertEqual(r.status, 200, r.body)
            events = r.events()        # for text/event-stream replies

A Gateway keeps its directory (config.yml, llmgate.log) until close() or the
end of the test process, so log() still works after `with` or stop(); any
server still running at exit is killed.
"""
import atexit
import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import unittest

LISTEN_RE = re.compile(r"listening on http://(\[[^\]]+\]|[^\s:/]+):(\d+)")
START_TIMEOUT = 20

_gateways = []


def _cleanup():
    for g in list(_gateways):
        g.close()


atexit.register(_cleanup)


class GatewayError(RuntimeError):
    pass


def _bin():
    path = os.environ.get("LLMGATE_BIN")
    if not path:
        raise GatewayError("LLMGATE_BIN is not set (run through meson test)")
    return path


# ---------------------------------------------------------------------------
# Configuration

def config_yaml(config, pg=None):
    """YAML text for @config: raw text as is, a dict with the harness defaults."""
    if isinstance(config, str):
        return config
    cfg = json.loads(json.dumps(config or {}))      # a deep copy
    server = cfg.setdefault("server", {})
    if server is not None:
        server.setdefault("listen", ["127.0.0.1:0"])
    if pg is not None:
        deps = cfg.setdefault("dependencies", {})
        postgres = deps.setdefault("postgres", {})
        postgres.setdefault("url", pg.url())
    # JSON is YAML flow style; one line per top-level key keeps line numbers
    # in the server's error messages meaningful.
    return "".join("%s: %s\n" % (key, json.dumps(value)) for key, value in cfg.items())


def _env(pg=None, env=None):
    full = dict(os.environ)
    if pg is not None:
        full["LG_TEST_PG_URL"] = pg.url()
    full.update(env or {})
    return full


# ---------------------------------------------------------------------------
# Responses

class Headers:
    """Case-insensitive response headers; repeated headers are joined by ", "."""

    def __init__(self, pairs=()):
        self._d = {}
        self._names = {}
        for name, value in pairs:
            key = name.lower()
            self._d[key] = self._d[key] + ", " + value if key in self._d else value
            self._names.setdefault(key, name)

    def get(self, name, default=None):
        return self._d.get(name.lower(), default)

    def __getitem__(self, name):
        return self._d[name.lower()]

    def __contains__(self, name):
        return name.lower() in self._d

    def items(self):
        return [(self._names[k], v) for k, v in self._d.items()]

    def __repr__(self):
        return "Headers(%r)" % dict(self.items())


class LiveReply:
    """A hand-driven HTTP/1.1 client for one request: it sends the request,
    reads the reply's head, then hands out each piece of the body (a chunk,
    or the whole Content-Length body) as the server sends it, so tests can
    watch streams arrive, stall or break."""

    def __init__(self, host, port, method, path, body=None, headers=None, timeout=10):
        if body is None:
            payload = b""
        elif isinstance(body, (bytes, bytearray)):
            payload = bytes(body)
        else:
            payload = json.dumps(body).encode()
        lines = ["%s %s HTTP/1.1" % (method, path), "Host: %s:%d" % (host, port),
                 "Content-Length: %d" % len(payload), "Connection: close"]
        if body is not None:
            lines.append("Content-Type: application/json")
        for name, value in (headers or {}).items():
            lines.append("%s: %s" % (name, value))
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.buf = bytearray()
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode() + payload)
        self.status, self.headers = self._head()
        self.chunked = "chunked" in self.headers.get("transfer-encoding", "").lower()
        self.ended = False

    def _fill(self):
        data = self.sock.recv(1 << 20)
        if not data:
            raise EOFError("the server closed the connection")
        self.buf += data

    def _until(self, sep):
        while True:
            i = self.buf.find(sep)
            if i >= 0:
                out = bytes(self.buf[:i])
                del self.buf[:i + len(sep)]
                return out
            self._fill()

    def read_exact(self, n):
        """@n raw bytes of the body, whatever its framing."""
        while len(self.buf) < n:
            self._fill()
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out

    def _head(self):
        lines = self._until(b"\r\n\r\n").decode().split("\r\n")
        status = int(lines[0].split()[1])
        return status, Headers((n.strip(), v.strip())
                               for n, v in (l.split(":", 1) for l in lines[1:] if ":" in l))

    def piece(self):
        """The next piece of the body, or None at its end."""
        if self.ended:
            return None
        if not self.chunked:
            self.ended = True
            return self.read_exact(int(self.headers.get("content-length", "0")))
        size = int(self._until(b"\r\n").split(b";")[0], 16)
        if size == 0:
            self._until(b"\r\n")
            self.ended = True
            return None
        data = self.read_exact(size)
        self._until(b"\r\n")
        return data

    def pieces(self):
        """Every piece left, until the end of the body."""
        out = []
        while True:
            data = self.piece()
            if data is None:
                return out
            out.append(data)

    def body(self):
        return b"".join(self.pieces())

    def events(self):
        """(arrival time, event) for each server-sent event, as they come."""
        pending = b""
        while True:
            data = self.piece()
            if data is None:
                for e in parse_sse(pending):
                    yield time.monotonic(), e
                return
            pending += data
            while b"\n\n" in pending:
                block, pending = pending.split(b"\n\n", 1)
                for e in parse_sse(block + b"\n\n"):
                    yield time.monotonic(), e

    def close(self):
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


def parse_sse(data):
    """Events of a text/event-stream body: a list of {"event", "data", "id"}
    dicts (only the fields present); comment lines are skipped."""
    if isinstance(data, bytes):
        data = data.decode("utf-8", errors="replace")
    events = []
    for block in re.split(r"\r\n\r\n|\n\n|\r\r", data):
        event = {}
        for line in re.split(r"\r\n|\n|\r", block):
            if not line or line.startswith(":"):
                continue
            field, _, value = line.partition(":")
            if value.startswith(" "):
                value = value[1:]
            if field == "data" and "data" in event:
                event["data"] += "\n" + value
            else:
                event[field] = value
        if event:
            events.append(event)
    return events


class Response:
    def __init__(self, status, headers, body, reason=""):
        self.status = status
        self.reason = reason
        self.headers = headers
        self.body = body

    @property
    def text(self):
        return self.body.decode("utf-8", errors="replace")

    def json(self):
        return json.loads(self.body)

    def events(self):
        return parse_sse(self.body)

    def data(self):
        """The JSON payloads of the stream's data events, without [DONE]."""
        return [json.loads(e["data"]) for e in self.events()
                if "data" in e and e["data"] != "[DONE]"]

    def __repr__(self):
        return "Response(%d, %r)" % (self.status, self.body[:300])


def admin(gateway, key, method, path, body=None):
    """A call of the admin API with @key that must succeed (200 or 201):
    its JSON. For setting up users, roles and keys in tests and benchmarks."""
    r = gateway.request(method, path, body, headers={"Authorization": "Bearer " + key})
    if r.status not in (200, 201):
        raise AssertionError("%s %s: %r" % (method, path, r))
    return r.json()


def http_request(host, port, method, path, body=None, headers=None, timeout=10):
    """One request on a fresh connection. A dict or list body is sent as JSON."""
    headers = dict(headers or {})
    if isinstance(body, (dict, list)):
        body = json.dumps(body).encode()
        if not any(k.lower() == "content-type" for k in headers):
            headers["Content-Type"] = "application/json"
    elif isinstance(body, str):
        body = body.encode()
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers)
        resp = conn.getresponse()
        data = resp.read()
        return Response(resp.status, Headers(resp.getheaders()), data, resp.reason)
    finally:
        conn.close()


def raw_exchange(host, port, data, timeout=5):
    """Sends @data on a new connection and reads until the peer closes or
    @timeout s pass. Returns (bytes received, closed); a reset counts as closed."""
    received = b""
    closed = False
    deadline = time.monotonic() + timeout
    with socket.create_connection((host, port), timeout=timeout) as s:
        try:
            if data:
                s.sendall(data)
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                s.settimeout(left)
                chunk = s.recv(65536)
                if not chunk:
                    closed = True
                    break
                received += chunk
        except socket.timeout:
            pass
        except (ConnectionResetError, BrokenPipeError):
            closed = True
    return received, closed


# ---------------------------------------------------------------------------
# The server

class Gateway:
    def __init__(self, config=None, pg=None, env=None, args=None, binary=None,
                 ready=True, start_timeout=START_TIMEOUT):
        self.config = config
        self.ready = ready
        self.binary = binary
        self.pg = pg
        self.extra_env = env or {}
        self.args = list(args or [])
        self.start_timeout = start_timeout
        self.dir = tempfile.mkdtemp(prefix="llmgate-test-")
        self.config_path = os.path.join(self.dir, "config.yml")
        self.log_path = os.path.join(self.dir, "llmgate.log")
        self.stdout_path = os.path.join(self.dir, "stdout.log")
        self.proc = None
        self.host = None
        self.port = None
        self.addresses = []          # every (host, port) announced
        self.returncode = None
        _gateways.append(self)

    @property
    def url(self):
        host = "[%s]" % self.host if ":" in self.host else self.host
        return "http://%s:%d" % (host, self.port)

    def start(self):
        """Runs the server and returns once GET /health answers 200 (and, with
        ready=True, GET /ready: the database is there and plugins started). Raises
        GatewayError (with the log) when it exits or is not up within
        start_timeout s; the process can still be wait()ed for and its log read."""
        with open(self.config_path, "w") as f:
            f.write(config_yaml(self.config, self.pg))
        cmd = [self.binary or _bin(), "--config", self.config_path] + self.args
        with open(self.log_path, "wb") as err, open(self.stdout_path, "wb") as out:
            self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                         env=_env(self.pg, self.extra_env), cwd=self.dir)
        try:
            deadline = time.monotonic() + self.start_timeout
            self._wait_listening(deadline)
            self._wait_healthy(deadline)
            if self.ready:
                self.wait_ready(max(deadline - time.monotonic(), 1))
        except Exception:
            self.stop()
            raise
        return self

    def _fail(self, what):
        raise GatewayError("%s\n--- llmgate log ---\n%s" % (what, self.log()[-6000:]))

    def _wait_listening(self, deadline):
        while True:
            found = LISTEN_RE.findall(self.log())
            if found:
                self.addresses = [(h.strip("[]"), int(p)) for h, p in found]
                self.host, self.port = self.addresses[0]
                return
            if self.proc.poll() is not None:
                self._fail("llmgate exited with status %d before listening" %
                           self.proc.returncode)
            if time.monotonic() >= deadline:
                self._fail("llmgate did not log 'listening on http://...' within %d s" %
                           self.start_timeout)
            time.sleep(0.02)

    def _wait_healthy(self, deadline):
        last = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self._fail("llmgate exited with status %d during start" % self.proc.returncode)
            try:
                last = self.request("GET", "/health", timeout=2)
                if last.status == 200:
                    self.addresses = [(h.strip("[]"), int(p))
                                      for h, p in LISTEN_RE.findall(self.log())]
                    return
            except OSError as e:
                last = e
            time.sleep(0.05)
        self._fail("GET /health did not answer 200 within %d s (last: %r)" %
                   (self.start_timeout, last))

    # -- talking to it --
    def request(self, method, path, body=None, headers=None, timeout=10):
        return http_request(self.host, self.port, method, path, body, headers, timeout)

    def wait_ready(self, timeout=START_TIMEOUT):
        """Polls GET /ready until 200 (plugins started, database reachable);
        raises GatewayError with the log after @timeout s."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                r = self.request("GET", "/ready", timeout=2)
                if r.status == 200:
                    return r
            except OSError as e:
                r = e
            if self.proc.poll() is not None:
                self._fail("llmgate exited with status %d before ready" % self.proc.returncode)
            if time.monotonic() >= deadline:
                self._fail("GET /ready did not answer 200 within %d s (last: %r)" % (timeout, r))
            time.sleep(0.05)

    def raw(self, data, timeout=5):
        return raw_exchange(self.host, self.port, data, timeout)

    def connect(self, timeout=10):
        """A plain socket to the server, for tests that pace their own bytes."""
        return socket.create_connection((self.host, self.port), timeout=timeout)

    # -- process --
    def send_signal(self, sig):
        self.proc.send_signal(sig)

    def wait(self, timeout):
        """The exit status; raises subprocess.TimeoutExpired after @timeout s."""
        self.returncode = self.proc.wait(timeout)
        return self.returncode

    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout=10):
        """SIGTERM, then SIGKILL after @timeout s. Returns the exit status."""
        if self.proc is None:
            return self.returncode
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.returncode = self.proc.returncode
        return self.returncode

    def log(self):
        try:
            with open(self.log_path, errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def wait_log(self, pattern, timeout=5):
        """The first match of regex @pattern in the log, waiting up to @timeout s."""
        deadline = time.monotonic() + timeout
        while True:
            m = re.search(pattern, self.log())
            if m or time.monotonic() >= deadline:
                return m
            time.sleep(0.02)

    def close(self):
        """Stops the server and removes its directory (the log with it)."""
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)
        if self in _gateways:
            _gateways.remove(self)

    def __enter__(self):
        return self.start()

    def __exit__(self, exc_type, *exc):
        self.stop()
        if exc_type is not None:
            sys.stderr.write("--- llmgate log (exit %s) ---\n%s\n" %
                             (self.returncode, self.log()[-6000:]))
        return False


def wait_ready(gateway, timeout=START_TIMEOUT):
    """gateway.wait_ready(timeout)."""
    return gateway.wait_ready(timeout)


def run_llmgate(args, config=None, env=None, timeout=30, pg=None):
    """Runs llmgate once (--check, --version, migrate ...) and returns the
    CompletedProcess (text stdout and stderr). With @config, "--config FILE"
    comes first."""
    tmp = tempfile.mkdtemp(prefix="llmgate-run-")
    try:
        cmd = [_bin()]
        if config is not None:
            path = os.path.join(tmp, "config.yml")
            with open(path, "w") as f:
                f.write(config_yaml(config, pg))
            cmd += ["--config", path]
        return subprocess.run(cmd + list(args), stdin=subprocess.DEVNULL,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              errors="replace", env=_env(pg, env), cwd=tmp, timeout=timeout)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# ---------------------------------------------------------------------------
# Runner

def main():
    """Runs the calling script's tests (or those named on the command line),
    prints "N passed, N failed[, N skipped]" and exits 1 on any failure or
    when no test ran."""
    module = sys.modules["__main__"]
    loader = unittest.defaultTestLoader
    names = sys.argv[1:]
    suite = loader.loadTestsFromNames(names, module) if names else \
        loader.loadTestsFromModule(module)
    result = unittest.TextTestRunner(stream=sys.stdout, verbosity=2).run(suite)
    failed = len(result.failures) + len(result.errors) + len(result.unexpectedSuccesses)
    skipped = len(result.skipped)
    passed = result.testsRun - failed - skipped
    line = "%d passed, %d failed" % (passed, failed)
    if skipped:
        line += ", %d skipped" % skipped
    print(line, flush=True)
    sys.exit(1 if failed or result.testsRun == 0 else 0)
