# SPDX-License-Identifier: Apache-2.0
"""The mock upstream itself: every endpoint and every fault mode, through
real sockets, so that the gateway's tests can trust what it does."""
import http.client
import json
import math
import os
import signal
import socket
import sys
import time
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
import lgtest  # noqa: E402
from mock import MockError, MockUpstream  # noqa: E402

CHAT = "/v1/chat/completions"
TEN_MB = 10 * 1024 * 1024


def chat_body(text="hello world", stream=False, usage=False, **extra):
    body = {"model": "mock-chat", "messages": [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": text}]}
    if stream:
        body["stream"] = True
    if usage:
        body["stream_options"] = {"include_usage": True}
    body.update(extra)
    return body


def Raw(up, method, path, body=None, headers=None, timeout=10):
    """A request to the mock whose reply is read chunk by chunk."""
    return lgtest.LiveReply(up.host, up.port, method, path, body, headers, timeout)


class MockTest(unittest.TestCase):
    def setUp(self):
        self.up = MockUpstream().start()

    def tearDown(self):
        rc = self.up.stop()
        log = self.up.log()
        self.up.close()
        # Under the sanitizer build a leak or an error makes this non-zero.
        self.assertEqual(rc, 0, "mock-upstream exit status %s:\n%s" % (rc, log[-4000:]))

    def req(self, method, path, body=None, headers=None, timeout=10):
        return lgtest.http_request(self.up.host, self.up.port, method, path, body, headers,
                                   timeout)

    def stream(self, body, **kw):
        r = self.req("POST", kw.pop("path", CHAT), body, **kw)
        self.assertEqual(r.status, 200, r.body)
        self.assertTrue(r.headers["content-type"].startswith("text/event-stream"))
        return r


class Basics(MockTest):
    def test_announces_an_ephemeral_port(self):
        self.assertEqual(self.up.host, "127.0.0.1")
        self.assertGreater(self.up.port, 0)
        self.assertTrue(self.up.url.startswith("http://127.0.0.1:"))

    def test_health(self):
        r = self.req("GET", "/health")
        self.assertEqual((r.status, r.body), (200, b""))

    def test_models_default(self):
        r = self.req("GET", "/v1/models")
        self.assertEqual(r.status, 200)
        doc = r.json()
        self.assertEqual(doc["object"], "list")
        self.assertEqual([m["id"] for m in doc["data"]], ["mock-chat", "mock-embed"])
        for m in doc["data"]:
            self.assertEqual((m["object"], m["owned_by"]), ("model", "mock"))
            self.assertIsInstance(m["created"], int)
            self.assertEqual(m["max_model_len"], 8192)
        self.assertEqual(self.req("GET", "/v1/models/mock-embed").json()["id"], "mock-embed")
        self.assertEqual(self.req("GET", "/v1/models/nope").status, 404)

    def test_models_from_options(self):
        with MockUpstream(models=["alpha", "beta/gamma"], context=1234) as up:
            r = lgtest.http_request(up.host, up.port, "GET", "/v1/models")
            self.assertEqual([m["id"] for m in r.json()["data"]], ["alpha", "beta/gamma"])
            self.assertEqual(r.json()["data"][0]["max_context_length"], 1234)
            r = lgtest.http_request(up.host, up.port, "GET", "/info")
            self.assertEqual((r.json()["model_id"], r.json()["max_input_length"]),
                             ("alpha", 1234))
            r = lgtest.http_request(up.host, up.port, "POST", CHAT, chat_body())
            self.assertEqual(r.status, 404)
            self.assertEqual(up.stop(), 0, up.log())

    def test_unknown_path_and_method(self):
        self.assertEqual(self.req("GET", "/v2/nothing").status, 404)
        self.assertEqual(self.req("GET", CHAT).status, 405)
        self.assertEqual(self.req("DELETE", "/v1/models").status, 405)

    def test_metrics(self):
        r = self.req("GET", "/metrics")
        self.assertEqual(r.status, 200)
        self.assertIn('vllm:num_requests_running{model_name="mock-chat"} 0', r.text)
        self.assertIn('vllm:num_requests_waiting{model_name="mock-chat"} 0', r.text)
        # A response in progress is a running request.
        self.up.fault("stall", path=CHAT)
        raw = Raw(self.up, "POST", CHAT, chat_body(stream=True))
        try:
            self.assertEqual(raw.status, 200)
            self.assertIn('vllm:num_requests_running{model_name="mock-chat"} 1',
                          self.req("GET", "/metrics").text)
        finally:
            raw.close()
        self.up.config(metrics_running=7, metrics_waiting=3)
        text = self.req("GET", "/metrics").text
        self.assertIn('vllm:num_requests_running{model_name="mock-chat"} 7', text)
        self.assertIn('vllm:num_requests_waiting{model_name="mock-chat"} 3', text)

    def test_sigint_exits_cleanly(self):
        self.up.proc.send_signal(signal.SIGINT)
        self.assertEqual(self.up.proc.wait(10), 0)


class Chat(MockTest):
    def test_non_stream(self):
        r = self.req("POST", CHAT, chat_body("hello   brave\nworld"))
        self.assertEqual(r.status, 200, r.body)
        self.assertTrue(r.headers["content-type"].startswith("application/json"))
        doc = r.json()
        self.assertEqual(doc["object"], "chat.completion")
        self.assertEqual(doc["model"], "mock-chat")
        self.assertTrue(doc["id"])
        self.assertIsInstance(doc["created"], int)
        choice = doc["choices"][0]
        self.assertEqual(choice["message"], {"role": "assistant",
                                             "content": "Mock reply to: hello brave world"})
        self.assertEqual(choice["finish_reason"], "stop")
        # Words: "be brief" + "hello brave world" = 5; the reply has 6.
        self.assertEqual(doc["usage"], {"prompt_tokens": 5, "completion_tokens": 6,
                                        "total_tokens": 11})

    def test_echo_is_cut_at_200_bytes(self):
        doc = self.req("POST", CHAT, chat_body("a" * 500)).json()
        self.assertEqual(doc["choices"][0]["message"]["content"],
                         "Mock reply to: " + "a" * 200)
        # Not in the middle of a UTF-8 sequence.
        doc = self.req("POST", CHAT, chat_body("a" + "é" * 150)).json()
        self.assertEqual(doc["choices"][0]["message"]["content"],
                         "Mock reply to: a" + "é" * 99)

    def test_content_parts(self):
        body = chat_body()
        body["messages"][1]["content"] = [{"type": "text", "text": "one two"},
                                          {"type": "image_url", "image_url": {"url": "x"}},
                                          {"type": "text", "text": "three"}]
        doc = self.req("POST", CHAT, body).json()
        self.assertEqual(doc["choices"][0]["message"]["content"],
                         "Mock reply to: one two three")

    def test_max_tokens_cuts_the_reply(self):
        doc = self.req("POST", CHAT, chat_body(max_tokens=2)).json()
        self.assertEqual(doc["choices"][0]["message"]["content"], "Mock reply")
        self.assertEqual(doc["choices"][0]["finish_reason"], "length")
        self.assertEqual(doc["usage"]["completion_tokens"], 2)

    def test_bad_requests(self):
        r = self.req("POST", CHAT, chat_body(model="unknown"))
        self.assertEqual(r.status, 404)
        self.assertIn("unknown", r.json()["error"]["message"])
        self.assertEqual(self.req("POST", CHAT, {"model": "mock-chat"}).status, 400)
        self.assertEqual(self.req("POST", CHAT, b"{not json",
                                  {"Content-Type": "application/json"}).status, 400)
        self.assertEqual(self.req("POST", CHAT, {"messages": []}).status, 400)

    def test_stream(self):
        r = self.stream(chat_body("hi there", stream=True, usage=True))
        self.assertEqual(r.headers["transfer-encoding"], "chunked")
        events = r.events()
        self.assertEqual(events[-1]["data"], "[DONE]")
        chunks = r.data()
        self.assertTrue(all(c["object"] == "chat.completion.chunk" for c in chunks))
        self.assertEqual(len({c["id"] for c in chunks}), 1)
        self.assertEqual(chunks[0]["choices"][0]["delta"], {"role": "assistant", "content": ""})
        words = [c["choices"][0]["delta"].get("content") for c in chunks[1:-2]]
        self.assertEqual(words, ["Mock", " reply", " to:", " hi", " there"])
        self.assertEqual(chunks[-2]["choices"][0]["finish_reason"], "stop")
        self.assertEqual(chunks[-1]["choices"], [])
        self.assertEqual(chunks[-1]["usage"], {"prompt_tokens": 4, "completion_tokens": 5,
                                               "total_tokens": 9})
        self.assertTrue(all(c["usage"] is None for c in chunks[:-1]))

    def test_stream_without_usage(self):
        chunks = self.stream(chat_body(stream=True)).data()
        self.assertNotIn("usage", chunks[-1])
        self.assertEqual(chunks[-1]["choices"][0]["finish_reason"], "stop")
        text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
        self.assertEqual(text, "Mock reply to: hello world")

    def test_stream_one_event_per_chunk(self):
        raw = Raw(self.up, "POST", CHAT, chat_body(stream=True))
        try:
            self.assertEqual(raw.status, 200)
            chunks = raw.pieces()
        finally:
            raw.close()
        self.assertTrue(all(c.startswith(b"data: ") and c.endswith(b"\n\n") for c in chunks))
        self.assertEqual(chunks[-1], b"data: [DONE]\n\n")
        self.assertEqual(len(chunks), 1 + 5 + 1 + 1)

    def test_event_delay(self):
        self.up.config(event_delay_ms=150)
        raw = Raw(self.up, "POST", CHAT, chat_body(stream=True))
        try:
            raw.piece()
            t0 = time.monotonic()
            rest = raw.pieces()
            elapsed = time.monotonic() - t0
        finally:
            raw.close()
        # Seven more events, 150 ms apart: at least about a second.
        self.assertEqual(len(rest), 7)
        self.assertGreaterEqual(elapsed, 0.9)

    def test_event_delay_from_the_command_line(self):
        with MockUpstream(event_delay_ms=100) as up:
            t0 = time.monotonic()
            r = lgtest.http_request(up.host, up.port, "POST", CHAT, chat_body(stream=True))
            self.assertEqual(r.events()[-1]["data"], "[DONE]")
            self.assertGreaterEqual(time.monotonic() - t0, 0.6)
            self.assertEqual(up.stop(), 0, up.log())

    def test_keep_alive(self):
        conn = http.client.HTTPConnection(self.up.host, self.up.port, timeout=10)
        try:
            for body in (chat_body(), chat_body(stream=True)):
                conn.request("POST", CHAT, json.dumps(body), {"Content-Type": "application/json"})
                r = conn.getresponse()
                self.assertEqual(r.status, 200)
                r.read()
        finally:
            conn.close()
        st = self.up.wait_stats(lambda s: s["connections_closed"] == 1)
        self.assertEqual((st["connections_opened"], st["connections_closed"]), (1, 1))
        self.assertEqual(st["by_path"][CHAT], 2)


class Completions(MockTest):
    def test_non_stream(self):
        r = self.req("POST", "/v1/completions", {"model": "mock-chat", "prompt": "say this"})
        doc = r.json()
        self.assertEqual(doc["object"], "text_completion")
        self.assertEqual(doc["choices"][0]["text"], "Mock completion for: say this")
        self.assertEqual(doc["choices"][0]["finish_reason"], "stop")
        self.assertEqual(doc["usage"], {"prompt_tokens": 2, "completion_tokens": 5,
                                        "total_tokens": 7})

    def test_stream(self):
        r = self.stream({"model": "mock-chat", "prompt": ["a b", "c"], "stream": True,
                         "stream_options": {"include_usage": True}}, path="/v1/completions")
        chunks = r.data()
        self.assertEqual("".join(c["choices"][0]["text"] for c in chunks[:-1]),
                         "Mock completion for: a b")
        self.assertEqual(chunks[-2]["choices"][0]["finish_reason"], "stop")
        self.assertEqual(chunks[-1]["usage"]["prompt_tokens"], 3)
        self.assertEqual(r.events()[-1]["data"], "[DONE]")

    def test_bad_prompt(self):
        self.assertEqual(self.req("POST", "/v1/completions",
                                  {"model": "mock-chat", "prompt": 3}).status, 400)


class Embeddings(MockTest):
    def embed(self, **body):
        body.setdefault("model", "mock-embed")
        r = self.req("POST", "/v1/embeddings", body)
        self.assertEqual(r.status, 200, r.body)
        return r.json()

    def test_one_string(self):
        doc = self.embed(input="hello world")
        self.assertEqual(doc["object"], "list")
        self.assertEqual(doc["model"], "mock-embed")
        self.assertEqual(doc["usage"], {"prompt_tokens": 2, "total_tokens": 2})
        vec = doc["data"][0]["embedding"]
        self.assertEqual((doc["data"][0]["object"], doc["data"][0]["index"]), ("embedding", 0))
        self.assertEqual(len(vec), 8)
        self.assertAlmostEqual(math.sqrt(sum(v * v for v in vec)), 1.0, places=9)

    def test_list_is_deterministic(self):
        a = self.embed(input=["x", "y", "x"])["data"]
        b = self.embed(input="y")["data"]
        self.assertEqual([d["index"] for d in a], [0, 1, 2])
        self.assertEqual(a[0]["embedding"], a[2]["embedding"])
        self.assertNotEqual(a[0]["embedding"], a[1]["embedding"])
        self.assertEqual(a[1]["embedding"], b[0]["embedding"])

    def test_dimensions(self):
        self.assertEqual(len(self.embed(input="x", dimensions=32)["data"][0]["embedding"]), 32)
        with MockUpstream(dim=3) as up:
            r = lgtest.http_request(up.host, up.port, "POST", "/v1/embeddings",
                                    {"model": "mock-embed", "input": "x"})
            self.assertEqual(len(r.json()["data"][0]["embedding"]), 3)
            self.assertEqual(up.stop(), 0, up.log())

    def test_token_ids(self):
        doc = self.embed(input=[[1, 2, 3], [4]])
        self.assertEqual(len(doc["data"]), 2)
        self.assertEqual(doc["usage"]["prompt_tokens"], 4)

    def test_bad_input(self):
        for body in ({"model": "mock-embed"}, {"model": "mock-embed", "input": []},
                     {"model": "mock-embed", "input": [1.5, {}]}, {"input": "x"}):
            self.assertEqual(self.req("POST", "/v1/embeddings", body).status, 400, body)


class Rerank(MockTest):
    def test_tei_shape(self):
        for path in ("/v1/rerank", "/rerank"):
            r = self.req("POST", path, {"query": "Red cat", "texts": ["a dog", "the red CAT",
                                                                       "red"]})
            self.assertEqual(r.status, 200, r.body)
            self.assertEqual(r.json(), [{"index": 1, "score": 1.0}, {"index": 2, "score": 0.5},
                                        {"index": 0, "score": 0.0}])

    def test_documents_shape(self):
        r = self.req("POST", "/v1/rerank", {"model": "m", "query": "blue sky", "top_n": 1,
                                            "documents": ["sky", "blue sky", "grass"]})
        doc = r.json()
        self.assertEqual(doc["results"], [{"index": 1, "relevance_score": 1.0}])
        self.assertEqual(doc["model"], "m")
        self.assertEqual(doc["usage"]["prompt_tokens"], 2 + 1 + 2 + 1)

    def test_bad(self):
        self.assertEqual(self.req("POST", "/v1/rerank", {"query": "x"}).status, 400)
        self.assertEqual(self.req("POST", "/v1/rerank", {"query": "x", "texts": [1]}).status,
                         400)


def multipart(fields, boundary="mockBoundary123"):
    out = b""
    for name, value, filename in fields:
        disp = 'form-data; name="%s"' % name
        if filename:
            disp += '; filename="%s"' % filename
        out += ("--%s\r\nContent-Disposition: %s\r\n\r\n" % (boundary, disp)).encode()
        out += value + b"\r\n"
    out += ("--%s--\r\n" % boundary).encode()
    return out, {"Content-Type": "multipart/form-data; boundary=" + boundary}


class Transcriptions(MockTest):
    PATH = "/v1/audio/transcriptions"

    def test_json(self):
        body, headers = multipart([("model", b"whisper", None),
                                   ("file", b"RIFF\x00\xff\xfebinary", "a.wav")])
        r = self.req("POST", self.PATH, body, headers)
        self.assertEqual((r.status, r.json()), (200, {"text": "mock transcription"}))
        rec = self.up.stats()["last_request"]
        self.assertEqual(rec["body_length"], len(body))
        self.assertIn('filename="a.wav"', rec["body"])

    def test_text_format(self):
        body, headers = multipart([("file", b"x", "a.mp3"), ("response_format", b"text", None)])
        r = self.req("POST", self.PATH, body, headers)
        self.assertEqual((r.status, r.body), (200, b"mock transcription"))
        self.assertTrue(r.headers["content-type"].startswith("text/plain"))

    def test_missing_file_or_not_multipart(self):
        body, headers = multipart([("model", b"whisper", None), ("filename", b"x", None)])
        self.assertEqual(self.req("POST", self.PATH, body, headers).status, 400)
        self.assertEqual(self.req("POST", self.PATH, {"file": "x"}).status, 400)


class Http(MockTest):
    def test_chunked_request_body(self):
        body = json.dumps(chat_body("chunked body")).encode()
        parts = [body[:10], body[10:11], body[11:]]
        data = b"".join(b"%x;ext=1\r\n%s\r\n" % (len(p), p) for p in parts) + b"0\r\n\r\n"
        got, closed = lgtest.raw_exchange(
            self.up.host, self.up.port,
            b"POST " + CHAT.encode() + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n" + data)
        self.assertTrue(closed)
        self.assertTrue(got.startswith(b"HTTP/1.1 200 OK\r\n"), got[:200])
        self.assertIn(b"Mock reply to: chunked body", got)
        self.assertEqual(self.up.stats()["last_request"]["body"], body.decode())

    def test_expect_continue(self):
        body = json.dumps(chat_body()).encode()
        with socket.create_connection((self.up.host, self.up.port), timeout=10) as s:
            s.sendall(b"POST %s HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
                      b"Content-Length: %d\r\n\r\n" % (CHAT.encode(), len(body)))
            self.assertEqual(s.recv(100), b"HTTP/1.1 100 Continue\r\n\r\n")
            s.sendall(body)
            self.assertTrue(s.recv(100).startswith(b"HTTP/1.1 200 OK\r\n"))

    def test_bad_framing_is_refused(self):
        for data in (b"garbage\r\n\r\n",
                     b"GET / HTTP/1.1\r\nHost: x\r\n folded: y\r\n\r\n",
                     b"POST /v1/completions HTTP/1.1\r\nContent-Length: 2\r\n"
                     b"Transfer-Encoding: chunked\r\n\r\n",
                     b"GET /" + b"a" * 70000 + b" HTTP/1.1\r\n\r\n"):
            got, closed = lgtest.raw_exchange(self.up.host, self.up.port, data)
            self.assertTrue(closed, data[:60])
            self.assertRegex(got[:20], rb"^HTTP/1.1 4\d\d ", data[:60])

    def test_pipelined_requests(self):
        one = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"
        got, _ = lgtest.raw_exchange(self.up.host, self.up.port,
                                     one * 3 + b"GET /health HTTP/1.1\r\nConnection: close\r\n\r\n")
        self.assertEqual(got.count(b"HTTP/1.1 200 OK"), 4)

    def test_half_closed_client_still_gets_its_answer(self):
        with socket.create_connection((self.up.host, self.up.port), timeout=10) as s:
            s.sendall(b"GET /v1/models HTTP/1.1\r\nHost: x\r\n\r\n")
            s.shutdown(socket.SHUT_WR)
            got = b""
            while True:
                data = s.recv(65536)
                if not data:
                    break
                got += data
        self.assertTrue(got.startswith(b"HTTP/1.1 200 OK"))
        self.assertIn(b"mock-embed", got)


class Stats(MockTest):
    def test_records_what_it_saw(self):
        self.req("POST", CHAT + "?x=1", chat_body(), {"Authorization": "Bearer sk-test",
                                                      "X-Custom": "a"})
        self.req("GET", "/health")
        st = self.up.stats()
        self.assertEqual(st["requests"], 2)
        self.assertEqual(st["by_path"], {CHAT: 1, "/health": 1})
        last = st["last_request"]           # probes (/health) do not replace it
        self.assertEqual((last["method"], last["path"], last["query"]), ("POST", CHAT, "x=1"))
        self.assertEqual(last["headers"]["authorization"], "Bearer sk-test")
        self.assertEqual(last["headers"]["x-custom"], "a")
        self.assertEqual(json.loads(last["body"]), chat_body())
        self.assertEqual(st["last_by_path"]["/health"]["method"], "GET")
        # Control connections are not counted.
        self.assertEqual(st["connections_opened"], 2)
        self.assertEqual(st["open_connections"], 0)

    def test_client_abort_is_seen(self):
        self.up.config(event_delay_ms=1000)
        raw = Raw(self.up, "POST", CHAT, chat_body(stream=True))
        raw.piece()
        st = self.up.stats()
        self.assertEqual((st["open_connections"], st["connections_closed"]), (1, 0))
        raw.close()
        st = self.up.wait_stats(lambda s: s["connections_closed"] == 1)
        self.assertEqual(st["connections_closed"], 1)
        self.assertEqual(st["aborted"], 1)
        self.assertEqual(st["open_connections"], 0)

    def test_reset(self):
        self.req("GET", "/v1/models")
        self.up.fault("status", count=-1)
        self.up.config(event_delay_ms=5000)
        self.up.reset()
        st = self.up.stats()
        self.assertEqual((st["requests"], st["by_path"], st["last_request"]), (0, {}, None))
        self.assertEqual(st["fault"]["mode"], "none")
        t0 = time.monotonic()
        self.assertEqual(self.stream(chat_body(stream=True)).events()[-1]["data"], "[DONE]")
        self.assertLess(time.monotonic() - t0, 15.0)  # 7 gaps of 5 s would be 35 s

    def test_bad_control_requests(self):
        with self.assertRaises(MockError):
            self.up.fault("no_such_mode")
        with self.assertRaises(MockError):
            self.up._call("GET", "/__mock/nothing")


class Faults(MockTest):
    def test_status_default(self):
        self.up.fault("status")
        r = self.req("POST", CHAT, chat_body())
        self.assertEqual(r.status, 500)
        self.assertIn("message", r.json()["error"])
        self.assertEqual(self.req("POST", CHAT, chat_body()).status, 200)   # count 1

    def test_status_with_params(self):
        self.up.fault("status", count=2, status=429, retry_after=7, body={"detail": "slow down"},
                      headers={"X-RateLimit-Remaining": "0"})
        for stream in (False, True):
            r = self.req("POST", CHAT, chat_body(stream=stream))
            self.assertEqual(r.status, 429)
            self.assertEqual(r.headers["retry-after"], "7")
            self.assertEqual(r.headers["x-ratelimit-remaining"], "0")
            self.assertEqual(r.json(), {"detail": "slow down"})
        self.assertEqual(self.req("POST", CHAT, chat_body()).status, 200)

    def test_status_raw_body_until_reset(self):
        self.up.fault("status", count=-1, status=503, body="down", content_type="text/plain")
        for _ in range(3):
            r = self.req("POST", "/v1/embeddings", {"model": "mock-embed", "input": "x"})
            self.assertEqual((r.status, r.body), (503, b"down"))
        self.assertEqual(self.req("GET", "/health").status, 200)   # probes are spared
        self.up.reset()
        self.assertEqual(self.req("POST", "/v1/embeddings",
                                  {"model": "mock-embed", "input": "x"}).status, 200)

    def test_path_filter(self):
        self.up.fault("status", status=502, path="/v1/embeddings")
        self.assertEqual(self.req("POST", CHAT, chat_body()).status, 200)
        self.assertEqual(self.req("POST", "/v1/embeddings",
                                  {"model": "mock-embed", "input": "x"}).status, 502)
        self.up.fault("status", status=502, path="/health")
        self.assertEqual(self.req("GET", "/health").status, 502)

    def test_delay(self):
        for stream in (False, True):
            self.up.fault("delay", ms=600)
            t0 = time.monotonic()
            r = self.req("POST", CHAT, chat_body(stream=stream))
            self.assertGreaterEqual(time.monotonic() - t0, 0.55)
            self.assertEqual(r.status, 200)
            if stream:
                self.assertEqual(r.events()[-1]["data"], "[DONE]")
            else:
                self.assertEqual(r.json()["object"], "chat.completion")

    def test_delay_then_client_leaves(self):
        self.up.fault("delay", ms=5000)
        with self.assertRaises(socket.timeout):
            self.req("POST", CHAT, chat_body(), timeout=0.3)
        st = self.up.wait_stats(lambda s: s["aborted"] == 1)
        self.assertEqual((st["aborted"], st["connections_closed"]), (1, 1))

    def test_reset_after_stream(self):
        self.up.fault("reset_after", events=2)
        raw = Raw(self.up, "POST", CHAT, chat_body(stream=True))
        got = []
        reset = False
        try:
            self.assertEqual(raw.status, 200)
            while True:
                data = raw.piece()
                self.assertTrue(data, "the stream must not end cleanly")
                got.append(data)
        except ConnectionResetError:
            reset = True
        except EOFError:
            pass
        finally:
            raw.close()
        self.assertEqual(len(got), 2)
        self.assertNotIn(b"[DONE]", b"".join(got))
        # SO_LINGER {1, 0}: Linux reports the reset once the data is read.
        self.assertTrue(reset, "expected ECONNRESET")

    def test_reset_after_non_stream(self):
        self.up.fault("reset_after")
        raw = Raw(self.up, "POST", CHAT, chat_body())
        try:
            self.assertEqual(raw.status, 200)
            self.assertGreater(int(raw.headers["content-length"]), 0)
            with self.assertRaises(ConnectionResetError):
                raw.read_exact(1)
        finally:
            raw.close()
        # http.client sees a truncated reply too.
        self.up.fault("reset_after")
        conn = http.client.HTTPConnection(self.up.host, self.up.port, timeout=10)
        try:
            conn.request("POST", CHAT, json.dumps(chat_body()))
            with self.assertRaises((ConnectionResetError, http.client.IncompleteRead)):
                conn.getresponse().read()
        finally:
            conn.close()
        self.assertEqual(self.req("POST", CHAT, chat_body()).status, 200)

    def test_stall_stream(self):
        self.up.fault("stall", events=2)
        raw = Raw(self.up, "POST", CHAT, chat_body(stream=True), timeout=10)
        try:
            self.assertEqual(raw.status, 200)
            self.assertIn(b"assistant", raw.piece())
            self.assertIn(b'"Mock"', raw.piece())
            raw.sock.settimeout(1.0)
            with self.assertRaises(socket.timeout):
                raw.piece()
            self.assertEqual(self.up.stats()["open_connections"], 1)
        finally:
            raw.close()
        st = self.up.wait_stats(lambda s: s["connections_closed"] == 1)
        self.assertEqual((st["connections_closed"], st["aborted"]), (1, 1))

    def test_stall_non_stream(self):
        self.up.fault("stall")
        raw = Raw(self.up, "POST", CHAT, chat_body())
        try:
            self.assertEqual(raw.status, 200)
            self.assertGreater(int(raw.headers["content-length"]), 0)
            raw.sock.settimeout(1.0)
            with self.assertRaises(socket.timeout):
                raw.read_exact(1)
        finally:
            raw.close()
        self.up.wait_stats(lambda s: s["connections_closed"] == 1)

    def test_malformed(self):
        self.up.fault("malformed")
        r = self.stream(chat_body(stream=True))
        self.assertIn(b"this line is not server-sent events\n\n", r.body)
        bad = [e["data"] for e in r.events() if "data" in e and "mock-malformed" in e["data"]]
        self.assertEqual(len(bad), 1)
        with self.assertRaises(ValueError):
            json.loads(bad[0])
        self.assertEqual(r.events()[-1]["data"], "[DONE]")
        self.up.fault("malformed")
        r = self.req("POST", CHAT, chat_body())
        self.assertEqual(r.status, 200)
        with self.assertRaises(ValueError):
            r.json()

    def test_error_event(self):
        self.up.fault("error_event", message="boom", code=503)
        r = self.stream(chat_body(stream=True))
        events = r.events()
        self.assertEqual(json.loads(events[0]["data"])["error"]["message"], "boom")
        self.assertEqual(json.loads(events[0]["data"])["error"]["code"], 503)
        self.assertEqual(events[-1]["data"], "[DONE]")
        self.up.fault("error_event")
        r = self.req("POST", CHAT, chat_body())
        self.assertEqual(r.status, 200)
        self.assertIn("error", r.json())

    def test_big_event(self):
        self.up.fault("big_event")
        r = self.stream(chat_body(stream=True, usage=True))
        self.assertGreater(len(r.body), TEN_MB)
        chunks = r.data()
        big = [c for c in chunks if c["choices"] and
               len(c["choices"][0]["delta"].get("content", "")) == TEN_MB]
        self.assertEqual(len(big), 1)
        self.assertEqual(chunks[-1]["usage"]["completion_tokens"], 5)   # then normal completion
        self.assertEqual(r.events()[-1]["data"], "[DONE]")
        self.up.fault("big_event", bytes=1000)
        doc = self.req("POST", "/v1/embeddings", {"model": "mock-embed", "input": "x"}).json()
        self.assertEqual(doc["mock_padding"], "x" * 1000)
        self.assertEqual(len(doc["data"]), 1)

    def test_endless_stream(self):
        self.up.fault("endless", interval_ms=5)
        raw = Raw(self.up, "POST", CHAT, chat_body(stream=True))
        try:
            self.assertEqual(raw.status, 200)
            first = json.loads(raw.piece()[6:])
            self.assertEqual(first["choices"][0]["delta"]["role"], "assistant")
            for _ in range(30):
                self.assertTrue(raw.piece().startswith(b"data: {"))
            self.assertEqual(self.up.stats()["open_connections"], 1)
        finally:
            raw.close()
        st = self.up.wait_stats(lambda s: s["connections_closed"] == 1)
        self.assertEqual((st["connections_closed"], st["aborted"], st["open_connections"]),
                         (1, 1, 0))

    def test_endless_non_stream(self):
        self.up.fault("endless")
        raw = Raw(self.up, "POST", "/v1/embeddings", {"model": "mock-embed", "input": "x"})
        try:
            self.assertEqual(raw.headers["transfer-encoding"], "chunked")
            body = b"".join(raw.piece() for _ in range(20))
            self.assertEqual(body, b"{" + b" " * 19)
        finally:
            raw.close()
        self.up.wait_stats(lambda s: s["connections_closed"] == 1)

    def test_redirect(self):
        self.up.fault("redirect", location="http://127.0.0.1:1/elsewhere")
        r = self.req("POST", CHAT, chat_body())
        self.assertEqual(r.status, 302)
        self.assertEqual(r.headers["location"], "http://127.0.0.1:1/elsewhere")

    def test_fault_stats(self):
        self.up.fault("delay", count=3, ms=1)
        self.assertEqual(self.up.stats()["fault"], {"mode": "delay", "remaining": 3})
        self.req("GET", "/v1/models")
        self.assertEqual(self.up.stats()["fault"], {"mode": "delay", "remaining": 2})


class Harness(unittest.TestCase):
    """The parts of lgtest that do not need the server."""

    class FakePg:
        def url(self):
            return "postgresql://postgres:pw@127.0.0.1:5999/postgres"

    def test_config_defaults(self):
        text = lgtest.config_yaml({"plugins": {"mock": {}}, "settings": {"x": True}},
                                  self.FakePg())
        lines = dict(line.split(": ", 1) for line in text.splitlines())
        self.assertEqual(json.loads(lines["server"]), {"listen": ["127.0.0.1:0"]})
        self.assertEqual(json.loads(lines["dependencies"]),
                         {"postgres": {"url": self.FakePg().url()}})
        self.assertEqual(json.loads(lines["plugins"]), {"mock": {}})
        self.assertEqual(json.loads(lines["settings"]), {"x": True})

    def test_config_keeps_what_the_test_sets(self):
        cfg = {"server": {"listen": ["127.0.0.1:1"], "workers": 2},
               "dependencies": {"postgres": {"url": "postgresql://elsewhere/db"}}}
        text = lgtest.config_yaml(cfg, self.FakePg())
        self.assertIn('"listen": ["127.0.0.1:1"]', text)
        self.assertIn("postgresql://elsewhere/db", text)
        self.assertNotIn("5999", text)
        self.assertEqual(cfg["server"], {"listen": ["127.0.0.1:1"], "workers": 2})
        raw = "server:\n  listen: [\"127.0.0.1:0\"]\n"
        self.assertEqual(lgtest.config_yaml(raw, self.FakePg()), raw)

    def test_parse_sse(self):
        events = lgtest.parse_sse(b": comment\r\ndata: a\r\ndata: b\r\n\r\n"
                                  b"event: error\ndata:{\"x\": 1}\n\ndata: [DONE]\n\n")
        self.assertEqual(events, [{"data": "a\nb"}, {"event": "error", "data": '{"x": 1}'},
                                  {"data": "[DONE]"}])

    def test_headers_are_case_insensitive(self):
        h = lgtest.Headers([("Content-Type", "a"), ("X-A", "1"), ("x-a", "2")])
        self.assertEqual((h["content-type"], h.get("CONTENT-TYPE"), h["X-a"]), ("a", "a", "1, 2"))
        self.assertNotIn("x-b", h)
        self.assertIsNone(h.get("x-b"))

    def test_raw_exchange_sees_a_reset(self):
        with MockUpstream() as up:
            up.fault("reset_after")
            got, closed = lgtest.raw_exchange(
                up.host, up.port, b"GET /v1/models HTTP/1.1\r\nHost: x\r\n\r\n")
            self.assertTrue(closed)
            self.assertTrue(got.startswith(b"HTTP/1.1 200 OK"))
            got, closed = lgtest.raw_exchange(
                up.host, up.port, b"GET /v1/models HTTP/1.1\r\nHost: x\r\n\r\n", timeout=2)
            self.assertFalse(closed)                 # keep-alive: the mock waits for more
            self.assertIn(b"mock-chat", got)
            self.assertEqual(up.stop(), 0, up.log())


if __name__ == "__main__":
    lgtest.main()
