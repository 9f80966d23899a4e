#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""GET /metrics (the usage plugin): well-formed Prometheus text whose
counters, histograms and sums add up to the calls made from several
threads on several workers, checked against the replies and the ledger's
rows; who may read it; the settings that turn it or the ledger off."""
import contextlib
import re
import shutil
import tempfile
import threading
import time
import unittest
import uuid

import common
import lgtest
from pgcluster import PgCluster
from test_usage import Locker, wait_rows

MASTER = "master-key-for-usage-tests-5c1e"
AUTH = {"Authorization": "Bearer " + MASTER}
USER7 = {"Authorization": "Bearer good-token"}      # the good test plugin: no permission
ADMIN1 = {"Authorization": "Bearer good-admin"}     # LG_PERM_ADMIN
CHAT = "/v1/chat/completions"
EMBEDDINGS = "/v1/embeddings"
BUCKETS = ["0.05", "0.1", "0.25", "0.5", "1", "2.5", "5", "10", "30", "60", "120", "300",
           "+Inf"]

NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
LABEL = r'[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\[\\"n])*"'
SAMPLE_RE = re.compile(r"^(%s)(?:\{(%s(?:,%s)*)\})? (\S+)$" % (NAME, LABEL, LABEL))
LABEL_RE = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\[\\"n])*)"')


def models():
    return [
        {"name": "priced", "type": "text-generation", "cost_prompt_tokens": 2.5,
         "cost_completion_tokens": 10.0,
         "providers": [{"type": "mock", "model_name": "mock-model", "model_total_params": 140,
                        "model_active_params": 35, "model_hosting_zone": "FRA"}]},
        {"name": "embed", "type": "text-embeddings-inference", "cost_prompt_tokens": 130.0,
         "providers": [{"type": "mock", "model_name": "mock-embed"}]},
        {"name": "down", "type": "text-generation", "providers": [
            {"type": "openai", "url": "http://127.0.0.1:1", "model_name": "gone"}]},
    ]


def config(journal, **usage):
    usage = dict({"journal_dir": journal}, **usage)
    return {"server": {"workers": 2},
            "plugins": {"auth": {"master_key": MASTER}, "good": {},
                        "mock": {"stream_delay": "5ms"}, "openai": {}, "usage": usage},
            "models": models()}


def parse(text):
    """{(name, frozenset(labels)): value}; fails on any line that is not
    Prometheus text, or a sample whose family has no TYPE before it."""
    types = {}
    samples = {}
    for line in text.splitlines():
        if line.startswith("# HELP "):
            continue
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            assert kind in ("counter", "gauge", "histogram"), line
            assert name not in types, "two TYPE lines for " + name
            types[name] = kind
            continue
        m = SAMPLE_RE.match(line)
        assert m, "not a sample: %r" % line
        name, labels, value = m.groups()
        family = re.sub(r"_(bucket|sum|count)$", "", name)
        assert name in types or types.get(family) == "histogram", "no TYPE for " + line
        key = (name, frozenset(LABEL_RE.findall(labels or "")))
        assert key not in samples, "twice: " + line
        samples[key] = float(value)
    return samples


def value(samples, name, **labels):
    return samples.get((name, frozenset(labels.items())))


class Metrics(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.pg = PgCluster().start()

    @classmethod
    def tearDownClass(cls):
        cls.pg.destroy()

    def setUp(self):
        self.prefix = "m%s-" % uuid.uuid4().hex[:12]
        self.journal = tempfile.mkdtemp(prefix="llmgate-usage-journal-")
        self.addCleanup(shutil.rmtree, self.journal, True)

    @contextlib.contextmanager
    def gateway(self, cfg=None):
        """A running gateway that must exit cleanly (status 0: no leak or
        error reported by the sanitizers) when the test is done with it."""
        with lgtest.Gateway(cfg or config(self.journal), pg=self.pg,
                            env={"LLMGATE_PLUGIN_PATH": common.test_plugins_path()}) as g:
            yield g
            self.assertEqual(g.stop(30), 0, g.log()[-4000:])

    def scrape(self, g, headers=AUTH):
        r = g.request("GET", "/metrics", headers=headers)
        self.assertEqual(r.status, 200, r.body)
        self.assertTrue(r.headers["content-type"].startswith("text/plain; version=0.0.4"))
        return parse(r.text)

    def calls(self, g):
        """100 chat calls from 4 threads (28 streamed), 5 embeddings,
        3 calls to a provider that is down; returns the successful replies'
        usage and the streamed calls' count."""
        usages, lock = [], threading.Lock()
        errors = []

        def send(k):
            for i in range(25):
                body = {"model": "priced", "messages": [{"role": "user",
                                                         "content": "hello " * (i + 1)}]}
                if i % 4 == 0:
                    body["stream"] = True
                    body["stream_options"] = {"include_usage": True}
                r = g.request("POST", CHAT, body=body, headers=dict(
                    AUTH, **{"X-Request-Id": "%s%d-%d" % (self.prefix, k, i)}), timeout=30)
                if r.status != 200:
                    errors.append(r)
                    continue
                u = ([c for c in r.data() if c.get("usage")][-1]["usage"] if i % 4 == 0
                     else r.json()["usage"])
                with lock:
                    usages.append(u)
        threads = [threading.Thread(target=send, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        self.assertEqual(errors, [])
        embeddings = []
        for i in range(5):
            r = g.request("POST", EMBEDDINGS, body={"model": "embed", "input": "a b c " * i},
                          headers=dict(AUTH, **{"X-Request-Id": "%se%d" % (self.prefix, i)}))
            self.assertEqual(r.status, 200, r.body)
            embeddings.append(r.json()["usage"])
        for i in range(3):
            r = g.request("POST", CHAT, body={"model": "down", "messages": [
                {"role": "user", "content": "x"}]}, headers=dict(
                    AUTH, **{"X-Request-Id": "%sd%d" % (self.prefix, i)}), timeout=30)
            self.assertEqual(r.status, 503, r.body)
        # Not a call (no model): not counted.
        r = g.request("POST", CHAT, body={"model": "nothing", "messages": [
            {"role": "user", "content": "x"}]}, headers=AUTH)
        self.assertEqual(r.status, 404, r.body)
        return usages, embeddings, 4 * len(range(0, 25, 4))

    def check_histogram(self, s, name, count, **labels):
        buckets = [value(s, name + "_bucket", le=le, **labels) for le in BUCKETS]
        self.assertNotIn(None, buckets, (name, labels))
        self.assertEqual(buckets, sorted(buckets), "buckets must be cumulative")
        self.assertEqual(buckets[-1], count)
        self.assertEqual(value(s, name + "_count", **labels), count)
        return value(s, name + "_sum", **labels)

    def test_counters_add_up_the_calls(self):
        with self.gateway() as g:
            usages, embeddings, streamed = self.calls(g)
            wait_rows(self, self.pg, self.prefix, 108)
            s = self.scrape(g)
            chat = {"endpoint": CHAT, "model": "priced"}
            emb = {"endpoint": EMBEDDINGS, "model": "embed"}
            down = {"endpoint": CHAT, "model": "down"}
            req = "ogl_inference_requests_total"
            self.assertEqual(value(s, req, status_code="200", **chat), 100)
            self.assertEqual(value(s, req, status_code="200", **emb), 5)
            self.assertEqual(value(s, req, status_code="503", **down), 3)
            self.assertEqual(sum(v for (n, _), v in s.items() if n == req), 108)

            lat = "ogl_inference_requests_duration_seconds"
            total = self.check_histogram(s, lat, 100, **chat)
            rows = float(self.pg.psql(
                "SELECT sum(latency_ms) / 1000 FROM usage WHERE request_id LIKE '%s%%' "
                "AND model_name = 'priced'" % self.prefix)[0][0])
            self.assertAlmostEqual(total, rows, delta=rows * 1e-6 + 1e-6)
            self.check_histogram(s, lat, 3, **down)
            ttft = "ogl_inference_ttft_seconds"
            self.assertGreater(self.check_histogram(s, ttft, streamed, **chat), 0)
            self.assertIsNone(value(s, ttft + "_count", **emb))

            tok = "ogl_inference_tokens_total"
            for kind in ("prompt", "completion"):
                self.assertEqual(value(s, tok, type=kind, **chat),
                                 sum(u[kind + "_tokens"] for u in usages), kind)
            self.assertEqual(value(s, tok, type="prompt", **emb),
                             sum(u["prompt_tokens"] for u in embeddings))
            cost = sum(u["cost"] for u in usages)
            self.assertAlmostEqual(value(s, "llmgate_usage_cost_total", **chat), cost,
                                   delta=cost * 1e-8)
            kwh = sum(u["impacts"]["kWh"] for u in usages)
            co2 = sum(u["impacts"]["kgCO2eq"] for u in usages)
            self.assertGreater(kwh, 0)
            self.assertAlmostEqual(value(s, "llmgate_usage_kwh_total", **chat), kwh,
                                   delta=kwh * 1e-8)
            self.assertAlmostEqual(value(s, "llmgate_usage_kgco2eq_total", **chat), co2,
                                   delta=co2 * 1e-8)

            # The ledger, all well.
            self.assertEqual(value(s, "llmgate_usage_queue_capacity"), 100000)
            self.assertIsNotNone(value(s, "llmgate_usage_queue_depth"))
            self.assertEqual(value(s, "llmgate_usage_journal_bytes"), 0)
            self.assertEqual(value(s, "llmgate_usage_journal_segments"), 0)
            self.assertEqual(value(s, "llmgate_usage_journal_full"), 0)
            self.assertEqual(value(s, "llmgate_usage_journal_max_bytes"), 1 << 30)
            self.assertEqual(value(s, "llmgate_usage_database_up"), 1)
            self.assertGreaterEqual(value(s, "llmgate_usage_rows_inserted_total"), 108)
            self.assertEqual(value(s, "llmgate_usage_records_journaled_total"), 0)
            for reason in ("queue_full", "journal_full", "journal_error"):
                self.assertEqual(value(s, "llmgate_usage_dropped_total", reason=reason), 0)
            self.assertEqual(value(s, "llmgate_metrics_calls_uncounted_total"), 0)

            # Counters only grow.
            again = self.scrape(g)
            self.assertEqual(value(again, req, status_code="200", **chat), 100)

    def test_who_may_read_them(self):
        with self.gateway() as g:
            self.assertEqual(g.request("GET", "/metrics").status, 401)
            self.assertEqual(g.request("GET", "/metrics", headers={
                "Authorization": "Bearer nope"}).status, 401)
            r = g.request("GET", "/metrics", headers=USER7)
            self.assertEqual(r.status, 403, r.body)
            self.assertIn("read_metric", r.json()["detail"])
            self.scrape(g, ADMIN1)
            self.scrape(g, AUTH)

    def test_read_metric_permission_of_a_role(self):
        with self.gateway() as g:
            keys = {}
            for name, permissions in (("readers", ["read_metric"]), ("others", [])):
                role = g.request("POST", "/v1/admin/roles", {
                    "name": name, "permissions": permissions, "limits": []}, headers=AUTH)
                self.assertEqual(role.status, 201, role.body)
                user = g.request("POST", "/v1/admin/users", {
                    "email": name + "@example.org", "role_id": role.json()["id"]},
                    headers=AUTH)
                self.assertEqual(user.status, 201, user.body)
                key = g.request("POST", "/v1/admin/keys", {
                    "name": name, "user": user.json()["id"]}, headers=AUTH)
                self.assertEqual(key.status, 201, key.body)
                keys[name] = {"Authorization": "Bearer " + key.json()["value"]}
            # A new role reaches the auth plugin's cache within a few seconds.
            deadline = time.monotonic() + 15
            while (g.request("GET", "/metrics", headers=keys["readers"]).status != 200
                   and time.monotonic() < deadline):
                time.sleep(0.1)
            self.scrape(g, keys["readers"])
            self.assertEqual(g.request("GET", "/metrics", headers=keys["others"]).status, 403)

    def test_metrics_off(self):
        with self.gateway(config(self.journal, metrics=False)) as g:
            self.assertEqual(g.request("GET", "/metrics", headers=AUTH).status, 404)
            r = g.request("POST", CHAT, body={"model": "priced", "messages": [
                {"role": "user", "content": "hi"}]},
                headers=dict(AUTH, **{"X-Request-Id": self.prefix + "off"}))
            self.assertEqual(r.status, 200, r.body)
            wait_rows(self, self.pg, self.prefix, 1)

    def test_core_setting_turns_metrics_off(self):
        """OpenGateLLM's settings.monitoring_prometheus_enabled: false; the
        ledger goes on."""
        cfg = config(self.journal)
        cfg["settings"] = {"monitoring_prometheus_enabled": False}
        with self.gateway(cfg) as g:
            self.assertEqual(g.request("GET", "/metrics", headers=AUTH).status, 404)
            r = g.request("POST", CHAT, body={"model": "priced", "messages": [
                {"role": "user", "content": "hi"}]},
                headers=dict(AUTH, **{"X-Request-Id": self.prefix + "core-off"}))
            self.assertEqual(r.status, 200, r.body)
            wait_rows(self, self.pg, self.prefix, 1)

    def test_metrics_without_the_ledger(self):
        cfg = config(self.journal, enabled=False)
        del cfg["plugins"]["usage"]["journal_dir"]
        with self.gateway(cfg) as g:
            r = g.request("POST", CHAT, body={"model": "priced", "messages": [
                {"role": "user", "content": "hi"}]}, headers=AUTH)
            self.assertEqual(r.status, 200, r.body)
            s = self.scrape(g)
            self.assertEqual(value(s, "ogl_inference_requests_total", endpoint=CHAT,
                                   model="priced", status_code="200"), 1)
            self.assertIsNone(value(s, "llmgate_usage_queue_depth"))

    def wait_metric(self, g, name, want, timeout=30, **labels):
        deadline = time.monotonic() + timeout
        while True:
            s = self.scrape(g)
            if want(value(s, name, **labels)):
                return s
            if time.monotonic() > deadline:
                self.fail("%s%r stayed %r" % (name, labels, value(s, name, **labels)))
            time.sleep(0.1)

    def chat(self, g, tag):
        r = g.request("POST", CHAT, body={"model": "priced", "messages": [
            {"role": "user", "content": "hi"}]},
            headers=dict(AUTH, **{"X-Request-Id": self.prefix + tag}))
        self.assertEqual(r.status, 200, r.body)

    def test_database_pool(self):
        """The pool's gauges and counters follow what PostgreSQL does: a
        locked table gives statement errors, a stopped server makes
        connections drop and statements fail for want of one, its return
        reconnects them."""
        pg = PgCluster().start()
        self.addCleanup(pg.destroy)
        cfg = config(self.journal, lock_timeout="100ms")
        cfg["dependencies"] = {"postgres": {"url": pg.url(), "pool_size": 3}}
        with lgtest.Gateway(cfg, pg=pg, env={
                "LLMGATE_PLUGIN_PATH": common.test_plugins_path()}) as g:
            self.chat(g, "pool-0")
            wait_rows(self, pg, self.prefix, 1)
            # Quiet now: nothing runs or waits (the ledger's timer may send
            # a batch at any moment, so wait for a scrape that sees none).
            self.wait_metric(g, "llmgate_db_pool_busy", lambda v: v == 0)
            s = self.wait_metric(g, "llmgate_db_pool_queued", lambda v: v == 0)
            self.assertEqual(value(s, "llmgate_db_pool_connections"), 3)
            self.assertEqual(value(s, "llmgate_db_pool_connected"), 3)
            self.assertEqual(value(s, "llmgate_db_up"), 1)
            ok = value(s, "llmgate_db_queries_total", outcome="ok")
            self.assertGreater(ok, 0)
            self.assertEqual(value(s, "llmgate_db_queries_total", outcome="unavailable"), 0)
            self.assertEqual(value(s, "llmgate_db_reconnects_total"), 0)
            errors = value(s, "llmgate_db_queries_total", outcome="error")

            # The ledger's insert waits 100 ms for a lock it cannot get.
            locker = Locker(pg)
            locker.wait_held()
            self.chat(g, "pool-1")
            self.wait_metric(g, "llmgate_usage_records_journaled_total", lambda v: v >= 1)
            locker.release()
            s = self.scrape(g)
            self.assertGreater(value(s, "llmgate_db_queries_total", outcome="error"), errors)

            pg.stop("immediate")
            self.chat(g, "pool-2")      # the master key needs no database
            self.wait_metric(g, "llmgate_db_up", lambda v: v == 0)
            s = self.wait_metric(g, "llmgate_db_queries_total", lambda v: v > 0,
                                 outcome="unavailable")
            self.assertLess(value(s, "llmgate_db_pool_connected"), 3)

            pg.pg_ctl_start()
            self.wait_metric(g, "llmgate_db_pool_connected", lambda v: v == 3, timeout=60)
            s = self.wait_metric(g, "llmgate_db_up", lambda v: v == 1, timeout=60)
            self.assertGreaterEqual(value(s, "llmgate_db_reconnects_total"), 1)
            wait_rows(self, pg, self.prefix, 3)     # the journal replayed
            s = self.scrape(g)
            self.assertGreater(value(s, "llmgate_db_queries_total", outcome="ok"), ok)
            self.assertEqual(g.stop(30), 0, g.log()[-4000:])


if __name__ == "__main__":
    lgtest.main()
