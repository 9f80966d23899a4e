#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""GET /v1/usage (daily buckets) and GET /v1/me/usage (one row per call):
their answers against the replies of real calls and against rows written
with SQL; who sees what (the caller's own rows, admins anyone's); bad
parameters; and, on a table of a million rows, that both queries answer
from the indexes: the plans PostgreSQL chose for the gateway's own
statements (auto_explain, the JSON of EXPLAIN) have no sequential scan of
a usage partition."""
import contextlib
import json
import os
import shutil
import tempfile
import time
import unittest
import uuid

import common
import lgtest
from pgcluster import PgCluster
from test_usage import ROWS_TIMEOUT, wait_rows

MASTER = "master-key-for-usage-tests-5c1e"
AUTH = {"Authorization": "Bearer " + MASTER}
USER7 = {"Authorization": "Bearer good-token"}      # the good test plugin: user 7
ADMIN1 = {"Authorization": "Bearer good-admin"}     # user 1, an admin
CHAT = "/v1/chat/completions"
EMBEDDINGS = "/v1/embeddings"
DAY = 86400
COST_PROMPT, COST_COMPLETION = 2.5, 10.0
PARAMS = {"model_total_params": 140, "model_active_params": 35, "model_hosting_zone": "FRA"}


def models():
    return [
        {"name": "priced", "type": "text-generation", "cost_prompt_tokens": COST_PROMPT,
         "cost_completion_tokens": COST_COMPLETION,
         "providers": [dict({"type": "mock", "model_name": "mock-model"}, **PARAMS)]},
        {"name": "embed", "type": "text-embeddings-inference", "cost_prompt_tokens": 130.0,
         "providers": [{"type": "mock", "model_name": "mock-embed"}]},
        {"name": "down", "type": "text-generation", "providers": [
            {"type": "openai", "url": "http://127.0.0.1:1", "model_name": "gone"}]},
    ]


def config(journal, auth=True):
    plugins = {"good": {}, "mock": {}, "openai": {}, "usage": {"journal_dir": journal}}
    if auth:
        plugins["auth"] = {"master_key": MASTER}
    return {"plugins": plugins, "models": models()}


def chat(g, rid, headers=AUTH, stream=False, model="priced", text="hello there"):
    body = {"model": model, "messages": [{"role": "user", "content": text}]}
    if stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    return g.request("POST", CHAT, body=body, headers=dict(headers, **{"X-Request-Id": rid}),
                     timeout=30)


def reply_usage(r):
    if r.headers.get("content-type", "").startswith("text/event-stream"):
        return [c for c in r.data() if c.get("usage")][-1]["usage"]
    return r.json()["usage"]


def get(g, path, headers=AUTH):
    return g.request("GET", path, headers=headers, timeout=60)


def usage_path(start, end, **params):
    q = "&".join("%s=%s" % kv for kv in dict(start_time=start, end_time=end, **params).items())
    return "/v1/usage?" + q


def day_of(t):
    return int(t) // DAY * DAY


class ApiCase(unittest.TestCase):
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

    @contextlib.contextmanager
    def gateway(self, auth=True):
        """A running gateway that must exit cleanly (status 0: no leak or
        error reported by the sanitizers) when the test is done with it."""
        with lgtest.Gateway(config(self.journal, auth), pg=self.pg,
                            env={"LLMGATE_PLUGIN_PATH": common.test_plugins_path()}) as g:
            yield g
            self.assertEqual(g.stop(30), 0, g.log()[-4000:])

    def insert_rows(self, rows):
        """Rows written directly, each a dict of columns (created as Unix time)."""
        for r in rows:
            r = dict({"record_id": uuid.uuid4().hex, "request_id": self.prefix + "sql",
                      "endpoint": CHAT, "method": "POST", "status": 200, "latency_ms": 10},
                     **r)
            cols = ", ".join(r)
            vals = ", ".join("to_timestamp(%d)" % v if k == "created" else
                             "NULL" if v is None else
                             "'%s'" % v if isinstance(v, str) else repr(v)
                             for k, v in r.items())
            self.pg.psql("INSERT INTO usage (%s) VALUES (%s)" % (cols, vals))


class MasterKey(ApiCase):
    """The master key: an admin principal without a user id, whose calls are
    stored with a NULL user_id: those are its own rows."""

    def calls(self, g):
        """Chat calls (plain and streamed), embeddings, and a failing call;
        returns the successful ones as (request id, endpoint, reply usage)."""
        done = []
        for i, stream in enumerate((False, True, False)):
            rid = "%schat%d" % (self.prefix, i)
            r = chat(g, rid, stream=stream, text="hello there " * (i + 1))
            self.assertEqual(r.status, 200, r.body)
            done.append((rid, CHAT, "priced", reply_usage(r)))
            time.sleep(0.01)        # distinct creation times, for the order
        rid = self.prefix + "embed"
        r = g.request("POST", EMBEDDINGS, body={"model": "embed", "input": "some words here"},
                      headers=dict(AUTH, **{"X-Request-Id": rid}))
        self.assertEqual(r.status, 200, r.body)
        done.append((rid, EMBEDDINGS, "embed", r.json()["usage"]))
        r = chat(g, self.prefix + "down", model="down")
        self.assertEqual(r.status, 503, r.body)
        wait_rows(self, self.pg, self.prefix, len(done) + 1)
        return done

    def since_now(self):
        """A start_time after the calls of the tests before this one."""
        time.sleep(1.1)
        return int(time.time())

    def test_buckets_add_up_the_replies(self):
        with self.gateway() as g:
            start = self.since_now()
            done = self.calls(g)
            now = time.time()
            r = get(g, usage_path(int(now) - 3 * DAY, int(now) + 1))
            self.assertEqual(r.status, 200, r.body)
            body = r.json()
            self.assertEqual(body["object"], "list")
            buckets = body["data"]
            # Every UTC day the range touches, newest first, with or without calls.
            days = list(range(day_of(now), day_of(now) - 4 * DAY, -DAY))
            self.assertEqual([b["start_time"] for b in buckets], days)
            for b in buckets:
                self.assertEqual(b["object"], "usage.bucket")
                self.assertEqual(b["end_time"], b["start_time"] + DAY)
            for b in buckets[1:]:
                self.assertEqual((b["requests"], b["total_tokens"], b["cost"]), (0, 0, 0))
            r = get(g, usage_path(start, int(now) + 1))
            if len(r.json()["data"]) != 1:
                self.skipTest("the calls straddle midnight UTC")
            today = r.json()["data"][0]
            usages = [u for _, _, _, u in done]
            self.assertEqual(today["requests"], len(done))     # not the 503
            for key in ("prompt_tokens", "completion_tokens", "total_tokens"):
                self.assertEqual(today[key], sum(u[key] for u in usages), key)
            self.assertAlmostEqual(today["cost"], round(sum(u["cost"] for u in usages), 6),
                                   places=9)
            kwh = sum(u["impacts"]["kWh"] for u in usages if "impacts" in u)
            co2 = sum(u["impacts"]["kgCO2eq"] for u in usages if "impacts" in u)
            self.assertGreater(kwh, 0)
            self.assertAlmostEqual(today["impacts"]["kWh"], kwh, delta=kwh * 1e-9)
            self.assertAlmostEqual(today["impacts"]["kgCO2eq"], co2, delta=co2 * 1e-9)

            # Filters: endpoint, models (a comma-separated list), neither matching.
            def today_of(**params):
                r = get(g, usage_path(start, int(now) + 1, **params))
                self.assertEqual(r.status, 200, r.body)
                self.assertEqual(len(r.json()["data"]), 1, r.body)
                return r.json()["data"][0]
            emb = today_of(endpoint=EMBEDDINGS)
            self.assertEqual((emb["requests"], emb["prompt_tokens"]),
                             (1, done[3][3]["prompt_tokens"]))
            self.assertEqual(today_of(models="priced")["requests"], 3)
            self.assertEqual(today_of(models="embed,priced")["requests"], 4)
            self.assertEqual(today_of(models="embed,%20nothing")["requests"], 1)
            self.assertEqual(today_of(models="nothing")["requests"], 0)
            self.assertEqual(today_of(endpoint="/v1/rerank")["requests"], 0)
            # The master key's calls have no key id.
            self.assertEqual(today_of(key_id=1)["requests"], 0)

    def test_me_usage_lists_the_calls_newest_first(self):
        with self.gateway() as g:
            start = self.since_now()
            done = self.calls(g)
            r = get(g, "/v1/me/usage?limit=100")
            self.assertEqual(r.status, 200, r.body)
            rows = [x for x in r.json()["data"] if x["request_id"].startswith(self.prefix)]
            self.assertEqual([x["request_id"] for x in rows],
                             [rid for rid, _, _, _ in reversed(done)])
            for (rid, endpoint, model, usage), row in zip(reversed(done), rows):
                self.assertEqual(row["object"], "me.usage")
                self.assertEqual((row["model"], row["key"], row["endpoint"], row["method"],
                                  row["status"]), (model, "master", endpoint, "POST", 200))
                got = row["usage"]
                for key in ("prompt_tokens", "completion_tokens", "total_tokens", "cost"):
                    self.assertEqual(got[key], usage[key], (rid, key))
                self.assertEqual(got["impacts"], usage.get("impacts", got["impacts"]))
                self.assertGreaterEqual(got["metrics"]["latency"], 0)
                self.assertLessEqual(abs(row["created"] - start), 60)
            # Only the streamed call has a time to first token.
            self.assertEqual([x["usage"]["metrics"]["ttft"] is not None for x in rows],
                             [False, False, True, False])
            # Pages, and the other order on request.
            since = "/v1/me/usage?start_time=%d&" % start
            r = get(g, since + "limit=2&offset=1")
            self.assertEqual([x["request_id"] for x in r.json()["data"]],
                             [done[2][0], done[1][0]])
            r = get(g, since + "limit=2&sort_order=asc")
            self.assertEqual([x["request_id"] for x in r.json()["data"]],
                             [done[0][0], done[1][0]])
            r = get(g, since + "endpoint=" + EMBEDDINGS)
            self.assertEqual([x["request_id"] for x in r.json()["data"]], [done[3][0]])
            # A range that ends before the calls.
            r = get(g, "/v1/me/usage?end_time=%d" % (int(start) - 10))
            self.assertEqual(r.json()["data"], [])

    def test_admin_names_a_user_or_an_organization(self):
        now = int(time.time())
        yesterday = day_of(now) - DAY + 3600
        earlier = (day_of(now) + now) // 2        # today, before now
        with self.gateway() as g:
            self.insert_rows([
                {"created": earlier, "user_id": 41, "key_id": 411, "organization_id": 5,
                 "prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7, "cost": 0.5},
                {"created": yesterday, "user_id": 41, "key_id": 412, "organization_id": 5,
                 "prompt_tokens": 10, "completion_tokens": 0, "total_tokens": 10,
                 "cost": 0.25},
                {"created": earlier, "user_id": 42, "key_id": 421, "organization_id": 5,
                 "prompt_tokens": 100, "completion_tokens": 1, "total_tokens": 101},
                {"created": earlier, "user_id": 43, "key_id": 431, "organization_id": 6,
                 "prompt_tokens": 1000, "total_tokens": 1000},
                # Errors do not count.
                {"created": earlier, "user_id": 41, "key_id": 411, "organization_id": 5,
                 "status": 429, "prompt_tokens": 9999, "total_tokens": 9999},
            ])

            def totals(**params):
                r = get(g, usage_path(now - 2 * DAY, now + 1, **params))
                self.assertEqual(r.status, 200, r.body)
                return [(b["start_time"], b["requests"], b["total_tokens"])
                        for b in r.json()["data"] if b["requests"]]
            self.assertEqual(totals(user_id=41), [(day_of(now), 1, 7),
                                                  (day_of(yesterday), 1, 10)])
            self.assertEqual(totals(user_id=41, key_id=412), [(day_of(yesterday), 1, 10)])
            self.assertEqual(totals(organization_id=5), [(day_of(now), 2, 108),
                                                         (day_of(yesterday), 1, 10)])
            self.assertEqual(totals(organization_id=5, user_id=42), [(day_of(now), 1, 101)])
            self.assertEqual(totals(organization_id=6), [(day_of(now), 1, 1000)])
            self.assertEqual(totals(user_id=44), [])
            r = get(g, usage_path(now - DAY, now + 1, user_id=41))
            self.assertAlmostEqual(r.json()["data"][0]["cost"], 0.5)

    def test_bad_parameters(self):
        now = int(time.time())
        with self.gateway() as g:
            cases = [
                ("/v1/usage?end_time=%d" % now, "start_time"),
                ("/v1/usage?start_time=%d" % now, "end_time"),
                (usage_path(now, now - 1), "end_time"),
                (usage_path(now - 367 * DAY, now), "end_time"),
                (usage_path("yesterday", now), "start_time"),
                (usage_path(now - DAY, now, endpoint="/v1/nothing"), "endpoint"),
                (usage_path(now - DAY, now, key_id="abc"), "key_id"),
                (usage_path(now - DAY, now, user_id=0), "user_id"),
                (usage_path(now - DAY, now, organization_id=-3), "organization_id"),
                (usage_path(now - DAY, now, limit=0), "limit"),
                (usage_path(now - DAY, now, offset=-1), "offset"),
                ("/v1/me/usage?limit=101", "limit"),
                ("/v1/me/usage?start_time=%d&end_time=%d" % (now, now - 5), "end_time"),
                ("/v1/me/usage?endpoint=chat", "endpoint"),
            ]
            for path, field in cases:
                r = get(g, path)
                self.assertEqual(r.status, 422, (path, r.body))
                self.assertIn(field, r.json()["detail"], path)
            # A span of 366 days is the most.
            self.assertEqual(get(g, usage_path(now - 366 * DAY, now)).status, 200)
            # An empty range has no bucket.
            r = get(g, usage_path(now, now))
            self.assertEqual((r.status, r.json()["data"]), (200, []))
            for path in ("/v1/usage?start_time=0&end_time=1", "/v1/me/usage"):
                self.assertEqual(g.request("GET", path).status, 401)
                self.assertEqual(get(g, path, {"Authorization": "Bearer nope"}).status, 401)

    def test_bucket_pages(self):
        now = int(time.time())
        with self.gateway() as g:
            r = get(g, usage_path(now - 9 * DAY, now, offset=2, limit=3))
            days = [b["start_time"] for b in r.json()["data"]]
            top = day_of(now - 1)
            self.assertEqual(days, [top - 2 * DAY, top - 3 * DAY, top - 4 * DAY])
            r = get(g, usage_path(now - 9 * DAY, now, offset=9, limit=5))
            self.assertEqual(len(r.json()["data"]), 1 if now % DAY else 0, r.body)
            r = get(g, usage_path(now - 9 * DAY, now, offset=40))
            self.assertEqual(r.json()["data"], [])


class Users(ApiCase):
    """Callers with user ids (the good test plugin: user 7, and user 1 who is
    an admin): each sees its own calls only; an admin sees anyone's."""

    def test_a_user_sees_only_its_rows(self):
        with self.gateway(auth=False) as g:
            mine = [self.prefix + "u7-%d" % i for i in range(3)]
            theirs = [self.prefix + "u1-%d" % i for i in range(2)]
            for rid in mine:
                self.assertEqual(chat(g, rid, headers=USER7).status, 200)
            for rid in theirs:
                self.assertEqual(chat(g, rid, headers=ADMIN1).status, 200)
            wait_rows(self, self.pg, self.prefix, 5)
            now = int(time.time())

            def me(headers):
                r = get(g, "/v1/me/usage?limit=100", headers)
                self.assertEqual(r.status, 200, r.body)
                return [x["request_id"] for x in r.json()["data"]]

            def today(headers, **params):
                r = get(g, usage_path(day_of(now), now + 1, **params), headers)
                self.assertEqual(r.status, 200, r.body)
                return r.json()["data"][0]["requests"]
            self.assertEqual(me(USER7), list(reversed(mine)))
            self.assertEqual(me(ADMIN1), list(reversed(theirs)))
            self.assertEqual(today(USER7), 3)
            self.assertEqual(today(USER7, user_id=7), 3)
            self.assertEqual(today(ADMIN1), 2)
            self.assertEqual(today(ADMIN1, user_id=7), 3)
            # Somebody else's rows are an admin's business only.
            for params in ({"user_id": 1}, {"organization_id": 1}):
                r = get(g, usage_path(day_of(now), now + 1, **params), USER7)
                self.assertEqual(r.status, 403, r.body)
            row = self.pg.psql("SELECT user_id, user_name FROM usage WHERE request_id = '%s'"
                               % mine[0])
            self.assertEqual(row, [["7", "alice"]])


class RealKeys(ApiCase):
    """Users, organizations and keys of the auth plugin: each user sees its
    own calls; the master key sees anyone's by user or organization."""

    def admin(self, g, path, body):
        r = g.request("POST", path, body, headers=AUTH)
        self.assertIn(r.status, (200, 201), r.body)
        return r.json()

    def test_users_see_their_own_rows(self):
        with self.gateway() as g:
            model_id = int(self.pg.psql("SELECT id FROM model WHERE name = 'priced'")[0][0])
            role = self.admin(g, "/v1/admin/roles", {
                "name": "callers", "permissions": [],
                "limits": [{"model_id": model_id, "type": "rpm", "value": None}]})["id"]
            orgs = {o: self.admin(g, "/v1/admin/organizations", {"name": "org-" + o})["id"]
                    for o in ("a", "b")}
            people = {}
            for who, org in (("alice", "a"), ("bob", "a"), ("carol", "b")):
                user = self.admin(g, "/v1/admin/users", {
                    "email": who + "@example.org", "role_id": role,
                    "organization_id": orgs[org]})["id"]
                key = self.admin(g, "/v1/admin/keys", {"name": who + "-key", "user": user})
                people[who] = {"user": user, "org": orgs[org], "key_id": key["id"],
                               "auth": {"Authorization": "Bearer " + key["value"]}}
            # A new role reaches the auth plugin's cache within a few seconds.
            deadline = time.monotonic() + 15
            for p in people.values():
                while (get(g, "/v1/models/priced", p["auth"]).status != 200
                       and time.monotonic() < deadline):
                    time.sleep(0.1)
            calls = {"alice": 3, "bob": 2, "carol": 1}
            for who, n in calls.items():
                for i in range(n):
                    r = chat(g, "%s%s-%d" % (self.prefix, who, i), headers=people[who]["auth"])
                    self.assertEqual(r.status, 200, r.body)
            wait_rows(self, self.pg, self.prefix, 6)
            now = int(time.time())

            for who, p in people.items():
                row = self.pg.psql(
                    "SELECT user_id, key_id, organization_id, user_name, key_name FROM usage "
                    "WHERE request_id = '%s%s-0'" % (self.prefix, who))
                self.assertEqual(row, [[str(p["user"]), str(p["key_id"]), str(p["org"]),
                                        who + "@example.org", who + "-key"]])

            def requests(headers, **params):
                r = get(g, usage_path(day_of(now), now + 1, **params), headers)
                self.assertEqual(r.status, 200, r.body)
                return r.json()["data"][0]["requests"]
            alice, bob = people["alice"], people["bob"]
            r = get(g, "/v1/me/usage?limit=100", alice["auth"])
            self.assertEqual([x["request_id"] for x in r.json()["data"]],
                             ["%salice-%d" % (self.prefix, i) for i in (2, 1, 0)])
            self.assertEqual({x["key"] for x in r.json()["data"]}, {"alice-key"})
            self.assertEqual(requests(alice["auth"]), 3)
            self.assertEqual(requests(alice["auth"], key_id=alice["key_id"]), 3)
            self.assertEqual(requests(alice["auth"], key_id=bob["key_id"]), 0)
            self.assertEqual(requests(bob["auth"]), 2)
            for params in ({"user_id": bob["user"]}, {"organization_id": alice["org"]}):
                r = get(g, usage_path(day_of(now), now + 1, **params), alice["auth"])
                self.assertEqual(r.status, 403, r.body)
            self.assertEqual(requests(AUTH, organization_id=alice["org"]), 5)
            self.assertEqual(requests(AUTH, organization_id=people["carol"]["org"]), 1)
            self.assertEqual(requests(AUTH, user_id=people["carol"]["user"]), 1)


# ---------------------------------------------------------------------------
# A million rows

# One row every 31.5 s over the last 365 days, in monthly tables made apart
# and attached to usage afterwards (PostgreSQL then builds their indexes in
# one go, from the partitioned indexes of the migrations: much faster than
# a million inserts through them). Users 1..997, one call in a hundred by
# the master key (NULL user), organizations of ten users, three keys each.
LOAD_SQL = r"""
SET maintenance_work_mem = '256MB';
DO $$
DECLARE
	step constant double precision := 31.5;
	t0 timestamptz := now();
	m timestamp;
	part text;
	lo bigint;
	hi bigint;
BEGIN
	FOR k IN 0..13 LOOP
		m := date_trunc('month', t0 AT TIME ZONE 'UTC') - make_interval(months => k);
		part := 'usage_p' || to_char(m, 'YYYYMM');
		lo := greatest(1, floor(extract(epoch FROM t0 - ((m + interval '1 month')
						       AT TIME ZONE 'UTC')) / step));
		hi := least(1000000, ceil(extract(epoch FROM t0 - (m AT TIME ZONE 'UTC')) / step));
		EXECUTE format('DROP TABLE IF EXISTS %I', part);
		EXECUTE format('CREATE TABLE %I (LIKE usage INCLUDING DEFAULTS)', part);
		CONTINUE WHEN hi < lo;
		EXECUTE format($f$INSERT INTO %I (record_id, request_id, created, endpoint, method,
			status, user_id, key_id, organization_id, user_name, key_name, model_id,
			model_name, provider_id, provider_type, provider_model, prompt_tokens,
			completion_tokens, total_tokens, latency_ms, ttft_ms, cost, kwh, kgco2eq)
		SELECT 'bulk-' || i, 'bulk-' || i, c,
			CASE WHEN i %% 10 = 3 THEN '/v1/embeddings' ELSE '/v1/chat/completions' END,
			'POST', CASE WHEN i %% 50 = 7 THEN 500 ELSE 200 END,
			u, u * 10 + i %% 3, u / 10, 'user' || u, 'key' || (u * 10 + i %% 3),
			1 + i %% 4, 'model-' || (i %% 4), 1, 'mock', 'up',
			i %% 100, i %% 37, i %% 100 + i %% 37, 100 + i %% 900,
			CASE WHEN i %% 2 = 0 THEN 50 END,
			(i %% 100) * 1e-6, (i %% 37) * 1e-7, (i %% 37) * 1e-8
		FROM generate_series($1, $2) i,
			LATERAL (SELECT $3 - i * make_interval(secs => $4) AS c,
				 CASE WHEN i %% 100 = 0 THEN NULL ELSE 1 + i %% 997 END AS u) x
		WHERE c >= $5 AND c < $6$f$, part)
		USING lo, hi, t0, step, m AT TIME ZONE 'UTC', (m + interval '1 month') AT TIME ZONE 'UTC';
		EXECUTE format('ALTER TABLE usage ATTACH PARTITION %I FOR VALUES FROM (%L) TO (%L)',
			part, m::date::text || ' 00:00:00+00',
			(m + interval '1 month')::date::text || ' 00:00:00+00');
	END LOOP;
END
$$;
ANALYZE usage;
"""

# How the gateway's two statements begin (auto_explain logs their text).
BUCKETS_SQL = "WITH agg AS (SELECT floor(extract(epoch FROM created) / 86400)"
ROWS_SQL = "SELECT json_build_object('object', 'list', 'data', coalesce(json_agg(" \
           "json_build_object('object', 'me.usage'"


def plan_nodes(node):
    yield node
    for child in node.get("Plans", []):
        yield from plan_nodes(child)


class MillionRows(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.pg = PgCluster().start()
        cls.journal = tempfile.mkdtemp(prefix="llmgate-usage-journal-")
        try:
            # Once for the migrations, then the rows, then the gateway again
            # with auto_explain in every new session.
            with lgtest.Gateway(config(cls.journal), pg=cls.pg,
                                env={"LLMGATE_PLUGIN_PATH": common.test_plugins_path()}):
                pass
            cls.pg.psql(LOAD_SQL)
            with open(os.path.join(cls.pg.data, "postgresql.conf"), "a") as f:
                f.write("session_preload_libraries = 'auto_explain'\n"
                        "auto_explain.log_min_duration = 0\n"
                        "auto_explain.log_format = json\n")
            cls.pg.psql("SELECT pg_reload_conf()")
            cls.g = lgtest.Gateway(config(cls.journal), pg=cls.pg,
                                   env={"LLMGATE_PLUGIN_PATH": common.test_plugins_path()})
            cls.g.start()
        except Exception:
            cls.tearDownClass()
            raise

    @classmethod
    def tearDownClass(cls):
        rc, log = 0, ""
        if getattr(cls, "g", None):
            rc, log = cls.g.stop(30), cls.g.log()
            cls.g.close()
        cls.pg.destroy()
        shutil.rmtree(cls.journal, True)
        if rc != 0:
            raise AssertionError("llmgate exited with %r\n%s" % (rc, log[-4000:]))

    def test_a_million_rows(self):
        self.assertEqual(self.pg.psql("SELECT count(*) FROM usage"), [["1000000"]])
        self.assertEqual(self.pg.psql("SELECT count(*) FROM usage_default"), [["0"]])

    def plans(self, since, prefix):
        """The plans of statements starting with @prefix logged after @since."""
        found = []
        deadline = time.monotonic() + 10
        while not found and time.monotonic() < deadline:
            log = self.pg.server_log()[since:]
            pos = 0
            while True:
                pos = log.find("plan:", pos)
                if pos < 0:
                    break
                start = log.find("{", pos)
                try:
                    plan, end = json.JSONDecoder().raw_decode(log, start)
                except ValueError:
                    pos += 5
                    continue
                pos = end
                if plan.get("Query Text", "").startswith(prefix):
                    found.append(plan)
            if not found:
                time.sleep(0.1)
        return found

    def ask(self, path, headers, prefix):
        """Answers @path and checks the plan of the statement behind it."""
        since = len(self.pg.server_log())
        t = time.monotonic()
        r = self.g.request("GET", path, headers=headers, timeout=120)
        elapsed = time.monotonic() - t
        self.assertEqual(r.status, 200, r.body)
        plans = self.plans(since, prefix)
        self.assertEqual(len(plans), 1, "no plan logged for %s" % path)
        nodes = list(plan_nodes(plans[0]["Plan"]))
        scans = [(n["Node Type"], n.get("Relation Name"), n.get("Index Name")) for n in nodes
                 if "Relation Name" in n or "Index Name" in n]
        seq = [s for s in scans if s[0] == "Seq Scan" and s[1].startswith("usage")]
        self.assertEqual(seq, [], "%s: sequential scans in %s" % (path, scans))
        indexes = {s[2] for s in scans if s[2]}
        self.assertTrue(indexes, "%s: no index in %s" % (path, scans))
        # Generous: a sequential plan is what fails, not a slow machine.
        self.assertLess(elapsed, 30, path)
        return r.json()["data"], indexes

    def expected_buckets(self, where, start, end):
        rows = self.pg.psql(
            "SELECT floor(extract(epoch FROM created) / 86400)::bigint * 86400, count(*), "
            "sum(prompt_tokens), sum(completion_tokens), sum(total_tokens) FROM usage "
            "WHERE %s AND status BETWEEN 200 AND 299 AND created >= to_timestamp(%d) "
            "AND created < to_timestamp(%d) GROUP BY 1 ORDER BY 1 DESC" % (where, start, end))
        return [[int(x) for x in r] for r in rows]

    def check_buckets(self, params, headers, where, index):
        now = int(time.time())
        start = now - 365 * DAY
        data, indexes = self.ask(usage_path(start, now, **params), headers, BUCKETS_SQL)
        got = [[b["start_time"], b["requests"], b["prompt_tokens"], b["completion_tokens"],
                b["total_tokens"]] for b in data if b["requests"]]
        self.assertEqual(got, self.expected_buckets(where, start, now))
        self.assertGreater(len(got), 300)
        self.assertTrue(any(index in i for i in indexes), (index, indexes))

    def test_buckets_of_a_user(self):
        self.check_buckets({"user_id": 7}, AUTH, "user_id = 7", "user_id_created")

    def test_buckets_of_an_organization(self):
        self.check_buckets({"organization_id": 3}, AUTH, "organization_id = 3",
                           "organization_id_created")

    def test_buckets_of_a_key(self):
        self.check_buckets({"key_id": 71}, USER7, "user_id = 7 AND key_id = 71",
                           "_created")

    def test_buckets_of_the_master_key(self):
        self.check_buckets({}, AUTH, "user_id IS NULL", "user_id_created")

    def check_rows(self, path, headers, where):
        data, _ = self.ask(path, headers, ROWS_SQL)
        expected = self.pg.psql(
            "SELECT request_id FROM usage WHERE %s AND status BETWEEN 200 AND 299 "
            "AND created >= now() - interval '30 days' ORDER BY created DESC, record_id DESC "
            "OFFSET 20 LIMIT 50" % where)
        self.assertEqual([x["request_id"] for x in data], [r[0] for r in expected])
        self.assertEqual(len(data), 50)

    def test_rows_of_a_user(self):
        self.check_rows("/v1/me/usage?offset=20&limit=50", USER7, "user_id = 7")

    def test_rows_of_the_master_key(self):
        self.check_rows("/v1/me/usage?offset=20&limit=50", AUTH, "user_id IS NULL")


if __name__ == "__main__":
    lgtest.main()
