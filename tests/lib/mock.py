# SPDX-License-Identifier: Apache-2.0
"""The mock OpenAI-compatible upstream (tests/mock_upstream) from Python.

    with MockUpstream() as up:
        up.fault("status", status=503, retry_after=2)
        ... point llmgate at up.url, send a request ...
        assert up.stats()["by_path"]["/v1/chat/completions"] == 1

The binary comes from $LLMGATE_MOCK_UPSTREAM (meson sets it). The process is
stopped by stop(), by the context manager, or at interpreter exit at the
latest, also when a test fails. stop() returns the exit status: 0 means the
mock shut down cleanly (under the sanitizer build: no leak, no error)."""
import atexit
import http.client
import json
import os
import select
import signal
import subprocess
import tempfile
import time

_live = set()


def _stop_all():
    for up in list(_live):
        up.stop()


atexit.register(_stop_all)


class MockError(RuntimeError):
    pass


class MockUpstream:
    def __init__(self, models=None, dim=None, context=None, event_delay_ms=None,
                 host="127.0.0.1", port=0, binary=None, start_timeout=20):
        self.binary = binary or os.environ.get("LLMGATE_MOCK_UPSTREAM")
        if not self.binary:
            raise MockError("LLMGATE_MOCK_UPSTREAM is not set (run through meson test)")
        self.args = ["--host", host, "--port", str(port)]
        for name in models or []:
            self.args += ["--model", name]
        if dim is not None:
            self.args += ["--dim", str(dim)]
        if context is not None:
            self.args += ["--context", str(context)]
        if event_delay_ms is not None:
            self.args += ["--event-delay-ms", str(event_delay_ms)]
        self.start_timeout = start_timeout
        self.proc = None
        self.host = None
        self.port = None
        self.returncode = None
        self._log = None

    # -- process --
    def start(self):
        self._log = tempfile.NamedTemporaryFile(prefix="mock-upstream-", suffix=".log",
                                                delete=False)
        self.proc = subprocess.Popen([self.binary] + self.args, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=self._log)
        _live.add(self)
        try:
            line = self._read_announce()
        except Exception:
            self.stop()
            raise
        addr = line[len("listening on "):]
        host, _, port = addr.rpartition(":")
        self.host = host.strip("[]")
        self.port = int(port)
        return self

    def _read_announce(self):
        """The first stdout line, within start_timeout seconds."""
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + self.start_timeout
        data = b""
        while b"\n" not in data:
            left = deadline - time.monotonic()
            if left <= 0:
                raise MockError("mock-upstream did not announce its port:\n" + self.log())
            ready, _, _ = select.select([fd], [], [], left)
            if ready:
                chunk = os.read(fd, 4096)
                if not chunk:
                    raise MockError("mock-upstream exited at start:\n" + self.log())
                data += chunk
        self.proc.stdout.close()
        line = data.split(b"\n", 1)[0].decode()
        if not line.startswith("listening on "):
            raise MockError("unexpected first line from mock-upstream: %r" % line)
        return line

    @property
    def url(self):
        host = "[%s]" % self.host if ":" in self.host else self.host
        return "http://%s:%d" % (host, self.port)

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
        self.proc = None
        _live.discard(self)
        return self.returncode

    def log(self):
        """What the mock wrote on stderr (one line per request, sanitizer reports)."""
        if self._log is None:
            return ""
        with open(self._log.name, errors="replace") as f:
            return f.read()

    def close(self):
        rc = self.stop()
        if self._log is not None:
            self._log.close()
            try:
                os.unlink(self._log.name)
            except OSError:
                pass
            self._log = None
        return rc

    def __enter__(self):
        return self.start()

    def __exit__(self, exc_type, *exc):
        rc = self.stop()
        if exc_type is not None or rc != 0:
            import sys
            sys.stderr.write("--- mock-upstream log (exit %s) ---\n%s\n" % (rc, self.log()[-4000:]))
        self.close()
        return False

    # -- control endpoints --
    def _call(self, method, path, body=None):
        conn = http.client.HTTPConnection(self.host, self.port, timeout=10)
        try:
            data = None if body is None else json.dumps(body).encode()
            headers = {"Content-Type": "application/json"} if data is not None else {}
            conn.request(method, path, body=data, headers=headers)
            resp = conn.getresponse()
            payload = resp.read()
        finally:
            conn.close()
        if resp.status != 200:
            raise MockError("%s %s -> %d %s" % (method, path, resp.status, payload[:200]))
        return json.loads(payload)

    def fault(self, mode, count=1, **params):
        """The next @count requests (-1: all until reset) get fault @mode.
        Params as in mock_upstream.c, e.g. status=503, retry_after=1, ms=500,
        events=2, bytes=..., interval_ms=..., location=..., path="/v1/..."."""
        return self._call("POST", "/__mock/fault", dict(params, mode=mode, count=count))

    def config(self, **settings):
        """event_delay_ms, metrics_running, metrics_waiting; until reset."""
        return self._call("POST", "/__mock/config", settings)

    def reset(self):
        return self._call("POST", "/__mock/reset")

    def stats(self):
        return self._call("GET", "/__mock/stats")

    def wait_stats(self, predicate, timeout=5):
        """Polls stats until predicate(stats) is true; returns the last stats.
        For what the mock sees after the client side is done (a close, an abort)."""
        deadline = time.monotonic() + timeout
        while True:
            st = self.stats()
            if predicate(st) or time.monotonic() >= deadline:
                return st
            time.sleep(0.02)
