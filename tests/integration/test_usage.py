#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""The usage plugin: one row per forwarded call, every field as the reply
showed it; no row lost or doubled when PostgreSQL goes away under load, when
usage is locked under load, or when the server is stopped under load; a
damaged journal line is skipped; a full journal is said loudly (log, metric,
/ready) and its losses counted; monthly partitions made ahead and dropped
past the retention."""
import base64
import datetime
import hashlib
import json
import os
import shutil
import signal
import struct
import subprocess
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
           "provider_id", "provider_type", "provider_model", "prompt_tokens",
           "completion_tokens", "total_tokens", "usage_estimated", "latency_ms", "ttft_ms",
           "cost", "kwh", "kgco2eq", "client_gone", "error")
ROWS_TIMEOUT = 60          # seconds for rows to arrive (sanitizers, loaded host)


def models():
    return [{"name": "priced", "type": "text-generation", "aliases": ["priced-alias"],
             "cost_prompt_tokens": COST_PROMPT, "cost_completion_tokens": COST_COMPLETION,
             "providers": [{"type": "mock", "url": "http://mock.invalid",
                            "model_name": "mock-model", "model_total_params": 140,
                            "model_active_params": 35, "model_hosting_zone": "FRA"}]}]


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
    sql = ("SELECT row_to_json(u) FROM (SELECT %s FROM usage WHERE %s "
           "ORDER BY created, record_id) u" % (", ".join(COLUMNS), where))
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


def scrape(g):
    """GET /metrics as {"name{labels}": value}."""
    r = g.request("GET", "/metrics", headers=AUTH)
    if r.status != 200:
        raise AssertionError("GET /metrics: %r" % r)
    out = {}
    for line in r.text.splitlines():
        if line and not line.startswith("#"):
            key, value = line.rsplit(" ", 1)
            out[key] = float(value)
    return out


def dropped(g):
    m = scrape(g)
    return int(sum(v for k, v in m.items() if k.startswith("llmgate_usage_dropped_total")))


class Locker:
    """psql holding LOCK TABLE usage IN ACCESS EXCLUSIVE MODE in an open
    transaction, for @seconds or until release()."""
    APP = "usage-locker"

    def __init__(self, pg, seconds=600):
        self.pg = pg
        env = dict(os.environ, PGPASSWORD=pg.password, PGAPPNAME=self.APP)
        self.proc = subprocess.Popen(
            ["psql", "-h", "127.0.0.1", "-p", str(pg.port), "-U", "postgres", "-X", "-q",
             "-v", "ON_ERROR_STOP=1", "-c", "BEGIN",
             "-c", "LOCK TABLE usage IN ACCESS EXCLUSIVE MODE",
             "-c", "SELECT pg_sleep(%d)" % seconds, "-c", "COMMIT"],
            env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL)

    def held(self):
        return self.pg.psql(
            "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
            "WHERE a.application_name = '%s' AND l.relation = 'usage'::regclass "
            "AND l.mode = 'AccessExclusiveLock' AND l.granted" % self.APP) == [["1"]]

    def wait_held(self, timeout=20):
        deadline = time.monotonic() + timeout
        while not self.held():
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise AssertionError("psql did not take the lock")
            time.sleep(0.05)

    def release(self):
        self.pg.psql("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                     "WHERE application_name = '%s'" % self.APP)
        self.proc.wait(30)

    def wait(self, timeout=60):
        self.proc.wait(timeout)


def wait_until(test, what, fn, timeout=ROWS_TIMEOUT):
    deadline = time.monotonic() + timeout
    while not fn():
        if time.monotonic() > deadline:
            test.fail("not within %d s: %s" % (timeout, what))
        time.sleep(0.1)


def month_add(year, month, k):
    n = year * 12 + month - 1 + k
    return n // 12, n % 12 + 1


def partition_name(year, month):
    return "usage_p%04d%02d" % (year, month)


def create_partition(pg, year, month):
    ny, nm = month_add(year, month, 1)
    pg.psql("CREATE TABLE %s PARTITION OF usage FOR VALUES FROM ('%04d-%02d-01 00:00:00+00') "
            "TO ('%04d-%02d-01 00:00:00+00')" % (partition_name(year, month), year, month,
                                                  ny, nm))


def partitions(pg):
    return {r[0] for r in pg.psql(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        "WHERE i.inhparent = 'usage'::regclass")}


def insert_row(pg, rid, created):
    pg.psql("INSERT INTO usage (record_id, request_id, created, endpoint, method, status, "
            "latency_ms) VALUES ('%s', '%s', '%s', '%s', 'POST', 200, 1)"
            % (uuid.uuid4().hex, rid, created, CHAT))


def hashed(payload):
    """A journal line: the payload after its BLAKE2b-128 hash."""
    return hashlib.blake2b(payload.encode(), digest_size=16).hexdigest() + " " + payload + "\n"


def journal_line(record):
    """A journal line of llmgate 0.2: a JSON record."""
    return hashed(json.dumps(record, separators=(",", ":")))


# The binary form of each column the plugin loads (COPY ... WITH (FORMAT binary)).
BINARY = {"status": "int4", "user_id": "int8", "key_id": "int8", "organization_id": "int8",
          "model_id": "int8", "provider_id": "int8", "prompt_tokens": "int8",
          "completion_tokens": "int8", "total_tokens": "int8", "usage_estimated": "bool",
          "client_gone": "bool", "latency_ms": "float8", "ttft_ms": "float8", "cost": "float8",
          "kwh": "float8", "kgco2eq": "float8", "created": "timestamptz"}
PG_EPOCH = datetime.datetime(2000, 1, 1, tzinfo=datetime.timezone.utc)


def binary_field(column, v):
    if v is None:
        return struct.pack(">i", -1)
    kind = BINARY.get(column, "text")
    if kind == "text":
        data = str(v).encode()
    elif kind == "timestamptz":
        delta = datetime.datetime.fromisoformat(v) - PG_EPOCH
        data = struct.pack(">q", delta // datetime.timedelta(microseconds=1))
    else:
        data = struct.pack({"int4": ">i", "int8": ">q", "bool": ">?", "float8": ">d"}[kind], v)
    return struct.pack(">i", len(data)) + data


def binary_record(record):
    """A record as the plugin writes it: one tuple of binary COPY."""
    return struct.pack(">h", len(COLUMNS)) + b"".join(
        binary_field(c, record.get(c)) for c in COLUMNS)


def batch_lines(batch_id, records):
    """Journal lines of one batch: "<batch id> <record in base64>"."""
    return "".join(hashed(batch_id + " " + base64.b64encode(binary_record(r)).decode())
                   for r in records)


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
        self.assertEqual((row["provider_id"], row["provider_type"], row["provider_model"]),
                         (provider_id, "mock", "mock-model"))
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
        expected = round(reply_usage["prompt_tokens"] * COST_PROMPT / 1e6 +
                         reply_usage["completion_tokens"] * COST_COMPLETION / 1e6, 6)
        self.assertGreater(expected, 0)
        self.assertEqual(row["cost"], expected)
        # Cost and impacts: exactly what the reply said.
        self.assertEqual(row["cost"], reply_usage["cost"])
        self.assertGreater(reply_usage["impacts"]["kWh"], 0)
        self.assertEqual((row["kwh"], row["kgco2eq"]),
                         (reply_usage["impacts"]["kWh"], reply_usage["impacts"]["kgCO2eq"]))
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
            usage = r.json()["usage"]
            self.assertEqual((usage["prompt_tokens"], usage["completion_tokens"],
                              usage["total_tokens"], usage["cost"]), (2, 8, 10, 0.000085))
            wait_rows(self, self.pg, self.prefix, 1)
            self.assertEqual(rows(self.pg, "request_id LIKE '%s%%'" % self.prefix)[0]["cost"],
                             0.000085)
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

    def test_batches_go_back_to_back(self):
        """A queue longer than a batch goes out batch after batch as fast as
        PostgreSQL takes them, not one batch per timer tick (50 ms): with
        batches of one record, 1000 calls would take 50 s at one per tick,
        and a gateway serving more than a batch per tick would fall behind
        for ever."""
        cfg = config(self.journal, batch_size=1, flush_interval="10s")
        with self.gateway(cfg) as g:
            load = Load(g, self.prefix)
            load.wait_completed(1000)
            rids = load.stop()
            self.assertGreaterEqual(len(rids), 1000)
            wait_rows(self, self.pg, self.prefix, len(rids), timeout=20)
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

    def test_core_setting_turns_the_ledger_off(self):
        """OpenGateLLM's settings.monitoring_postgres_enabled: false, with
        the plugin's own settings left alone (journal_dir then not needed)."""
        cfg = config(self.journal)
        del cfg["plugins"]["usage"]["journal_dir"]
        cfg["settings"] = {"monitoring_postgres_enabled": False}
        with self.gateway(cfg) as g:
            self.assertEqual(chat(g, self.prefix + "core-off").status, 200)
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

    def test_replay_loads_each_batch_once(self):
        """Batches keep their ids in the journal: a batch journaled twice, or
        claimed already (committed before a crash left its segment), adds
        nothing; a damaged line is skipped, the rest of its batch loads."""
        a, b, c, d, e = (self.record(self.prefix + n) for n in "abcde")
        c["error"] = "tab\there, newline\nthere, backslash \\N, \u00e9"
        c["ttft_ms"] = 4.5
        one, two, done = (uuid.uuid4().hex for _ in range(3))
        good = batch_lines(one, [e])
        damaged = good[:40] + ("A" if good[40] != "A" else "B") + good[41:]
        with open(os.path.join(self.journal, "usage-%020d.journal" % 3), "w") as f:
            # a damaged line, and one whose checksum holds around a record
            # that is not base64
            f.write(batch_lines(one, [a, b]) + damaged + hashed(one + " not*base64") +
                    batch_lines(two, [c]))
        with open(os.path.join(self.journal, "usage-%020d.journal" % 4), "w") as f:
            f.write(batch_lines(two, [c]) + batch_lines(done, [d]))
        migrate = lgtest.run_llmgate(["migrate"], config=config(self.journal), pg=self.pg,
                                     env={"LLMGATE_PLUGIN_PATH": common.test_plugins_path()})
        self.assertEqual(migrate.returncode, 0, migrate.stderr)
        self.pg.psql("INSERT INTO usage_batches (batch_id, rows) VALUES ('%s', 1)" % done)
        with self.gateway() as g:
            wait_rows(self, self.pg, self.prefix, 3)
            wait_until(self, "the journal replayed", lambda: not os.listdir(self.journal))
            self.assertTrue(g.wait_log(r"2 damaged records skipped", 5), g.log()[-3000:])
            self.assert_clean_exit(g)
        got = {r["request_id"]: r for r in rows(self.pg, "request_id LIKE '%s%%'" % self.prefix)}
        self.assertEqual(sorted(got), [self.prefix + n for n in "abc"])
        self.assertEqual(got[self.prefix + "c"]["error"], c["error"])
        self.assertEqual(got[self.prefix + "c"]["ttft_ms"], 4.5)
        self.assertEqual(got[self.prefix + "a"]["record_id"], a["record_id"])
        claims = dict(self.pg.psql("SELECT batch_id, rows FROM usage_batches WHERE batch_id "
                                   "IN ('%s', '%s')" % (one, two)))
        self.assertEqual(claims, {one: "2", two: "1"})

    def test_replay_goes_back_to_back(self):
        """A journal is replayed batch after batch as fast as PostgreSQL
        takes them, not one batch per timer tick (50 ms): 600 batches would
        take 30 s at one per tick, and a journal that fills faster than
        that would never drain."""
        with open(os.path.join(self.journal, "usage-%020d.journal" % 1), "w") as f:
            for i in range(600):
                f.write(batch_lines(uuid.uuid4().hex, [self.record(self.prefix + str(i))]))
        with self.gateway() as g:
            wait_rows(self, self.pg, self.prefix, 600, timeout=15)
            wait_until(self, "the journal replayed", lambda: not os.listdir(self.journal))
            self.assert_clean_exit(g)

    def test_replay_of_a_journal_of_0_2(self):
        """Segments of llmgate 0.2 (usage-N.jsonl, JSON records) are renamed
        and replayed, each record once, damaged lines skipped."""
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
        # Records journaled before the columns of impacts existed: NULL.
        self.assertEqual({(r["kwh"], r["kgco2eq"], r["provider_type"]) for r in got},
                         {(None, None, None)})


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


class JournalCap(UsageCase):
    def test_full_journal_is_said_and_counted(self):
        # usage locked, inserts give up after 100 ms: everything goes to a
        # journal of 4 KiB (a few records), then to a queue of 100, then is
        # lost; requests are served all along.
        cfg = config(self.journal, journal_max_size="4k", queue_max=100, batch_size=10,
                     lock_timeout="100ms", retry_interval="200ms", flush_interval="20ms")
        with self.gateway(cfg) as g:
            self.assertEqual(chat(g, self.prefix + "before").status, 200)
            wait_rows(self, self.pg, self.prefix, 1)
            locker = Locker(self.pg)
            try:
                locker.wait_held()
                sent = 1
                for i in range(200):
                    self.assertEqual(chat(g, "%s%d" % (self.prefix, i)).status, 200)
                    sent += 1
                wait_until(self, "records lost", lambda: dropped(g) > 0)
                self.assertTrue(g.wait_log(r"reached journal_max_size", 10), g.log()[-3000:])
                self.assertTrue(g.wait_log(r"usage records lost so far", 10), g.log()[-3000:])
                r = g.request("GET", "/ready")
                self.assertEqual(r.status, 503, r.body)
                self.assertIn("usage: the usage journal is full", r.json()["detail"])
                m = scrape(g)
                self.assertEqual(m["llmgate_usage_journal_full"], 1)
                self.assertGreaterEqual(m["llmgate_usage_journal_bytes"], 4096)
                self.assertEqual(m["llmgate_usage_journal_max_bytes"], 4096)
                self.assertEqual(m["llmgate_usage_database_up"], 0)
                self.assertEqual(m["llmgate_usage_queue_capacity"], 100)
                self.assertGreater(m['llmgate_usage_dropped_total{reason="queue_full"}'], 0)
            finally:
                locker.release()
            # The journal drains, /ready recovers; every call has its row or
            # is counted as lost, none is both.
            wait_until(self, "the journal replayed", lambda: not os.listdir(self.journal))
            g.wait_ready(30)
            lost = dropped(g)
            self.assertGreater(lost, 0)
            wait_rows(self, self.pg, self.prefix, sent - lost)
            m = scrape(g)
            self.assertEqual((m["llmgate_usage_journal_full"], m["llmgate_usage_journal_bytes"],
                              m["llmgate_usage_database_up"]), (0, 0, 1))
            self.assertTrue(g.wait_log(r"journal is below journal_max_size again", 5))
            got = self.pg.psql("SELECT count(*), count(DISTINCT request_id) FROM usage "
                               "WHERE request_id LIKE '%s%%'" % self.prefix)
            self.assertEqual(got, [[str(sent - lost)] * 2])
            self.assert_clean_exit(g)


class TableLock(UsageCase):
    def test_locked_table_under_load(self):
        # T6 in short: usage locked while 50 calls are served. The inserts
        # give up after lock_timeout and the batches wait in the journal.
        # The lock is held until the test lets it go, however slow the
        # machine (a sanitizer build) serves the calls.
        cfg = config(self.journal, lock_timeout="200ms", retry_interval="200ms")
        with self.gateway(cfg) as g:
            load = Load(g, self.prefix)
            try:
                load.wait_completed(30)
                locker = Locker(self.pg)
                locker.wait_held()
                during = load.completed()
                load.wait_completed(50, timeout=120)
                self.assertTrue(locker.held(), "the lock ended before 50 calls were served")
                self.assertGreaterEqual(load.completed() - during, 50)
                locker.release()
                load.wait_completed(50)
            finally:
                done = load.stop()
            self.assertEqual(load.failed, 0, "calls failed while usage was locked")
            self.assertTrue(g.wait_log(r"keeping records in the journal", 5), g.log()[-3000:])
            wait_rows(self, self.pg, self.prefix, len(done))
            got = self.pg.psql("SELECT count(*), count(DISTINCT record_id), "
                               "count(DISTINCT request_id) FROM usage "
                               "WHERE request_id LIKE '%s%%'" % self.prefix)
            self.assertEqual(got, [[str(len(done))] * 3])
            wait_until(self, "the journal replayed", lambda: not os.listdir(self.journal))
            self.assertEqual(dropped(g), 0)
            self.assert_clean_exit(g)


class Retention(UsageCase):
    def test_old_partitions_are_dropped(self):
        now = datetime.datetime.now(datetime.timezone.utc)
        this = (now.year, now.month)
        with self.gateway() as g:
            # the migrations, this month's partition and the next
            self.assert_clean_exit(g)
        # Months that ended long ago, or 59 days ago at least (the one three
        # months back), go with a retention of 40 days; last month stays.
        old = [(2020, 1), month_add(*this, -3)]
        kept = [month_add(*this, -1)]
        for ym in old + kept:
            create_partition(self.pg, *ym)
            insert_row(self.pg, self.prefix + partition_name(*ym), "%04d-%02d-15" % ym)
        insert_row(self.pg, self.prefix + "default", "2019-03-01")   # in usage_default
        names = {partition_name(*ym) for ym in old + kept}
        nxt = partition_name(*month_add(*this, 1))

        # Without retention_days nothing goes.
        with self.gateway(config(self.journal, maintenance_interval="1s")) as g:
            time.sleep(2)
            self.assertTrue(names <= partitions(self.pg))
            self.assertEqual(count(self.pg, self.prefix), 4)
            self.assert_clean_exit(g)

        cfg = config(self.journal, retention_days=40, maintenance_interval="1s")
        with self.gateway(cfg) as g:
            # At start.
            for ym in old:
                self.assertTrue(g.wait_log(r"retention dropped %s" % partition_name(*ym), 10),
                                g.log()[-3000:])
            self.assertTrue(g.wait_log(r"retention dropped 1 rows of usage_default", 10))
            parts = partitions(self.pg)
            self.assertEqual(parts & names, {partition_name(*ym) for ym in kept})
            self.assertTrue({partition_name(*this), nxt, "usage_default"} <= parts, parts)
            self.assertEqual(sorted(r[0] for r in self.pg.psql(
                "SELECT request_id FROM usage WHERE request_id LIKE '%s%%'" % self.prefix)),
                [self.prefix + partition_name(*ym) for ym in kept])
            # Then on the timer: an old month appears, the next one vanishes.
            create_partition(self.pg, 2019, 5)
            self.pg.psql("DROP TABLE %s" % nxt)
            wait_until(self, "the timer's maintenance", lambda: (
                "usage_p201905" not in partitions(self.pg) and nxt in partitions(self.pg)), 20)
            self.assertTrue(g.wait_log(r"created the partition %s" % nxt, 5))
            # Calls still get their rows, in this month's partition.
            self.assertEqual(chat(g, self.prefix + "after").status, 200)
            wait_rows(self, self.pg, self.prefix, 2)
            self.assert_clean_exit(g)

    def test_retention_settings_are_checked(self):
        cfg = config(self.journal, retention_days=-1)
        r = lgtest.run_llmgate(["--check"], config=cfg, pg=self.pg,
                               env={"LLMGATE_PLUGIN_PATH": common.test_plugins_path()})
        self.assertNotEqual(r.returncode, 0, r.stderr)
        self.assertIn("retention_days", r.stderr)


if __name__ == "__main__":
    lgtest.main()
