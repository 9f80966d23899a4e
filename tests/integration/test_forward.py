#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""The forwarding engine end to end: the real server, a real PostgreSQL, the
mock upstream with its fault modes, and the recorder test plugin that shows
what AUTHORIZE and COMPLETE hooks saw. Every fault is checked from the
client's side and in the COMPLETE record."""
import json
import math
import signal
import socket
import threading
import time
import unittest

import common
import lgtest
from mock import MockUpstream
from pgcluster import PgCluster, free_port

AUTH = {"Authorization": "Bearer good-token"}
CHAT = "/v1/chat/completions"
BUSY = "Model is too busy, please try again later."
TEN_MB = 10 * 1024 * 1024
UPSTREAM_MODELS = ["up-chat", "up-embed", "up-rerank", "up-asr"]
FAULT_MODELS = ["f4xx", "fraw", "f5xx", "f429", "fdelay", "freset", "freset2", "fstall",
                "fmalformed", "ferror", "fredirect", "fragile"]


def chat_body(model="chat", text="hello there", stream=False, **extra):
    body = {"model": model, "messages": [{"role": "user", "content": text}]}
    if stream:
        body["stream"] = True
    body.update(extra)
    return body


def provider(up, model_name="up-chat", type_="openai", **extra):
    p = {"type": type_, "url": up.url, "model_name": model_name, "timeout": 30,
         "first_byte_timeout": "1s", "idle_timeout": "1s"}
    p.update(extra)
    return p


def Stream(gw, body, path=CHAT, headers=None, timeout=30):
    """A request to the gateway whose reply is read piece by piece."""
    return lgtest.LiveReply(gw.host, gw.port, "POST", path, body,
                            AUTH if headers is None else headers, timeout)


class GatewayCase(unittest.TestCase):
    """One PostgreSQL cluster, two mock upstreams and one gateway per class."""
    models = []
    recorder = {}

    @classmethod
    def setUpClass(cls):
        cls.pg = PgCluster().start()
        cls.up = MockUpstream(models=UPSTREAM_MODELS).start()
        cls.up2 = MockUpstream(models=UPSTREAM_MODELS).start()
        # Only the client-disconnect check uses this one: the mock counts
        # aborted replies on connections opened since its last reset, and
        # this keeps the gateway from reusing an older one.
        cls.up3 = MockUpstream(models=UPSTREAM_MODELS).start()
        cfg = {"plugins": {"good": {}, "recorder": cls.recorder, "openai": {}, "vllm": {},
                           "mock": {"stream_delay": "100ms"}},
               "models": cls.make_models(cls.up, cls.up2, cls.up3)}
        cls.gw = lgtest.Gateway(cfg, pg=cls.pg,
                                env={"LLMGATE_PLUGIN_PATH": common.test_plugins_path()})
        try:
            cls.gw.start()
        except Exception:
            cls.up.close()
            cls.up2.close()
            cls.up3.close()
            cls.pg.destroy()
            raise

    @classmethod
    def tearDownClass(cls):
        cls.gw.stop()
        log = cls.gw.log()
        cls.gw.close()
        rcs = cls.up.close(), cls.up2.close(), cls.up3.close()
        cls.pg.destroy()
        # No sanitizer report, no crash: the server exited cleanly.
        assert cls.gw.returncode == 0, log[-4000:]
        assert rcs == (0, 0, 0), rcs

    def setUp(self):
        self.up.reset()
        self.up2.reset()
        self.up3.reset()
        self.assertEqual(self.gw.request("POST", "/recorder/reset").status, 200)

    def settle(self, model="chat"):
        """One good call: it closes the run of failures the provider's
        circuit breaker counts (5 in a row open it), so that the failures of
        one check do not add to the next one's."""
        self.up.reset()
        self.up2.reset()
        r = self.post(chat_body(model))
        self.assertEqual(r.status, 200, r.body)
        self.up.reset()
        self.up2.reset()

    # -- helpers --
    def post(self, body, path=CHAT, headers=None, timeout=30):
        return self.gw.request("POST", path, body, headers=AUTH if headers is None else headers,
                               timeout=timeout)

    def records(self, rid, phase="complete"):
        calls = self.gw.request("GET", "/recorder/calls").json()["calls"]
        return [c for c in calls if c["request_id"] == rid and c["phase"] == phase]

    def complete(self, rid, timeout=5):
        """The one COMPLETE record of request @rid (waits for it)."""
        deadline = time.monotonic() + timeout
        while True:
            found = self.records(rid)
            if found or time.monotonic() >= deadline:
                break
            time.sleep(0.05)
        self.assertEqual(len(found), 1, "COMPLETE records of %s: %r" % (rid, found))
        # Exactly once: nothing more arrives later.
        time.sleep(0.05)
        self.assertEqual(len(self.records(rid)), 1)
        return found[0]

    def no_call(self, rid):
        self.assertEqual(self.records(rid, "authorize") + self.records(rid), [])

    def chat_count(self, up=None):
        return (up or self.up).stats()["by_path"].get(CHAT, 0)

    def fault(self, mode, up=None, count=1, path=CHAT, **params):
        (up or self.up).fault(mode, count=count, path=path, **params)

    def assertErrorStream(self, events, rid):
        """Data events, then one error event, and no [DONE]."""
        datas = [e for e in events if e.get("event") != "error"]
        self.assertNotIn("[DONE]", [e.get("data") for e in events])
        self.assertEqual(events[-1].get("event"), "error", events[-3:])
        err = json.loads(events[-1]["data"])["error"]
        self.assertEqual(err["type"], "server_error")
        self.assertTrue(err["message"])
        for e in datas:
            self.assertEqual(json.loads(e["data"])["id"], rid)
        return err


class Forwarding(GatewayCase):
    @staticmethod
    def make_models(up, up2, up3):
        return [
            {"name": "chat", "type": "text-generation", "aliases": ["chat-alias"],
             "providers": [provider(up)]},
            {"name": "duo", "type": "text-generation",
             "providers": [provider(up), provider(up2)]},
            {"name": "duo429", "type": "text-generation",
             "providers": [provider(up), provider(up2)]},
            {"name": "spread", "type": "text-generation",
             "load_balancing_strategy": "least_busy",
             "providers": [provider(up, idle_timeout="5s"), provider(up2, idle_timeout="5s")]},
            {"name": "capped", "type": "text-generation",
             "providers": [provider(up, max_concurrency=1, first_byte_timeout="3s")]},
            {"name": "down", "type": "text-generation",
             "providers": [{"type": "openai", "url": "http://127.0.0.1:%d" % free_port(),
                            "model_name": "up-chat", "connect_timeout": "1s"}]},
            {"name": "embed", "type": "text-embeddings-inference",
             "providers": [provider(up, "up-embed")]},
            {"name": "rank", "type": "text-classification",
             "providers": [provider(up, "up-rerank", "vllm")]},
            {"name": "asr", "type": "automatic-speech-recognition",
             "providers": [provider(up, "up-asr")]},
            # Served in-process by the mock provider type (no network).
            {"name": "inproc", "type": "text-generation",
             "providers": [{"type": "mock", "url": "http://mock.invalid",
                            "model_name": "mock-model"}]},
        ] + [
            # One model per failure check: each provider has its own circuit
            # breaker, so the failures of one check never open another's.
            {"name": name, "type": "text-generation", "providers": [provider(up)]}
            for name in FAULT_MODELS
        ] + [
            {"name": "fgone", "type": "text-generation", "providers": [provider(up3)]},
            # Making 10 MB takes the mock a while under the sanitizers.
            {"name": "fbig", "type": "text-generation",
             "providers": [provider(up, first_byte_timeout="30s", idle_timeout="30s")]},
        ]

    # -- the plain path --
    def test_chat_rewrites_model_keeps_id_and_passes_unknown_fields(self):
        r = self.post(chat_body("chat-alias", max_tokens=50, foo={"bar": [1, 2]}))
        self.assertEqual(r.status, 200, r.body)
        rid = r.headers["x-request-id"]
        reply = r.json()
        self.assertEqual(reply["model"], "chat-alias")
        self.assertTrue(reply["id"].startswith("chatcmpl-mock-"), reply["id"])
        self.assertEqual(reply["choices"][0]["message"]["content"], "Mock reply to: hello there")
        # No prices, no parameter counts: cost and impacts 0 (test_cost.py).
        self.assertEqual(reply["usage"], {"prompt_tokens": 2, "completion_tokens": 5,
                                          "total_tokens": 7, "cost": 0,
                                          "impacts": {"kWh": 0, "kgCO2eq": 0}})
        timing = r.headers["server-timing"]
        for phase in ("auth;dur=", "limits;dur=", "route;dur=", "upstream;dur=", "total;dur="):
            self.assertIn(phase, timing)
        sent = self.up.stats()["last_by_path"][CHAT]
        body = json.loads(sent["body"])
        self.assertEqual(body["model"], "up-chat")
        self.assertEqual(body["foo"], {"bar": [1, 2]})
        self.assertEqual(body["max_tokens"], 50)
        self.assertNotIn("stream_options", body)
        self.assertEqual(sent["headers"]["x-request-id"], rid)
        self.assertNotIn("authorization", sent["headers"])
        c = self.complete(rid)
        self.assertEqual(len(self.records(rid, "authorize")), 1)
        self.assertEqual((c["status"], c["prompt_tokens"], c["completion_tokens"],
                          c["total_tokens"], c["usage_estimated"]), (200, 2, 5, 7, False))
        self.assertEqual((c["model"], c["model_name"], c["model_type"], c["endpoint"]),
                         ("chat-alias", "chat", "text-generation", CHAT))
        self.assertEqual((c["provider_type"], c["provider_model"], c["max_tokens"]),
                         ("openai", "up-chat", 50))
        self.assertGreater(c["provider_id"], 0)
        self.assertFalse(c["client_gone"])
        self.assertIsNone(c["error"])
        self.assertGreater(c["latency_ms"], 0)

    def test_stream_relayed_as_it_arrives(self):
        self.up.config(event_delay_ms=250)
        s = Stream(self.gw, chat_body(stream=True))
        self.assertEqual(s.status, 200)
        self.assertEqual(s.headers["content-type"], "text/event-stream")
        self.assertIn("total;dur=", s.headers["server-timing"])
        rid = s.headers["x-request-id"]
        timed = list(s.events())
        s.close()
        events = [e for _, e in timed]
        datas = [e["data"] for e in events]
        self.assertEqual(datas.count("[DONE]"), 1)
        self.assertEqual(datas[-1], "[DONE]")
        chunks = [json.loads(d) for d in datas[:-1]]
        # Relayed one by one: the first came long before the last (7 events,
        # 250 ms apart upstream; buffered they would arrive together).
        self.assertGreater(timed[-2][0] - timed[0][0], 0.6)
        for c in chunks:
            self.assertEqual(c["id"], rid)
            self.assertEqual(c["model"], "chat")
        # One usage event, the gateway's, last; the upstream's was dropped.
        with_usage = [c for c in chunks if c.get("usage")]
        self.assertEqual(len(with_usage), 1)
        self.assertIs(with_usage[0], chunks[-1])
        self.assertEqual(chunks[-1]["choices"], [])
        self.assertEqual(chunks[-1]["object"], "chat.completion.chunk")
        self.assertEqual(chunks[-1]["usage"], {"prompt_tokens": 2, "completion_tokens": 5,
                                               "total_tokens": 7, "cost": 0,
                                               "impacts": {"kWh": 0, "kgCO2eq": 0}})
        text = "".join(ch["choices"][0]["delta"].get("content", "") for ch in chunks[:-1]
                       if ch["choices"])
        self.assertEqual(text, "Mock reply to: hello there")
        sent = json.loads(self.up.stats()["last_by_path"][CHAT]["body"])
        self.assertEqual(sent["stream_options"], {"include_usage": True})
        self.assertEqual(sent["model"], "up-chat")
        c = self.complete(rid)
        self.assertEqual((c["status"], c["total_tokens"], c["usage_estimated"], c["stream"]),
                         (200, 7, False, True))
        self.assertGreater(c["ttft_ms"], 0)
        self.assertGreater(c["latency_ms"], c["ttft_ms"] + 500)

    def test_stream_without_upstream_usage_is_estimated(self):
        body = chat_body(stream=True, stream_options={"include_usage": False, "x": 1})
        s = Stream(self.gw, body)
        rid = s.headers["x-request-id"]
        chunks = [json.loads(e["data"]) for _, e in s.events() if e["data"] != "[DONE]"]
        s.close()
        sent = json.loads(self.up.stats()["last_by_path"][CHAT]["body"])
        # The client's choice stands; the gateway counts instead.
        self.assertEqual(sent["stream_options"], {"include_usage": False, "x": 1})
        # ceil(characters / 4): "user" + "hello there" in, the reply out.
        expect = {"prompt_tokens": math.ceil(len("userhello there") / 4),
                  "completion_tokens": math.ceil(len("Mock reply to: hello there") / 4)}
        expect["total_tokens"] = expect["prompt_tokens"] + expect["completion_tokens"]
        expect.update(cost=0, impacts={"kWh": 0, "kgCO2eq": 0})
        self.assertEqual(chunks[-1]["usage"], expect)
        c = self.complete(rid)
        self.assertTrue(c["usage_estimated"])
        self.assertEqual((c["prompt_tokens"], c["completion_tokens"]),
                         (expect["prompt_tokens"], expect["completion_tokens"]))

    def test_stream_options_object_gets_include_usage(self):
        s = Stream(self.gw, chat_body(stream=True, stream_options={}))
        list(s.events())
        s.close()
        sent = json.loads(self.up.stats()["last_by_path"][CHAT]["body"])
        self.assertEqual(sent["stream_options"], {"include_usage": True})

    def test_completions_stream(self):
        s = Stream(self.gw, {"model": "chat", "prompt": "say something", "stream": True},
                   path="/v1/completions")
        self.assertEqual(s.status, 200)
        chunks = [json.loads(e["data"]) for _, e in s.events() if e["data"] != "[DONE]"]
        s.close()
        self.assertEqual(chunks[-1]["object"], "text_completion")
        self.assertEqual(chunks[-1]["usage"]["total_tokens"],
                         chunks[-1]["usage"]["prompt_tokens"] +
                         chunks[-1]["usage"]["completion_tokens"])
        self.assertEqual("".join(c["choices"][0]["text"] for c in chunks[:-1]),
                         "Mock completion for: say something")

    # -- refused before any call --
    def test_redirecting_fields_refused(self):
        raw_bodies = [
            json.dumps(chat_body(api_base="http://127.0.0.1:9/")),
            json.dumps(chat_body(base_url="http://evil.example")),
            json.dumps(chat_body(api_key="sk-stolen")),
            json.dumps(chat_body(extra_headers={"X": "y"})),
            # The same name spelled with an escape.
            '{"model": "chat", "messages": [], "api\\u005fbase": "http://127.0.0.1:9"}',
            # Two spellings of "model": the upstream could read the other.
            '{"model": "chat", "mod\\u0065l": "other", "messages": []}',
        ]
        for raw in raw_bodies:
            r = self.gw.request("POST", CHAT, raw, headers=dict(AUTH, **{
                "Content-Type": "application/json"}))
            self.assertEqual(r.status, 400, raw)
            self.no_call(r.headers["x-request-id"])
        self.assertEqual(self.chat_count(), 0)

    def test_errors_before_the_call(self):
        cases = [
            (chat_body("nope"), 404, "Model nope not found."),
            (chat_body("embed"), 422, "Model has wrong type. Expected: text-generation. "
                                      "Actual: text-embeddings-inference."),
            ({"messages": []}, 422, "body.model: Field required."),
            ({"model": 12, "messages": []}, 422, "body.model: Input should be a valid string."),
            ([1, 2], 422, None),
            ('{"model": "chat",', 400, "byte"),
        ]
        for body, status, detail in cases:
            hdrs = dict(AUTH, **{"Content-Type": "application/json"})
            r = self.gw.request("POST", CHAT, body if isinstance(body, str) else json.dumps(body),
                                headers=hdrs)
            self.assertEqual(r.status, status, (body, r.body))
            if detail:
                self.assertIn(detail, r.json()["detail"])
                self.assertIn(detail, r.json()["error"]["message"])
            self.no_call(r.headers["x-request-id"])
        r = self.gw.request("POST", CHAT, chat_body(), headers={})
        self.assertEqual(r.status, 401)
        self.assertEqual(self.chat_count(), 0)

    # -- upstream errors before the first byte --
    def test_upstream_4xx_passes_through_without_retry(self):
        for stream in (False, True):
            self.settle("f4xx")
            self.fault("status", status=400,
                       body={"error": {"message": "messages are invalid", "code": 400}})
            r = self.post(chat_body("f4xx", stream=stream))
            self.assertEqual(r.status, 400, r.body)
            self.assertEqual(r.json()["detail"], "messages are invalid")
            self.assertEqual(self.chat_count(), 1)
            c = self.complete(r.headers["x-request-id"])
            self.assertEqual(c["status"], 400)
            self.assertIn("400", c["error"])
            self.assertEqual(c["total_tokens"], 0)

    def test_provider_credentials_never_reach_the_client(self):
        # A refusal of llmgate's own key is not the client's problem, and the
        # provider's words quote that key.
        self.settle("f4xx")
        self.fault("status", status=401, body={"error": {
            "message": "Incorrect API key provided: sk-proj-Abc123secret456", "code": 401}})
        r = self.post(chat_body("f4xx"))
        self.assertEqual(r.status, 502, r.body)
        self.assertNotIn(b"Abc123secret456", r.body)
        self.assertIn("credentials", r.json()["detail"])
        # Any other message passed through is scrubbed of key-like words.
        self.settle("f4xx")
        self.fault("status", status=400, body={"error": {
            "message": "bad request for key sk-proj-Abc123secret456 and Bearer tok.en-9", "code": 400}})
        r = self.post(chat_body("f4xx"))
        self.assertEqual(r.status, 400, r.body)
        self.assertNotIn(b"Abc123secret456", r.body)
        self.assertNotIn(b"tok.en-9", r.body)
        self.assertIn("bad request for key sk-", r.json()["detail"])
        self.settle("fraw")
        self.fault("status", status=404, body="nothing for sk-live-ZZZ999zzz", content_type="text/plain")
        r = self.post(chat_body("fraw"))
        self.assertEqual(r.status, 404)
        self.assertNotIn(b"ZZZ999zzz", r.body)

    def test_upstream_raw_error_body_is_the_detail(self):
        self.fault("status", status=404, body="no such thing", content_type="text/plain")
        r = self.post(chat_body("fraw"))
        self.assertEqual((r.status, r.json()["detail"]), (404, "no such thing"))

    def test_5xx_retried_then_its_status(self):
        for stream in (False, True):
            self.settle("f5xx")
            self.fault("status", count=-1, status=503)
            r = self.post(chat_body("f5xx", stream=stream))
            self.assertEqual(r.status, 503, r.body)
            self.assertEqual(r.json()["detail"], "mock upstream fault")
            # The first try and two retries on the only provider.
            self.assertEqual(self.chat_count(), 3)
            c = self.complete(r.headers["x-request-id"])
            self.assertEqual(c["status"], 503)
            self.assertIn("503", c["error"])

    def test_5xx_fails_over_to_the_other_provider(self):
        for stream in (False, True):
            self.up.reset()
            self.up2.reset()
            self.fault("status", count=-1, status=500)
            for _ in range(40):
                before = self.chat_count()
                r = self.post(chat_body("duo", stream=stream))
                self.assertEqual(r.status, 200, r.body)
                if stream:
                    self.assertEqual(r.events()[-1]["data"], "[DONE]")
                c = self.complete(r.headers["x-request-id"])
                self.assertEqual(c["status"], 200)
                if self.chat_count() > before:
                    break
            # The failing provider was tried once, then the other answered.
            self.assertEqual(self.chat_count(), before + 1)
            self.assertGreaterEqual(self.chat_count(self.up2), 1)

    def test_429_retried_and_failed_over(self):
        self.fault("status", count=-1, status=429, retry_after=1,
                   body={"error": {"message": "slow down", "code": 429}})
        r = self.post(chat_body("f429"))
        self.assertEqual((r.status, r.json()["detail"]), (429, "slow down"))
        self.assertEqual(self.chat_count(), 3)
        self.assertEqual(self.complete(r.headers["x-request-id"])["status"], 429)
        self.settle("duo429")
        self.fault("status", count=-1, status=429, retry_after=1)
        for _ in range(40):
            before = self.chat_count()
            r = self.post(chat_body("duo429"))
            self.assertEqual(r.status, 200, r.body)
            if self.chat_count() > before:
                break
        self.assertEqual(self.chat_count(), before + 1)

    def test_429_retry_after_is_honoured(self):
        # A short Retry-After is a floor for the pause before the retry.
        self.settle("f429")
        self.fault("status", count=1, status=429, retry_after=1,
                   body={"error": {"message": "slow down", "code": 429}})
        start = time.monotonic()
        r = self.post(chat_body("f429"))
        self.assertEqual(r.status, 200, r.body)
        self.assertGreaterEqual(time.monotonic() - start, 0.95)
        self.assertEqual(self.chat_count(), 2)
        # A long one is not waited for: the 429 reaches the client at once.
        self.settle("f429")
        self.fault("status", count=-1, status=429, retry_after=60,
                   body={"error": {"message": "come back later", "code": 429}})
        start = time.monotonic()
        r = self.post(chat_body("f429"))
        self.assertEqual((r.status, r.json()["detail"]), (429, "come back later"))
        self.assertLess(time.monotonic() - start, 5)
        self.assertEqual(self.chat_count(), 1)
        self.up.reset()

    def test_first_byte_timeout_is_503(self):
        for stream in (False, True):
            self.settle("fdelay")
            self.fault("delay", count=-1, ms=4000)
            start = time.monotonic()
            r = self.post(chat_body("fdelay", stream=stream))
            self.assertEqual(r.status, 503, r.body)
            self.assertEqual(r.json()["detail"], BUSY)
            self.assertEqual(r.headers["retry-after"], "10")
            # Three attempts, each cut at the 1 s first-byte deadline.
            self.assertGreaterEqual(time.monotonic() - start, 2.5)
            self.assertEqual(self.chat_count(), 3)
            c = self.complete(r.headers["x-request-id"])
            self.assertEqual(c["status"], 503)
            self.assertIn("first byte", c["error"])

    def test_upstream_down_is_503(self):
        r = self.post(chat_body("down"))
        self.assertEqual((r.status, r.json()["detail"]), (503, BUSY))
        self.assertEqual(r.headers["retry-after"], "10")
        c = self.complete(r.headers["x-request-id"])
        self.assertEqual(c["status"], 503)
        self.assertTrue(c["error"])

    def test_circuit_breaker_opens(self):
        self.fault("status", count=-1, status=500)
        first = self.post(chat_body("fragile"))
        self.assertEqual(first.status, 500)
        self.assertEqual(self.chat_count(), 3)
        # Failures 4 and 5 open the breaker: the third attempt is not made.
        second = self.post(chat_body("fragile"))
        self.assertEqual((second.status, second.json()["detail"]), (503, BUSY))
        self.assertEqual(self.chat_count(), 5)
        start = time.monotonic()
        third = self.post(chat_body("fragile"))
        self.assertEqual((third.status, third.json()["detail"]), (503, BUSY))
        self.assertLess(time.monotonic() - start, 3)
        self.assertEqual(self.chat_count(), 5)
        self.assertIn("circuit breaker", self.complete(third.headers["x-request-id"])["error"])

    # -- failures after the first byte --
    def test_reset_mid_stream_is_an_error_event(self):
        self.fault("reset_after", events=3)
        s = Stream(self.gw, chat_body("freset", stream=True))
        self.assertEqual(s.status, 200)
        rid = s.headers["x-request-id"]
        events = [e for _, e in s.events()]
        s.close()
        self.assertGreaterEqual(len(events), 2)
        err = self.assertErrorStream(events, rid)
        self.assertEqual(err["code"], 502)
        # Mid-stream failures are not retried.
        self.assertEqual(self.chat_count(), 1)
        c = self.complete(rid)
        self.assertEqual(c["status"], 200)
        self.assertTrue(c["error"])
        self.assertTrue(c["usage_estimated"])
        self.assertGreater(c["completion_tokens"], 0)

    def test_reset_before_the_body_is_retried(self):
        self.fault("reset_after", count=-1, events=1)
        r = self.post(chat_body("freset2"))
        self.assertEqual((r.status, r.json()["detail"]), (503, BUSY))
        self.assertEqual(self.chat_count(), 3)

    def test_stall_hits_the_idle_timeout(self):
        self.fault("stall", events=3)
        start = time.monotonic()
        s = Stream(self.gw, chat_body("fstall", stream=True))
        rid = s.headers["x-request-id"]
        events = [e for _, e in s.events()]
        s.close()
        self.assertGreaterEqual(time.monotonic() - start, 0.9)
        self.assertErrorStream(events, rid)
        c = self.complete(rid)
        self.assertIn("idle", c["error"])
        # Not streamed: no byte went out yet, so it is retried, then 503.
        self.settle("fstall")
        self.fault("stall", count=-1, events=1)
        r = self.post(chat_body("fstall"))
        self.assertEqual((r.status, r.json()["detail"]), (503, BUSY))
        self.assertEqual(self.chat_count(), 3)

    def test_malformed_upstream(self):
        self.fault("malformed")
        s = Stream(self.gw, chat_body("fmalformed", stream=True))
        rid = s.headers["x-request-id"]
        events = [e for _, e in s.events()]
        s.close()
        self.assertEqual(s.status, 200)
        self.assertErrorStream(events, rid)
        self.assertTrue(self.complete(rid)["error"])
        self.settle("fmalformed")
        self.fault("malformed")
        r = self.post(chat_body("fmalformed"))
        self.assertEqual(r.status, 502, r.body)
        self.assertEqual(self.chat_count(), 1)
        self.assertEqual(self.complete(r.headers["x-request-id"])["status"], 502)

    def test_error_as_first_event_is_a_real_status(self):
        self.fault("error_event", count=-1, code=500, message="engine exploded")
        r = self.post(chat_body("ferror", stream=True))
        self.assertEqual((r.status, r.json()["detail"]), (500, "engine exploded"))
        self.assertNotEqual(r.headers["content-type"], "text/event-stream")
        self.assertEqual(self.chat_count(), 3)
        self.settle("ferror")
        self.fault("error_event", count=-1, code=400, message="bad prompt")
        r = self.post(chat_body("ferror", stream=True))
        self.assertEqual((r.status, r.json()["detail"]), (400, "bad prompt"))
        self.assertEqual(self.chat_count(), 1)
        c = self.complete(r.headers["x-request-id"])
        self.assertEqual(c["status"], 400)
        self.settle("ferror")
        self.fault("error_event", code=422, message="no")
        r = self.post(chat_body("ferror"))
        self.assertEqual((r.status, r.json()["detail"]), (422, "no"))

    def test_ten_megabyte_event_relayed(self):
        self.fault("big_event", bytes=TEN_MB)
        s = Stream(self.gw, chat_body("fbig", stream=True), timeout=60)
        rid = s.headers["x-request-id"]
        # A slow reader: far more than the high-water mark waits for us, so
        # the gateway pauses the upstream, and resumes it as we catch up.
        time.sleep(1)
        events = [e for _, e in s.events()]
        s.close()
        datas = [e["data"] for e in events]
        self.assertEqual(datas[-1], "[DONE]")
        big = [json.loads(d) for d in datas if len(d) > TEN_MB]
        self.assertEqual(len(big), 1)
        self.assertEqual(big[0]["choices"][0]["delta"]["content"], "x" * TEN_MB)
        self.assertEqual(big[0]["id"], rid)
        self.assertEqual(self.complete(rid)["status"], 200)
        self.up.reset()
        self.fault("big_event", bytes=TEN_MB)
        r = self.post(chat_body("fbig"), timeout=60)
        self.assertEqual(r.status, 200)
        self.assertEqual(len(r.json()["mock_padding"]), TEN_MB)

    def test_client_disconnect_cancels_the_upstream(self):
        self.fault("endless", up=self.up3, interval_ms=5)
        s = Stream(self.gw, chat_body("fgone", stream=True))
        rid = s.headers["x-request-id"]
        s.piece()
        s.piece()
        closed_at = time.monotonic()
        s.close()
        st = self.up3.wait_stats(lambda st: st["aborted"] >= 1, timeout=5)
        self.assertGreaterEqual(st["aborted"], 1)
        self.assertLess(time.monotonic() - closed_at, 5)
        c = self.complete(rid)
        self.assertTrue(c["client_gone"])
        self.assertEqual(c["status"], 200)
        # The same before the first byte (a reply that never ends).
        self.up3.reset()
        self.fault("endless", up=self.up3, interval_ms=5)
        sock = socket.create_connection((self.gw.host, self.gw.port))
        payload = json.dumps(chat_body("fgone")).encode()
        sock.sendall(("POST %s HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer good-token\r\n"
                      "Content-Type: application/json\r\nContent-Length: %d\r\n\r\n"
                      % (CHAT, len(payload))).encode() + payload)
        self.up3.wait_stats(lambda st: st["by_path"].get(CHAT, 0) >= 1)
        sock.close()
        st = self.up3.wait_stats(lambda st: st["aborted"] >= 1, timeout=5)
        self.assertGreaterEqual(st["aborted"], 1, st)
        deadline = time.monotonic() + 5
        while True:
            calls = self.gw.request("GET", "/recorder/calls").json()["calls"]
            gone = [c for c in calls if c["phase"] == "complete" and c["client_gone"] and
                    c["status"] == 499]
            if gone or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        self.assertEqual(len(gone), 1, calls)

    def test_redirect_not_followed(self):
        trap = MockUpstream(models=UPSTREAM_MODELS).start()
        try:
            self.fault("redirect", location=trap.url + CHAT, status=307)
            r = self.post(chat_body("fredirect"))
            self.assertEqual(r.status, 502, r.body)
            self.assertEqual(self.chat_count(), 1)
            self.assertEqual(trap.stats()["requests"], 0)
            self.assertEqual(self.complete(r.headers["x-request-id"])["status"], 502)
        finally:
            self.assertEqual(trap.close(), 0)

    # -- the concurrency cap and the strategies --
    def test_capped_provider_waits_for_a_slot(self):
        self.fault("delay", ms=700)
        results = {}

        def first():
            results["a"] = self.post(chat_body("capped"))

        t = threading.Thread(target=first)
        t.start()
        self.up.wait_stats(lambda st: st["by_path"].get(CHAT, 0) >= 1)
        start = time.monotonic()
        b = self.post(chat_body("capped"))
        waited = time.monotonic() - start
        t.join()
        self.assertEqual(results["a"].status, 200)
        self.assertEqual(b.status, 200, b.body)
        # B went upstream only after A gave its slot back.
        self.assertGreater(waited, 0.3)
        self.assertEqual(self.chat_count(), 2)

    def test_capped_provider_wait_times_out(self):
        self.fault("endless", interval_ms=20)
        holder = Stream(self.gw, chat_body("capped", stream=True))
        self.assertEqual(holder.status, 200)
        holder.piece()
        start = time.monotonic()
        r = self.post(chat_body("capped"))
        elapsed = time.monotonic() - start
        holder.close()
        self.assertEqual((r.status, r.json()["detail"]), (503, BUSY))
        self.assertEqual(r.headers["retry-after"], "10")
        # The wait is bounded by the provider's first-byte timeout (3 s).
        self.assertGreater(elapsed, 2.5)
        self.assertLess(elapsed, 15)
        self.assertEqual(self.chat_count(), 1)
        c = self.complete(r.headers["x-request-id"])
        self.assertEqual(c["status"], 503)
        self.assertIn("slot", c["error"])

    def test_client_leaving_while_waiting_gives_no_slot_away(self):
        self.fault("endless", interval_ms=20)
        holder = Stream(self.gw, chat_body("capped", stream=True))
        holder.piece()
        waiter = socket.create_connection((self.gw.host, self.gw.port))
        payload = json.dumps(chat_body("capped")).encode()
        waiter.sendall(("POST %s HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer good-token\r\n"
                        "Content-Type: application/json\r\nContent-Length: %d\r\n\r\n"
                        % (CHAT, len(payload))).encode() + payload)
        time.sleep(0.3)
        waiter.close()
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            calls = self.gw.request("GET", "/recorder/calls").json()["calls"]
            gone = [c for c in calls if c["phase"] == "complete" and c["status"] == 499]
            if gone:
                break
            time.sleep(0.05)
        self.assertEqual(len(gone), 1, calls)
        self.assertTrue(gone[0]["client_gone"])
        holder.close()
        # The slot came back once, and only once: one call at a time again.
        self.up.wait_stats(lambda st: st["aborted"] >= 1)
        r = self.post(chat_body("capped"))
        self.assertEqual(r.status, 200, r.body)
        self.fault("delay", ms=600)
        results = []
        threads = [threading.Thread(target=lambda: results.append(
            self.post(chat_body("capped")))) for _ in range(2)]
        start = time.monotonic()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        self.assertEqual([r.status for r in results], [200, 200])
        # One waited for the other's 600 ms.
        self.assertGreater(time.monotonic() - start, 0.55)
        self.assertEqual(self.chat_count(), 4)

    def test_least_busy_spreads_load(self):
        self.up.config(event_delay_ms=200)
        self.up2.config(event_delay_ms=200)
        a = Stream(self.gw, chat_body("spread", stream=True))
        events_a = a.events()
        next(events_a)
        b = Stream(self.gw, chat_body("spread", stream=True))
        list(b.events())
        list(events_a)
        a.close()
        b.close()
        # The second went to the provider with nothing in flight.
        self.assertEqual((self.chat_count(), self.chat_count(self.up2)), (1, 1))
        ca = self.complete(a.headers["x-request-id"])
        cb = self.complete(b.headers["x-request-id"])
        self.assertNotEqual(ca["provider_id"], cb["provider_id"])

    # -- a provider type that answers in-process (serve) --
    def test_served_in_process(self):
        r = self.post(chat_body("inproc"))
        self.assertEqual(r.status, 200, r.body)
        reply = r.json()
        self.assertEqual(reply["model"], "inproc")
        self.assertTrue(reply["choices"][0]["message"]["content"].startswith(
            "This is a mock reply to: hello there"), reply)
        self.assertEqual(reply["usage"]["total_tokens"],
                         reply["usage"]["prompt_tokens"] + reply["usage"]["completion_tokens"])
        c = self.complete(r.headers["x-request-id"])
        self.assertEqual((c["status"], c["provider_type"], c["provider_model"]),
                         (200, "mock", "mock-model"))
        s = Stream(self.gw, chat_body("inproc", stream=True))
        rid = s.headers["x-request-id"]
        timed = list(s.events())
        s.close()
        datas = [e["data"] for _, e in timed]
        self.assertEqual(datas.count("[DONE]"), 1)
        chunks = [json.loads(d) for d in datas[:-1]]
        self.assertTrue(all(ch["id"] == rid and ch["model"] == "inproc" for ch in chunks))
        self.assertEqual(len([ch for ch in chunks if ch.get("usage")]), 1)
        # Pieces 100 ms apart arrive as they are served.
        self.assertGreater(timed[-2][0] - timed[0][0], 0.3)
        self.assertEqual(self.chat_count(), 0)
        c = self.complete(rid)
        self.assertEqual((c["status"], c["usage_estimated"]), (200, False))
        self.assertGreater(c["ttft_ms"], 0)

    def test_served_call_cancelled_when_the_client_leaves(self):
        s = Stream(self.gw, chat_body("inproc", stream=True))
        rid = s.headers["x-request-id"]
        s.piece()
        s.close()
        c = self.complete(rid)
        self.assertTrue(c["client_gone"])
        self.assertEqual(c["status"], 200)
        self.assertTrue(c["usage_estimated"])

    # -- the other endpoints --
    def test_embeddings_forwarded(self):
        r = self.post({"model": "embed", "input": ["one two", "three"]}, path="/v1/embeddings")
        self.assertEqual(r.status, 200, r.body)
        reply = r.json()
        self.assertEqual(reply["model"], "embed")
        self.assertEqual(len(reply["data"]), 2)
        self.assertEqual(reply["usage"]["prompt_tokens"], 3)
        self.assertEqual(reply["usage"]["total_tokens"], 3)
        sent = json.loads(self.up.stats()["last_by_path"]["/v1/embeddings"]["body"])
        self.assertEqual(sent["model"], "up-embed")
        c = self.complete(r.headers["x-request-id"])
        self.assertEqual((c["status"], c["endpoint"], c["prompt_tokens"]),
                         (200, "/v1/embeddings", 3))

    def test_rerank_forwarded(self):
        r = self.post({"model": "rank", "query": "red apple",
                       "documents": ["a red car", "green apple pie", "red apple"]},
                      path="/v1/rerank")
        self.assertEqual(r.status, 200, r.body)
        reply = r.json()
        self.assertEqual(reply["model"], "rank")
        best = max(reply["results"], key=lambda x: x["relevance_score"])
        self.assertEqual(best["index"], 2)
        self.assertIn("id", reply)
        sent = json.loads(self.up.stats()["last_by_path"]["/v1/rerank"]["body"])
        self.assertEqual(sent["model"], "up-rerank")
        self.assertEqual(self.complete(r.headers["x-request-id"])["endpoint"], "/v1/rerank")

    def test_transcription_forwarded(self):
        boundary = "llmgate-test-boundary"

        def form(fields):
            out = b""
            for name, value, filename in fields:
                out += b"--" + boundary.encode() + b"\r\n"
                disp = 'form-data; name="%s"' % name
                if filename:
                    disp += '; filename="%s"' % filename
                out += b"Content-Disposition: " + disp.encode() + b"\r\n"
                if filename:
                    out += b"Content-Type: audio/wav\r\n"
                out += b"\r\n" + value + b"\r\n"
            return out + b"--" + boundary.encode() + b"--\r\n"

        hdrs = dict(AUTH, **{"Content-Type": "multipart/form-data; boundary=" + boundary})
        audio = b"RIFF fake wave data\r\n--not-the-boundary"
        r = self.gw.request("POST", "/v1/audio/transcriptions",
                            form([("model", b"asr", None), ("file", audio, "a.wav"),
                                  ("language", b"fr", None)]), headers=hdrs)
        self.assertEqual(r.status, 200, r.body)
        self.assertEqual(r.json()["text"], "mock transcription")
        self.assertEqual(r.json()["model"], "asr")
        sent = self.up.stats()["last_by_path"]["/v1/audio/transcriptions"]
        self.assertIn('name="model"\r\n\r\nup-asr\r\n', sent["body"])
        self.assertIn("fake wave data", sent["body"])
        self.assertEqual(self.complete(r.headers["x-request-id"])["status"], 200)
        r = self.gw.request("POST", "/v1/audio/transcriptions",
                            form([("model", b"asr", None)]), headers=hdrs)
        self.assertEqual((r.status, r.json()["detail"]), (422, "body.file: Field required."))
        r = self.gw.request("POST", "/v1/audio/transcriptions",
                            form([("file", audio, "a.wav")]), headers=hdrs)
        self.assertEqual((r.status, r.json()["detail"]), (422, "body.model: Field required."))
        r = self.gw.request("POST", "/v1/audio/transcriptions", b"--x\r\nbroken",
                            headers=dict(AUTH, **{"Content-Type": "multipart/form-data; "
                                                  "boundary=x"}))
        self.assertEqual(r.status, 400)
        self.assertEqual(self.chat_count(), 0)


class Shutdown(unittest.TestCase):
    """SIGTERM while a stream is relayed: the stream is cut at the drain
    deadline and the server exits cleanly (no leak or use after free in the
    sanitizer build)."""

    def test_sigterm_during_a_stream(self):
        with PgCluster() as pg, MockUpstream(models=UPSTREAM_MODELS) as up:
            cfg = {"server": {"listen": ["127.0.0.1:0"], "drain_timeout": "1s"},
                   "plugins": {"good": {}, "recorder": {}, "openai": {}},
                   "models": [{"name": "chat", "type": "text-generation",
                               "providers": [provider(up, idle_timeout="30s")]}]}
            gw = lgtest.Gateway(cfg, pg=pg,
                                env={"LLMGATE_PLUGIN_PATH": common.test_plugins_path()})
            with gw:
                up.fault("endless", count=-1, path=CHAT, interval_ms=20)
                streams = [Stream(gw, chat_body(stream=True)) for _ in range(3)]
                for st in streams:
                    self.assertEqual(st.status, 200)
                    st.piece()
                gw.send_signal(signal.SIGTERM)
                self.assertEqual(gw.wait(20), 0, gw.log()[-4000:])
                for st in streams:
                    st.close()
            up.wait_stats(lambda s: s["aborted"] >= 3)
            self.assertGreaterEqual(up.stats()["aborted"], 3)


class HookPhases(GatewayCase):
    """AUTHORIZE answering, and hooks that answer later (PENDING)."""
    recorder = {"deny_model": "denied", "pending_ms": 30}

    @staticmethod
    def make_models(up, up2, up3):
        return [
            {"name": "chat", "type": "text-generation", "providers": [provider(up)]},
            {"name": "denied", "type": "text-generation", "providers": [provider(up)]},
        ]

    def test_authorize_refusal_still_completes(self):
        r = self.post(chat_body("denied"))
        self.assertEqual((r.status, r.json()["detail"]), (403, "Access denied by the recorder."))
        self.assertEqual(self.chat_count(), 0)
        c = self.complete(r.headers["x-request-id"])
        self.assertEqual(c["status"], 0)
        self.assertIn("AUTHORIZE", c["error"])
        self.assertEqual(c["provider_id"], 0)

    def test_pending_hooks_resume(self):
        for stream in (False, True):
            r = self.post(chat_body(stream=stream))
            self.assertEqual(r.status, 200, r.body)
            rid = r.headers["x-request-id"]
            self.assertEqual(len(self.records(rid, "authorize")), 1)
            c = self.complete(rid)
            self.assertEqual((c["status"], c["total_tokens"]), (200, 7))


if __name__ == "__main__":
    lgtest.main()
