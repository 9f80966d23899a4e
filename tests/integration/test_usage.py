#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""The usage plugin: one row per forwarded call, every field as the reply
showed it; no row lost or doubled when PostgreSQL goes away under load or
when the server is stopped under load; a damaged journal line is skipped."""
import datetime
import hashlib
import json
import os
import shutil
import signal
import tempfile
import threading
import time
import unittest
import uuid

import common
import lgtest
from pgcluster import PgCluster

MASTER = "master-key-for-usage-tests-5c1e"
AUTH = {"Authorization": "Bearer " + MASTER}
CHAT = "/v1/chat/completions"
COST_PROMPT = 2.5          # per million tokens
COST_COMPLETION = 10.0
COLUMNS = ("record_id", "request_id", "created", "endpoint", "method", "status", "user_id",
           "key_id", "organization_id", "user_name", "key_name", "model_id", "model_name",
           "provider_id", "provider_model", "prompt_tokens", "completion_tokens",
           "total_tokens", "usage_estimated", "latency_ms", "ttft_ms", "cost", "client_gone",
           "error")
ROWS_TIMEOUT = 60          # seconds for rows to arrive (sanitizers, loaded host)


def models():
    return [{"name": "priced", "type": "text-generation", "aliases": ["priced-alias"],
             "cost_prompt_tokens": COST_PROMPT, "cost_completion_tokens": COST_COMPLETION,
             "providers": [{"type": "mock", "url": "http://mock.invalid",
                            "model_name": "mock-model"}]}]


def config(journal_dir, **usage):
    usage = dict({"journal_dir": journal_dir}, **usage)
    return {"plugins": {"auth": {"master_key": MASTER}, "mock": {}, "usage": usage},
            "models": models()}


def chat(g, rid, stream=False, model="priced", timeout=30):
    body = {"model": model, "messages": [{"role": "user", "content": "hello there"}]}
    if stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    return g.request("POST", CHAT, body=body, headers=dict(AUTH, **{"X-Request-Id": rid}),
                     timeout=timeout)


def rows(pg, where, args=""):
    """The usage rows matching @where, as dicts (psql's text values)."""
    sql = ("SELECT row_to_json(u) FROM (SELECT %s FROM usage WHERE %s ORDER BY id) u"
           % (", ".join(COLUMNS), where))
    return [json.loads(r[0]) for r in pg.psql(sql)]


def count(pg, prefix):
    return int(pg.psql("SELECT count(*) FROM usage WHERE request_id LIKE '%s%%'" % prefix)[0][0])


def wait_rows(test, pg, prefix, expected, timeout=ROWS_TIMEOUT):
    deadline = time.monotonic() + timeout
    n = -1
    while time.monotonic() < deadline:
        try:
            n = count(pg, prefix)
        except Exception:
            n = -1
        if n >= expected:
            break
        time.sleep(0.1)
    test.assertEqual(n, expected, "rows of %s" % prefix)


class Load:
    """Threads sending chat calls until stopped; keeps the request ids of
    the calls that were answered 200 with a whole body."""

    def __init__(self, g, prefix, threads=4):
        self.g = g
        self.prefix = prefix
        self.done = []
        self.failed = 0
        self.lock = threading.Lock()
        self.halt = threading.Event()
        self.threads = [threading.Thread(target=self._run, args=(i,)) for i in range(threads)]
        for t in self.threads:
            t.start()

    def _run(self, i):
        n = 0
        while not self.halt.is_set():
            rid = "%s%d-%d" % (self.prefix, i, n)
            n += 1
            try:
                r = chat(self.g, rid, stream=(n % 3 == 0), timeout=20)
                ok = r.status == 200 and (b"[DONE]" in r.body or b"usage" in r.body)
            except Exception:
                ok = False
            with self.lock:
                if ok:
                    self.done.append(rid)
                else:
                    self.failed += 1
                    time.sleep(0.01)

    def completed(self):
        with self.lock:
            return len(self.done)

    def wait_completed(self, n, timeout=60):
        deadline = time.monotonic() + timeout
        start = self.completed()
        while self.completed() < start + n and time.monotonic() < deadline:
            time.sleep(0.05)

    def stop(self):
        self.halt.set()
        for t in self.threads:
            t.join(60)
        return list(self.done)


def journal_line(record):
    text = json.dumps(record, separators=(",", ":"))
    return hashlib.blake2b(text.encode(), digest_size=16).hexdigest() + " " + text + "\n"


class UsageCase(unittest.TestCase):
    """One PostgreSQL cluster per class; each test its own gateway and its
    own request-id prefix."""

    @classmethod
    def setUpClass(cls):
        cls.pg = PgCluster().start()

    @classmethod
    def tearDownClass(cls):
        cls.pg.destroy()

    def setUp(self):
        self.prefix = "t%s-" % uuid.uuid4().hex[:12]
        self.journal = tempfile.mkdtemp(prefix="llmgate-usage-journal-")
        self.addCleanup(shutil.rmtree, self.journal, True)

    def gateway(self, cfg=None):
        return lgtest.Gateway(cfg or config(self.journal), pg=self.pg,
                              env={"LLMGATE_PLUGIN_PATH": common.test_plugins_path()})

    def assert_clean_exit(self, g):
        rc = g.stop(30)
        self.assertEqual(rc, 0, g.log()[-4000:])


class Fields(UsageCase):
    def test_failed_call_has_its_row(self):
        # A provider nothing listens on: the call fails, and is accounted.
        cfg = config(self.journal)
        cfg["plugins"]["openai"] = {}
        cfg["models"].append({"name": "down", "type": "text-generation", "providers": [
            {"type": "openai", "url": "http://127.0.0.1:1", "model_name": "gone"}]})
        g = self.gateway(cfg)
        g.start()
        try:
            r = chat(g, self.prefix + "down", model="down")
            self.assertEqual(r.status, 503, r.body)
            wait_rows(self, self.pg, self.prefix, 1)
            row = rows(self.pg, "request_id = '%sdown'" % self.prefix)[0]
            self.assertEqual((row["status"], row["model_name"], row["total_tokens"],
                              row["cost"]), (503, "down", 0, 0))
            self.assertTrue(row["error"], row)
            self.assertFalse(row["client_gone"])
        finally:
            self.assert_clean_exit(g)

    def model_ids(self):
        model_id = int(self.pg.psql("SELECT id FROM model WHERE name = 'priced'")[0][0])
        provider_id = int(self.pg.psql(
            "SELECT id FROM model_client WHERE model_id = %d" % model_id)[0][0])
        return model_id, provider_id

    def check_row(self, row, reply_usage, rid, stream, before, after):
        model_id, provider_id = self.model_ids()
        self.assertEqual(len(row["record_id"]), 32, row)
        int(row["record_id"], 16)
        self.assertEqual(row["request_id"], rid)
        created = datetime.datetime.fromisoformat(row["created"])
        self.assertTrue(before - datetime.timedelta(seconds=5) <= created
                        <= after + datetime.timedelta(seconds=5), (before, created, after))
        self.assertEqual((row["endpoint"], row["method"], row["status"]), (CHAT, "POST", 200))
        # The master key is a principal without ids.
        self.assertEqual((row["user_id"], row["key_id"], row["organization_id"]),
                         (None, None, None))
        self.assertEqual((row["user_name"], row["key_name"]), ("master", "master"))
        self.assertEqual((row["model_id"], row["model_name"]), (model_id, "priced"))
        self.assertEqual((row["provider_id"], row["provider_model"]),
                         (provider_id, "mock-model"))
        self.assertEqual((row["prompt_tokens"], row["completion_tokens"], row["total_tokens"]),
                         (reply_usage["prompt_tokens"], reply_usage["completion_tokens"],
                          reply_usage["total_tokens"]))
        self.assertFalse(row["usage_estimated"])
        wall_ms = (after - before).total_seconds() * 1000
        self.assertGreater(row["latency_ms"], 0)
        self.assertLessEqual(row["latency_ms"], wall_ms + 1000)
        if stream:
            self.assertIsNotNone(row["ttft_ms"])
            self.assertGreater(row["ttft_ms"], 0)
        if row["ttft_ms"] is not None:
            self.assertLessEqual(row["ttft_ms"], row["latency_ms"])
        expected = (reply_usage["prompt_tokens"] * COST_PROMPT / 1e6 +
                    reply_usage["completion_tokens"] * COST_COMPLETION / 1e6)
        self.assertGreater(expected, 0)
        self.assertAlmostEqual(row["cost"], expected, places=12)
        self.assertFalse(row["client_gone"])
        self.assertIsNone(row["error"])

    def test_every_field_matches_the_reply(self):
        with self.gateway() as g:
            results = []
            for stream in (False, True):
                rid = self.prefix + ("stream" if stream else "plain")
                before = datetime.datetime.now(datetime.timezone.utc)
                r = chat(g, rid, stream=stream, model="priced-alias")
                after = datetime.datetime.now(datetime.timezone.utc)
                self.assertEqual(r.status, 200, r.body)
                self.assertEqual(r.headers["x-request-id"], rid)
                if stream:
                    usage = [c for c in r.data() if c.get("usage")][-1]["usage"]
                else:
                    usage = r.json()["usage"]
                results.append((rid, stream, usage, before, after))
            wait_rows(self, self.pg, self.prefix, 2)
            for rid, stream, usage, before, after in results:
                got = rows(self.pg, "request_id = '%s'" % rid)
                self.assertEqual(len(got), 1, got)
                self.check_row(got[0], usage, rid, stream, before, after)
            self.assert_clean_exit(g)

    def test_cost_by_hand(self):
        # The mock provider answers "hello there" with 2 prompt and 8
        # completion tokens: 2 * 2.5 / 1e6 + 8 * 10 / 1e6.
        with self.gateway() as g:
            r = chat(g, self.prefix + "cost")
            self.assertEqual(r.status, 200, r.body)
            self.assertEqual(r.json()["usage"], {"prompt_tokens": 2, "completion_tokens": 8,
                                                 "total_tokens": 10})
            wait_rows(self, self.pg, self.prefix, 1)
            self.assertAlmostEqual(rows(self.pg, "request_id LIKE '%s%%'" % self.prefix)[0]
                                   ["cost"], 0.000085, places=15)
            self.assert_clean_exit(g)

    def test_reused_request_id_gives_two_rows(self):
        with self.gateway() as g:
            for _ in range(2):
                self.assertEqual(chat(g, self.prefix + "same").status, 200)
            wait_rows(self, self.pg, self.prefix, 2)
            got = rows(self.pg, "request_id = '%ssame'" % self.prefix)
            self.assertEqual(len({r["record_id"] for r in got}), 2)
            self.assert_clean_exit(g)

    def test_200_requests_200_rows(self):
        with self.gateway() as g:
            rids = []
            lock = threading.Lock()

            def send(k):
                for i in range(50):
                    rid = "%s%d-%d" % (self.prefix, k, i)
                    r = chat(g, rid, stream=(i % 4 == 0))
                    self.assertEqual(r.status, 200, r.body)
                    with lock:
                        rids.append(rid)
            threads = [threading.Thread(target=send, args=(k,)) for k in range(4)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(120)
            self.assertEqual(len(rids), 200)
            wait_rows(self, self.pg, self.prefix, 200)
            got = self.pg.psql("SELECT count(DISTINCT record_id), count(DISTINCT request_id) "
                               "FROM usage WHERE request_id LIKE '%s%%'" % self.prefix)
            self.assertEqual(got, [["200", "200"]])
            stored = {r[0] for r in self.pg.psql(
                "SELECT request_id FROM usage WHERE request_id LIKE '%s%%'" % self.prefix)}
            self.assertEqual(stored, set(rids))
            # Nothing to keep: the journal stays empty.
            self.assertEqual(os.listdir(self.journal), [])
            self.assert_clean_exit(g)

    def test_partitions_of_this_month_and_the_next(self):
        with self.gateway() as g:
            self.assertEqual(chat(g, self.prefix + "p").status, 200)
            wait_rows(self, self.pg, self.prefix, 1)
            now = datetime.datetime.now(datetime.timezone.utc)
            name = "usage_p%04d%02d" % (now.year, now.month)
            nxt = "usage_p%04d%02d" % (now.year + now.month // 12, now.month % 12 + 1)
            parts = {r[0] for r in self.pg.psql(
                "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
                "WHERE i.inhparent = 'usage'::regclass")}
            self.assertTrue({name, nxt, "usage_default"} <= parts, parts)
            where = self.pg.psql("SELECT tableoid::regclass FROM usage WHERE request_id = "
                                 "'%sp'" % self.prefix)
            self.assertEqual(where, [[name]])
            self.assert_clean_exit(g)

    def test_disabled_records_nothing(self):
        cfg = config(self.journal, enabled=False)
        del cfg["plugins"]["usage"]["journal_dir"]
        with self.gateway(cfg) as g:
            self.assertEqual(chat(g, self.prefix + "off").status, 200)
            time.sleep(1)
            self.assertEqual(count(self.pg, self.prefix), 0)
            self.assert_clean_exit(g)

    def test_journal_dir_required(self):
        cfg = config(self.journal)
        del cfg["plugins"]["usage"]["journal_dir"]
        r = lgtest.run_llmgate(["--check"], config=cfg, pg=self.pg,
                               env={"LLMGATE_PLUGIN_PATH": common.test_plugins_path()})
        self.assertNotEqual(r.returncode, 0, r.stderr)
        self.assertIn("journal_dir is required", r.stderr)


class Journal(UsageCase):
    def record(self, rid):
        return {"record_id": uuid.uuid4().hex, "request_id": rid,
                "created": datetime.datetime.now(datetime.timezone.utc).isoformat(),
                "endpoint": CHAT, "method": "POST", "status": 200, "user_id": None,
                "key_id": None, "organization_id": None, "user_name": "master",
                "key_name": "master", "model_id": None, "model_name": "priced",
                "provider_id": None, "provider_model": "mock-model", "prompt_tokens": 2,
                "completion_tokens": 5, "total_tokens": 7, "usage_estimated": False,
                "latency_ms": 1.5, "ttft_ms": None, "cost": 0.000055, "client_gone": False,
                "error": None}

    def test_replay_skips_a_damaged_line(self):
        good1, bad, good2 = (self.record(self.prefix + n) for n in ("a", "b", "c"))
        damaged = journal_line(bad).replace('"status":200', '"status":201')
        torn = journal_line(self.record(self.prefix + "d"))[:40]
        seg = os.path.join(self.journal, "usage-%020d.jsonl" % 7)
        with open(seg, "w") as f:
            f.write(journal_line(good1) + damaged + "garbage\n" + journal_line(good2) + torn)
        # The same record twice (a batch both sent and journaled) counts once.
        with open(os.path.join(self.journal, "usage-%020d.jsonl" % 8), "w") as f:
            f.write(journal_line(good2))
        with self.gateway() as g:
            wait_rows(self, self.pg, self.prefix, 2)
            deadline = time.monotonic() + ROWS_TIMEOUT
            while os.listdir(self.journal) and time.monotonic() < deadline:
                time.sleep(0.1)
            self.assertEqual(os.listdir(self.journal), [])
            self.assertTrue(g.wait_log(r"3 damaged records skipped", 5), g.log()[-3000:])
            self.assert_clean_exit(g)
        got = rows(self.pg, "request_id LIKE '%s%%'" % self.prefix)
        self.assertEqual(sorted(r["request_id"] for r in got),
                         [self.prefix + "a", self.prefix + "c"])


class Outage(UsageCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        # The test cluster runs with synchronous_commit off, which loses the
        # last acknowledged commits when it is stopped in "immediate" mode:
        # a ledger's database must not, so this one does not either.
        cls.pg.psql("ALTER SYSTEM SET synchronous_commit = on")
        cls.pg.psql("SELECT pg_reload_conf()")

    def test_database_down_under_load(self):
        with self.gateway() as g:
            load = Load(g, self.prefix)
            try:
                load.wait_completed(50)
                self.pg.stop("immediate")
                # Calls are still served while the database is away.
                load.wait_completed(100)
                self.assertTrue(g.wait_log(r"keeping records in the journal", 10),
                                g.log()[-3000:])
                self.assertTrue(os.listdir(self.journal))
                self.pg.pg_ctl_start()
                load.wait_completed(100)
            finally:
                done = load.stop()
            self.assertGreaterEqual(len(done), 250)
            wait_rows(self, self.pg, self.prefix, len(done))
            got = self.pg.psql("SELECT count(*), count(DISTINCT record_id) FROM usage "
                               "WHERE request_id LIKE '%s%%'" % self.prefix)
            self.assertEqual(got, [[str(len(done)), str(len(done))]])
            stored = {r[0] for r in self.pg.psql(
                "SELECT request_id FROM usage WHERE request_id LIKE '%s%%'" % self.prefix)}
            self.assertEqual(stored, set(done))
            deadline = time.monotonic() + ROWS_TIMEOUT
            while os.listdir(self.journal) and time.monotonic() < deadline:
                time.sleep(0.1)
            self.assertEqual(os.listdir(self.journal), [])
            self.assert_clean_exit(g)

    def test_sigterm_under_load(self):
        g = self.gateway()
        g.start()
        load = Load(g, self.prefix, threads=6)
        try:
            load.wait_completed(100)
            g.send_signal(signal.SIGTERM)
            rc = g.wait(60)
        finally:
            done = load.stop()
            log = g.log()
            g.close()
        self.assertEqual(rc, 0, log[-4000:])
        self.assertGreaterEqual(len(done), 100)
        stored = self.pg.psql("SELECT request_id, count(*) FROM usage WHERE request_id "
                              "LIKE '%s%%' GROUP BY request_id" % self.prefix)
        by_rid = {r[0]: int(r[1]) for r in stored}
        missing = set(done) - set(by_rid)
        self.assertEqual(missing, set(), "completed calls without a row")
        # A request id is used once, so one row each.
        self.assertEqual({n for n in by_rid.values()}, {1})
        self.assertEqual(os.listdir(self.journal), [])


if __name__ == "__main__":
    lgtest.main()
