#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""The host calls of ABI 1.1 end to end, through the caller test plugin on
the real server: model_call() (a plugin calls a model of the registry),
req_form() (multipart bodies), call_set_body() and call_reply_member()
(PRE_UPSTREAM and AUTHORIZE hooks rewrite a call and add to its reply)."""
import errno
import json
import unittest

import common
import lgtest
from mock import MockUpstream
from pgcluster import PgCluster

AUTH = {"Authorization": "Bearer good-token"}
COST_PROMPT = 2.0       # per million tokens
COST_COMPLETION = 4.0
BOUNDARY = "xYzBoundary42"


def multipart(parts, boundary=BOUNDARY):
    """@parts: (name, filename or None, content type or None, bytes)."""
    out = b""
    for name, filename, ctype, data in parts:
        disp = 'form-data; name="%s"' % name
        if filename is not None:
            disp += '; filename="%s"' % filename
        out += b"--" + boundary.encode() + b"\r\nContent-Disposition: " + disp.encode() + b"\r\n"
        if ctype:
            out += b"Content-Type: " + ctype.encode() + b"\r\n"
        out += b"\r\n" + data + b"\r\n"
    return out + b"--" + boundary.encode() + b"--\r\n"


def form_headers(boundary=BOUNDARY):
    return dict(AUTH, **{"Content-Type": "multipart/form-data; boundary=" + boundary})


class HostCallsCase(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.pg = PgCluster().start()
        cls.up = MockUpstream(models=["up-chat"]).start()
        models = [
            {"name": "m-chat", "type": "text-generation",
             "cost_prompt_tokens": COST_PROMPT, "cost_completion_tokens": COST_COMPLETION,
             "providers": [{"type": "mock", "model_name": "mock-chat"}]},
            {"name": "m-embed", "type": "text-embeddings-inference", "aliases": ["embed-alias"],
             "cost_prompt_tokens": COST_PROMPT,
             "providers": [{"type": "mock", "model_name": "mock-embeddings"}]},
            {"name": "m-denied", "type": "text-embeddings-inference",
             "providers": [{"type": "mock", "model_name": "mock-embeddings"}]},
            {"name": "m-asr", "type": "automatic-speech-recognition",
             "providers": [{"type": "mock", "model_name": "mock-asr"}]},
            {"name": "u-chat", "type": "text-generation",
             "providers": [{"type": "openai", "url": cls.up.url, "model_name": "up-chat",
                            "timeout": 30, "first_byte_timeout": "2s",
                            "idle_timeout": "2s"}]},
        ]
        # The recorder's AUTHORIZE and COMPLETE hooks answer later (PENDING),
        # and its AUTHORIZE refuses m-denied with a 403 of its own.
        cfg = {"plugins": {"good": {}, "caller": {}, "mock": {}, "openai": {},
                           "recorder": {"pending_ms": 20, "deny_model": "m-denied"}},
               "models": models}
        common.start_class_gateway(cls, cfg)

    @classmethod
    def tearDownClass(cls):
        common.stop_class_gateway(cls)

    def setUp(self):
        self.up.reset()
        self.assertEqual(self.gw.request("POST", "/caller/reset").status, 200)

    # -- helpers --
    def call(self, endpoint, body=None, raw=None, as_user=None, admin=False):
        """model_call() through the plugin: (rc, status, reply body text, error)."""
        req = {"endpoint": endpoint}
        if raw is not None:
            req["raw"] = raw
        else:
            req["body"] = body
        if as_user is not None:
            req["as"] = as_user
            req["admin"] = admin
        r = self.gw.request("POST", "/caller/call", req, headers=AUTH, timeout=30)
        self.assertEqual(r.status, 200, r.body)
        out = r.json()
        if out["rc"] == 0:
            self.assertFalse(out["inside"], "done ran inside model_call()")
        return out

    def completes(self):
        return self.gw.request("GET", "/caller/completes").json()["calls"]

    def post(self, path, body, headers=None, timeout=30):
        return self.gw.request("POST", path, body, headers=dict(AUTH, **(headers or {})),
                               timeout=timeout)

    # -- blocking database calls --
    def test_blocking_database_calls_refused_on_a_worker(self):
        """db_query_sync() and db_copy_sync() on a worker would stall every
        request it holds: refused with -EPERM and logged; a bad bulk load
        is -EINVAL."""
        r = self.gw.request("GET", "/caller/db-sync")
        self.assertEqual(r.status, 200, r.body)
        out = r.json()
        self.assertEqual((out["query"], out["copy"], out["invalid"]),
                         (-errno.EPERM, -errno.EPERM, -errno.EINVAL), out)
        self.assertFalse(out["results"])
        self.assertEqual(out["query_error"], "db_query_sync on a worker: use db_query")
        self.assertEqual(out["copy_error"], "db_copy_sync on a worker: use db_copy")
        self.assertTrue(self.gw.wait_log(r"db_copy_sync called on a worker: refused", 5))
        # The server is still serving.
        self.assertEqual(self.gw.request("GET", "/health").status, 200)

    # -- model_call() --
    def test_embeddings_by_alias(self):
        out = self.call("/v1/embeddings", {"model": "embed-alias",
                                           "input": ["a cat sat", "a dog ran"]}, as_user=7)
        self.assertEqual(out["status"], 200, out)
        self.assertIsNone(out["error"])
        reply = json.loads(out["body"])
        self.assertEqual(reply["model"], "embed-alias")
        self.assertEqual(len(reply["data"]), 2)
        self.assertTrue(all(isinstance(x, float) for x in reply["data"][0]["embedding"]))
        usage = reply["usage"]
        self.assertGreater(usage["prompt_tokens"], 0)
        self.assertEqual(usage["cost"],
                         round(usage["prompt_tokens"] / 1e6 * COST_PROMPT, 6))
        # COMPLETE ran once, for user 7, on a request without headers.
        recs = [c for c in self.completes() if c["endpoint"] == "/v1/embeddings"]
        self.assertEqual(len(recs), 1, recs)
        rec = recs[0]
        self.assertEqual(rec["status"], 200)
        self.assertEqual(rec["user_id"], 7)
        self.assertEqual((rec["method"], rec["path"]), ("POST", "/v1/embeddings"))
        self.assertFalse(rec["has_authorization"])
        self.assertTrue(rec["request_id"].startswith("caller-"), rec)
        self.assertEqual(rec["req_id"], rec["request_id"])
        self.assertEqual(rec["prompt_tokens"], usage["prompt_tokens"])

    def test_chat(self):
        out = self.call("/v1/chat/completions",
                        {"model": "m-chat", "messages": [{"role": "user", "content": "hi there"}]})
        self.assertEqual(out["status"], 200, out)
        reply = json.loads(out["body"])
        self.assertEqual(reply["model"], "m-chat")
        self.assertIn("hi there", reply["choices"][0]["message"]["content"])
        usage = reply["usage"]
        self.assertEqual(usage["cost"], round(usage["prompt_tokens"] / 1e6 * COST_PROMPT +
                                              usage["completion_tokens"] / 1e6 * COST_COMPLETION,
                                              6))
        recs = self.completes()
        self.assertEqual(len(recs), 1, recs)
        self.assertIsNone(recs[0]["user_id"])   # the plugin's own call

    def test_unknown_model(self):
        out = self.call("/v1/embeddings", {"model": "nope", "input": "x"}, as_user=7)
        self.assertEqual(out["status"], 404)
        err = json.loads(out["body"])
        self.assertEqual(err["detail"], "Model nope not found.")
        self.assertEqual(err["error"]["code"], 404)
        self.assertEqual(self.completes(), [])   # no call, no COMPLETE

    def test_wrong_type(self):
        out = self.call("/v1/embeddings", {"model": "m-chat", "input": "x"})
        self.assertEqual(out["status"], 422)
        self.assertEqual(json.loads(out["body"])["detail"],
                         "Model has wrong type. Expected: text-embeddings-inference. "
                         "Actual: text-generation.")

    def test_access_refused_for_principal(self):
        body = {"model": "m-embed", "input": "x"}
        out = self.call("/v1/embeddings", body, as_user=99)
        self.assertEqual(out["status"], 404)
        self.assertEqual(json.loads(out["body"])["detail"], "Model m-embed not found.")
        # The same user as an admin, and the plugin itself, see every model.
        self.assertEqual(self.call("/v1/embeddings", body, as_user=99, admin=True)["status"],
                         200)
        self.assertEqual(self.call("/v1/embeddings", body)["status"], 200)

    def test_authorize_hook_answers(self):
        out = self.call("/v1/embeddings", {"model": "m-denied", "input": "x"}, as_user=7)
        self.assertEqual(out["status"], 403, out)
        self.assertEqual(json.loads(out["body"])["detail"], "Access denied by the recorder.")
        recs = self.completes()
        self.assertEqual(len(recs), 1, recs)
        self.assertEqual(recs[0]["status"], 0)      # a hook answered
        self.assertEqual(recs[0]["error"], "answered by an AUTHORIZE hook")

    def test_stream_refused(self):
        out = self.call("/v1/chat/completions",
                        {"model": "m-chat", "stream": True,
                         "messages": [{"role": "user", "content": "hi"}]})
        self.assertEqual(out["status"], 400)
        self.assertIn("not streamed", json.loads(out["body"])["detail"])

    def test_bad_requests(self):
        # Not a forwarding endpoint, or a multipart one: refused at once.
        self.assertEqual(self.call("/v1/nope", {"model": "m-chat"})["rc"], -22)
        self.assertEqual(self.call("/v1/audio/transcriptions", {"model": "m-asr"})["rc"], -22)
        # A body that is not JSON: the 400 a client would get.
        out = self.call("/v1/embeddings", raw="{not json")
        self.assertEqual(out["status"], 400)
        self.assertIn("detail", json.loads(out["body"]))
        out = self.call("/v1/embeddings", {"input": "x"})
        self.assertEqual(out["status"], 422)

    def test_upstream_failure(self):
        self.up.fault("status", count=-1, status=500,
                      body=json.dumps({"error": {"message": "boom"}}))
        try:
            out = self.call("/v1/chat/completions",
                            {"model": "u-chat", "messages": [{"role": "user", "content": "x"}]})
        finally:
            self.up.reset()
        self.assertEqual(out["status"], 500, out)
        self.assertEqual(json.loads(out["body"])["detail"], "boom")
        # Retried as a client's call is: three attempts.
        recs = self.completes()
        self.assertEqual(len(recs), 1, recs)
        self.assertEqual(recs[0]["status"], 500)

    # -- req_form() --
    def test_form_parts(self):
        data = bytes(range(1, 200))
        body = multipart([("title", None, None, b"My doc"),
                          ("file", "notes.txt", "text/plain", b"line one\r\nline two"),
                          ("blob", "b.bin", "application/octet-stream", b"abc\r\n--not-it"),
                          ("empty", None, None, b"")])
        r = self.gw.request("POST", "/caller/form", body, headers=form_headers())
        self.assertEqual(r.status, 200, r.body)
        parts = r.json()["parts"]
        self.assertEqual([p["name"] for p in parts], ["title", "file", "blob", "empty"])
        self.assertEqual(parts[0], {"name": "title", "filename": None, "content_type": None,
                                    "data": "My doc", "size": 6})
        self.assertEqual(parts[1]["filename"], "notes.txt")
        self.assertEqual(parts[1]["content_type"], "text/plain")
        self.assertEqual(parts[1]["data"], "line one\r\nline two")
        self.assertEqual(parts[2]["data"], "abc\r\n--not-it")
        self.assertEqual(parts[3]["size"], 0)
        # Binary data keeps its size.
        r = self.gw.request("POST", "/caller/form",
                            multipart([("raw", "x.bin", None, data + b"\xff\x00")]),
                            headers=form_headers())
        self.assertEqual(r.status, 200, r.body)
        self.assertEqual(r.json()["parts"][0]["size"], len(data) + 2)

    def test_form_refused(self):
        cases = [
            (b"whatever", {"Content-Type": "application/json"}, "boundary of 1 to 70"),
            (b"--xYzBoundary42\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\nno end",
             None, "malformed"),
            (b"garbage without delimiter", None, "malformed"),
            (multipart([("p%d" % i, None, None, b"v") for i in range(65)]), None,
             "more than 64 parts"),
        ]
        for body, headers, message in cases:
            r = self.gw.request("POST", "/caller/form", body,
                                headers=dict(AUTH, **headers) if headers else form_headers())
            self.assertEqual(r.status, 400, (message, r.body))
            self.assertIn(message, r.json()["detail"])
        r = self.gw.request("POST", "/caller/form",
                            multipart([("p%d" % i, None, None, b"v") for i in range(64)]),
                            headers=form_headers())
        self.assertEqual(r.status, 200, r.body)
        self.assertEqual(len(r.json()["parts"]), 64)

    def test_transcriptions_use_the_shared_reader(self):
        body = multipart([("model", None, None, b"m-asr"),
                          ("file", "a.wav", "audio/wav", b"RIFF....WAVE")])
        r = self.gw.request("POST", "/v1/audio/transcriptions", body, headers=form_headers())
        self.assertEqual(r.status, 200, r.body)
        self.assertIn("text", r.json())
        r = self.gw.request("POST", "/v1/audio/transcriptions",
                            multipart([("model", None, None, b"m-asr")]), headers=form_headers())
        self.assertEqual(r.status, 422)
        self.assertEqual(r.json()["detail"], "body.file: Field required.")
        r = self.gw.request("POST", "/v1/audio/transcriptions", b"--x\r\nbroken",
                            headers=form_headers("x"))
        self.assertEqual(r.status, 400)
        self.assertIn("malformed", r.json()["detail"])

    # -- call_set_body() and call_reply_member() --
    def chat(self, stream=False, headers=None, model="u-chat"):
        body = {"model": model, "messages": [{"role": "user", "content": "tell me"}]}
        if stream:
            body["stream"] = True
        return self.post("/v1/chat/completions", body, headers)

    def upstream_body(self):
        return json.loads(self.up.stats()["last_request"]["body"])

    def test_set_body_non_stream(self):
        r = self.chat(headers={"X-Caller-System": "Answer briefly."})
        self.assertEqual(r.status, 200, r.body)
        sent = self.upstream_body()
        self.assertEqual(sent["model"], "up-chat")
        self.assertEqual(sent["messages"], [{"role": "user", "content": "tell me"},
                                            {"role": "system", "content": "Answer briefly."}])
        self.assertEqual(r.json()["model"], "u-chat")
        # Without the header the body goes as the client sent it.
        self.assertEqual(self.chat().status, 200)
        self.assertEqual(len(self.upstream_body()["messages"]), 1)

    def test_set_body_stream(self):
        r = self.chat(stream=True, headers={"X-Caller-System": "Answer briefly."})
        self.assertEqual(r.status, 200, r.body)
        sent = self.upstream_body()
        self.assertEqual(sent["messages"][-1], {"role": "system", "content": "Answer briefly."})
        self.assertEqual(sent["stream_options"], {"include_usage": True})
        self.assertEqual(sent["model"], "up-chat")
        events = r.events()
        self.assertEqual(events[-1]["data"], "[DONE]")
        self.assertIn("usage", r.data()[-1])

    def test_set_body_refused(self):
        # Not an object, or one that changes "stream": refused, the call goes on.
        for bad in ["[1, 2]", '{"model": "u-chat", "stream": true, "messages": []}', "{oops"]:
            r = self.chat(headers={"X-Caller-Bad-Body": bad})
            self.assertEqual(r.status, 200, (bad, r.body))
            self.assertEqual(self.upstream_body()["messages"][0]["content"], "tell me")

    def test_reply_member_non_stream(self):
        r = self.chat(headers={"X-Caller-Member": '{"hits": [1, 2]}',
                               "X-Caller-Authorize": '"yes"'})
        self.assertEqual(r.status, 200, r.body)
        reply = r.json()
        self.assertEqual(reply["search_results"], {"hits": [1, 2]})
        self.assertEqual(reply["authorized"], "yes")
        self.assertIn("cost", reply["usage"])
        self.assertEqual(reply["model"], "u-chat")
        # The in-process provider's replies too.
        r = self.chat(model="m-chat", headers={"X-Caller-Member": "[]"})
        self.assertEqual(r.status, 200, r.body)
        self.assertEqual(r.json()["search_results"], [])

    def test_reply_member_stream(self):
        r = self.chat(stream=True, headers={"X-Caller-Member": '{"hits": [3]}'})
        self.assertEqual(r.status, 200, r.body)
        events = r.data()
        self.assertGreater(len(events), 2)
        self.assertEqual(events[0]["search_results"], {"hits": [3]})
        self.assertTrue(all("search_results" not in e for e in events[1:]), events)

    def test_reply_member_refused(self):
        r = self.chat(headers={"X-Caller-Member": "{not json"})
        self.assertEqual(r.status, 500)
        self.assertIn("the hook failed", r.json()["detail"])


if __name__ == "__main__":
    unittest.main(verbosity=2)
