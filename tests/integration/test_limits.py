#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Rate limits of the auth plugin: the four limit types with the spec's 429
messages and x-ratelimit-* headers, admins exempt, two instances sharing
one PostgreSQL within the bound of docs/limits.md, and limits kept while
PostgreSQL is down."""
import itertools
import json
import re
import threading
import time
import unittest

import common
import lgtest
from pgcluster import PgCluster

MASTER = "master-key-for-limits-tests-5c1e9b"
ADMIN = {"Authorization": "Bearer " + MASTER}
CHAT = "/v1/chat/completions"
SYNC_MS = 100
WAIT = 30                   # seconds for anything asynchronous (sanitizers, loaded host)
RESET_RE = re.compile(r"^(\d+h)?(\d+m)?\d+s$")

_names = itertools.count(1)


def config(models, **auth):
    auth = dict({"master_key": MASTER, "limits_sync_interval": "%dms" % SYNC_MS}, **auth)
    return {"plugins": {"auth": auth, "mock": {}}, "models": models}


def mock_model(name, cost_prompt=0, cost_completion=0):
    return {"name": name, "type": "text-generation",
            "cost_prompt_tokens": cost_prompt, "cost_completion_tokens": cost_completion,
            "providers": [{"type": "mock", "url": "http://mock.invalid",
                           "model_name": "mock-model"}]}


def wait_until(what, fn, timeout=WAIT, step=0.05):
    deadline = time.time() + timeout
    while True:
        value = fn()
        if value:
            return value
        if time.time() > deadline:
            raise AssertionError("timed out waiting for " + what)
        time.sleep(step)


def make_user(pg, gw, model, limits, admin=False, budget=None):
    """A role with @limits ({"rpm": 3, "tpd": None...}) on @model, a user of
    it and a key. Returns (user_id, key)."""
    n = next(_names)
    role = "role-%d-%d" % (n, time.time_ns())
    rows = pg.psql("INSERT INTO role (name) VALUES ('%s') RETURNING id" % role)
    role_id = int(rows[0][0])
    if admin:
        pg.psql("INSERT INTO permission (role_id, permission) VALUES (%d, 'admin')" % role_id)
    for kind, value in limits.items():
        pg.psql("INSERT INTO role_limit (role_id, model_id, type, value) "
                "SELECT %d, id, '%s', %s FROM model WHERE name = '%s'"
                % (role_id, kind, "NULL" if value is None else int(value), model))
    rows = pg.psql("INSERT INTO \"user\" (email, role_id, organization_id, budget) "
                   "SELECT '%s@example.org', %d, id, %s FROM organization WHERE name = 'default' "
                   "RETURNING id" % (role, role_id, "NULL" if budget is None else budget))
    user_id = int(rows[0][0])
    r = gw.request("POST", "/v1/admin/keys", {"name": "k", "user": user_id}, headers=ADMIN)
    if r.status != 201:
        raise AssertionError("key creation: %d %s" % (r.status, r.body))
    body = r.json()
    key = body.get("key") or body.get("token") or body["value"]
    return user_id, key


def wait_model_visible(gw, key, model):
    """The roles snapshot reached the gateway: the key sees the model."""
    def visible():
        r = gw.request("GET", "/v1/models", headers={"Authorization": "Bearer " + key})
        return r.status == 200 and any(m.get("id") == model for m in r.json().get("data", []))
    wait_until("model %s visible" % model, visible)


def chat(gw, key, model, content="hello there", max_tokens=None, timeout=30):
    body = {"model": model, "messages": [{"role": "user", "content": content}]}
    if max_tokens is not None:
        body["max_tokens"] = max_tokens
    return gw.request("POST", CHAT, body, headers={"Authorization": "Bearer " + key},
                      timeout=timeout)


def fresh_window(margin=12):
    """Sleep into the next minute when the current one ends within @margin
    seconds, so that a test's requests share one minute window."""
    into = time.time() % 60
    if into > 60 - margin:
        time.sleep(60 - into + 0.5)


def rate_count(pg, user_id, kind):
    """The shared count of the current window, or -1 while PostgreSQL is away."""
    try:
        rows = pg.psql("SELECT COALESCE(sum(count), 0) FROM rate_counter WHERE user_id = %d "
                   "AND type = '%s' AND window_start = date_trunc('%s', now())"
                       % (user_id, kind, "minute" if kind in ("rpm", "tpm") else "day"))
    except Exception:       # noqa: BLE001 - psql failing is what we poll past
        return -1
    return int(rows[0][0])


def stopped_cleanly(gw):
    """Stops @gw; a sanitizer report (or any failure) makes the exit status
    non-zero."""
    rc = gw.stop()
    if rc != 0:
        raise AssertionError("llmgate exited with %s:\n%s" % (rc, gw.log()[-6000:]))


class Limits(unittest.TestCase):
    MODEL = "lim"

    @classmethod
    def setUpClass(cls):
        cls.pg = PgCluster().start()
        cls.gw = lgtest.Gateway(config([mock_model(cls.MODEL)]), pg=cls.pg).start()
        cls.gw.wait_ready()

    @classmethod
    def tearDownClass(cls):
        try:
            stopped_cleanly(cls.gw)
        finally:
            cls.pg.destroy()

    def user(self, limits, admin=False):
        user_id, key = make_user(self.pg, self.gw, self.MODEL, limits, admin=admin)
        wait_model_visible(self.gw, key, self.MODEL)
        return user_id, key

    def assert_429(self, r, message):
        self.assertEqual(r.status, 429, r.body)
        self.assertEqual(r.json()["detail"], message)
        retry = int(r.headers["Retry-After"])
        self.assertGreaterEqual(retry, 1)
        return retry

    def test_rpm_headers_and_429(self):
        _, key = self.user({"rpm": 3, "tpm": 100000})
        fresh_window()
        for left in (2, 1, 0):
            r = chat(self.gw, key, self.MODEL)
            self.assertEqual(r.status, 200, r.body)
            self.assertEqual(r.headers["x-ratelimit-limit-request"], "3")
            self.assertEqual(r.headers["x-ratelimit-remaining-request"], str(left))
            self.assertRegex(r.headers["x-ratelimit-reset-requests"], RESET_RE)
            self.assertEqual(r.headers["x-ratelimit-limit-token"], "100000")
            self.assertLess(int(r.headers["x-ratelimit-remaining-token"]), 100000)
            self.assertRegex(r.headers["x-ratelimit-reset-token"], RESET_RE)
        r = chat(self.gw, key, self.MODEL)
        self.assertLessEqual(self.assert_429(r, "Request limit per minute exceeded."), 60)
        self.assertEqual(r.headers["x-ratelimit-remaining-request"], "0")
        self.assertEqual(r.headers["x-ratelimit-limit-request"], "3")

    def test_rpd(self):
        _, key = self.user({"rpd": 2})
        for _ in range(2):
            r = chat(self.gw, key, self.MODEL)
            self.assertEqual(r.status, 200, r.body)
            # No RPM and no token limit: the spec prints None.
            self.assertEqual(r.headers["x-ratelimit-limit-request"], "None")
            self.assertEqual(r.headers["x-ratelimit-remaining-request"], "None")
            self.assertEqual(r.headers["x-ratelimit-limit-token"], "None")
        r = chat(self.gw, key, self.MODEL)
        self.assertLessEqual(self.assert_429(r, "Request limit per day exceeded."), 86400)

    def test_tpm(self):
        _, key = self.user({"tpm": 60})
        fresh_window()
        # A small prompt fits (its estimate is ceil(bytes / 4)); the mock's
        # reply tokens are then counted too.
        r = chat(self.gw, key, self.MODEL)
        self.assertEqual(r.status, 200, r.body)
        self.assertEqual(r.headers["x-ratelimit-limit-token"], "60")
        self.assertRegex(r.headers["x-ratelimit-reset-token"], r"^(\d+m)?\d+s$")
        # 400 bytes of prompt are at least 100 tokens: refused at once.
        r = chat(self.gw, key, self.MODEL, content="x" * 400)
        self.assertLessEqual(self.assert_429(r, "Token limit per minute exceeded."), 60)
        self.assertEqual(r.headers["x-ratelimit-limit-token"], "60")

    def test_tpd_and_order(self):
        # Both the day's tokens and the minute's requests are exceeded by
        # the second call: the token limit is reported (order TPM, TPD,
        # RPM, RPD).
        _, key = self.user({"tpd": 80, "rpm": 1})
        fresh_window()
        r = chat(self.gw, key, self.MODEL)
        self.assertEqual(r.status, 200, r.body)
        self.assertEqual(r.headers["x-ratelimit-limit-token"], "80")
        self.assertRegex(r.headers["x-ratelimit-reset-token"], RESET_RE)
        r = chat(self.gw, key, self.MODEL, content="y" * 400)
        self.assert_429(r, "Token limit per day exceeded.")
        r = chat(self.gw, key, self.MODEL)
        self.assert_429(r, "Request limit per minute exceeded.")

    def test_tokens_counted_at_completion(self):
        # tpm 40: each call reserves its estimate, then counts its real
        # prompt + completion tokens; calls go on until the tokens used
        # leave less than the next estimate.
        _, key = self.user({"tpm": 40})
        fresh_window()
        used = 0
        for _ in range(20):
            r = chat(self.gw, key, self.MODEL, max_tokens=3)
            if r.status == 429:
                self.assertEqual(r.json()["detail"], "Token limit per minute exceeded.")
                break
            self.assertEqual(r.status, 200, r.body)
            u = r.json()["usage"]
            used += u["prompt_tokens"] + u["completion_tokens"]
        else:
            self.fail("never limited")
        self.assertEqual(int(r.headers["x-ratelimit-remaining-token"]), max(0, 40 - used))

    def test_admins_exempt(self):
        _, key = self.user({"rpm": 1}, admin=True)
        for _ in range(4):
            r = chat(self.gw, key, self.MODEL)
            self.assertEqual(r.status, 200, r.body)
            self.assertNotIn("x-ratelimit-limit-request", r.headers)
        for _ in range(3):
            r = chat(self.gw, MASTER, self.MODEL)
            self.assertEqual(r.status, 200, r.body)

    def test_concurrent_burst_exact_on_one_instance(self):
        _, key = self.user({"rpm": 7})
        fresh_window()
        statuses = []
        lock = threading.Lock()

        def one():
            r = chat(self.gw, key, self.MODEL)
            with lock:
                statuses.append(r.status)
        threads = [threading.Thread(target=one) for _ in range(25)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        self.assertEqual(statuses.count(200), 7, statuses)
        self.assertEqual(statuses.count(429), 18, statuses)


class TwoInstances(unittest.TestCase):
    MODEL = "shared"
    LIMIT = 10

    @classmethod
    def setUpClass(cls):
        cls.pg = PgCluster().start()
        cfg = config([mock_model(cls.MODEL)])
        cls.a = lgtest.Gateway(cfg, pg=cls.pg).start()
        cls.b = lgtest.Gateway(cfg, pg=cls.pg).start()
        cls.a.wait_ready()
        cls.b.wait_ready()

    @classmethod
    def tearDownClass(cls):
        try:
            stopped_cleanly(cls.a)
            stopped_cleanly(cls.b)
        finally:
            cls.pg.destroy()

    def user(self):
        user_id, key = make_user(self.pg, self.a, self.MODEL, {"rpm": self.LIMIT})
        wait_model_visible(self.a, key, self.MODEL)
        wait_model_visible(self.b, key, self.MODEL)
        return user_id, key

    def test_second_instance_starts_from_the_shared_count(self):
        user_id, key = self.user()
        fresh_window(margin=20)
        for _ in range(6):
            self.assertEqual(chat(self.a, key, self.MODEL).status, 200)
        wait_until("A's count in rate_counter", lambda: rate_count(self.pg, user_id, "rpm") == 6)
        admitted_b = 0
        for _ in range(self.LIMIT):
            r = chat(self.b, key, self.MODEL)
            if r.status == 429:
                self.assertEqual(r.json()["detail"], "Request limit per minute exceeded.")
                break
            self.assertEqual(r.status, 200, r.body)
            admitted_b += 1
        # Everything A admitted was synchronised before B's first call:
        # the bound adds nothing, the pair is exact.
        self.assertEqual(admitted_b, self.LIMIT - 6)
        # A learns B's admissions at its next sync and refuses too.
        wait_until("A refusing", lambda: chat(self.a, key, self.MODEL).status == 429)

    def test_concurrent_burst_on_both_within_bound(self):
        user_id, key = self.user()
        fresh_window(margin=15)
        statuses = {"a": [], "b": []}
        lock = threading.Lock()

        def one(name, gw):
            r = chat(gw, key, self.MODEL)
            with lock:
                statuses[name].append(r.status)
        threads = [threading.Thread(target=one, args=(n, g))
                   for _ in range(15) for n, g in (("a", self.a), ("b", self.b))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        a_ok, b_ok = statuses["a"].count(200), statuses["b"].count(200)
        # docs/limits.md: the pair exceeds the limit by at most what the
        # other instance admitted within two sync periods; each instance
        # alone never exceeds it. So: at least the limit, at most twice it.
        self.assertLessEqual(a_ok, self.LIMIT)
        self.assertLessEqual(b_ok, self.LIMIT)
        self.assertGreaterEqual(a_ok + b_ok, self.LIMIT)
        self.assertLessEqual(a_ok + b_ok, 2 * self.LIMIT)
        for s in statuses["a"] + statuses["b"]:
            self.assertIn(s, (200, 429))
        # Once both synchronised, the shared count is the sum and both refuse.
        wait_until("shared count", lambda: rate_count(self.pg, user_id, "rpm") == a_ok + b_ok)
        wait_until("A refusing", lambda: chat(self.a, key, self.MODEL).status == 429)
        wait_until("B refusing", lambda: chat(self.b, key, self.MODEL).status == 429)

    def test_paced_alternation_exact(self):
        # Calls alternate between the instances with a pause longer than two
        # sync periods: each instance knows all the other admitted.
        user_id, key = self.user()
        fresh_window(margin=30)
        admitted = 0
        for i in range(self.LIMIT + 4):
            gw = self.a if i % 2 == 0 else self.b
            r = chat(gw, key, self.MODEL)
            self.assertIn(r.status, (200, 429), r.body)
            if r.status == 200:
                admitted += 1
            wait_until("synchronised", lambda: rate_count(self.pg, user_id, "rpm") == admitted)
            time.sleep(3 * SYNC_MS / 1000.0)
        self.assertEqual(admitted, self.LIMIT)


SYNC_USERS_RE = re.compile(r"parameters: \$1 = '\{([0-9,]*)\}'")


class SyncRows(unittest.TestCase):
    """A sync sends the counters that changed here or were checked here
    recently, not every counter alive that day; a counter left out is read
    again before its next check."""
    MODEL = "lim"
    IDLE = 10               # seconds, REFRESH_IDLE_MS in limits.c

    def synced_users(self, log):
        """The user ids of every sync statement in @log."""
        ids = set()
        for m in SYNC_USERS_RE.finditer(log):
            ids.update(int(x) for x in m.group(1).split(",") if x)
        return ids

    def test_idle_counters_are_not_resent(self):
        with PgCluster() as pg:
            pg.psql("ALTER SYSTEM SET log_min_duration_statement = 0")
            pg.psql("SELECT pg_reload_conf()")
            with lgtest.Gateway(config([mock_model(self.MODEL)]), pg=pg) as gw:
                gw.wait_ready()
                user_id, key = make_user(pg, gw, self.MODEL, {"rpd": 2})
                wait_model_visible(gw, key, self.MODEL)
                self.assertEqual(chat(gw, key, self.MODEL).status, 200)
                wait_until("the count synchronised", lambda: rate_count(pg, user_id, "rpd") == 1)
                wait_until("the counter in a sync",
                           lambda: user_id in self.synced_users(pg.server_log()))
                # Idle here: after REFRESH_IDLE_MS it is no longer sent.
                time.sleep(self.IDLE + 2)
                start = len(pg.server_log())
                time.sleep(20 * SYNC_MS / 1000.0)
                self.assertNotIn(user_id, self.synced_users(pg.server_log()[start:]))
                # Another instance's count (a row written directly here)
                # is read before the next call is checked: the day's
                # limit of 2 is reached already.
                pg.psql("UPDATE rate_counter SET count = count + 1 WHERE user_id = %d "
                        "AND type = 'rpd'" % user_id)
                r = chat(gw, key, self.MODEL)
                self.assertEqual(r.status, 429, r.body)
                self.assertEqual(r.json()["detail"], "Request limit per day exceeded.")
                stopped_cleanly(gw)


class DatabaseDown(unittest.TestCase):
    MODEL = "lim"

    def test_limits_kept_while_postgres_is_down(self):
        with PgCluster() as pg:
            with lgtest.Gateway(config([mock_model(self.MODEL)]), pg=pg) as gw:
                gw.wait_ready()
                user_id, key = make_user(pg, gw, self.MODEL, {"rpm": 4})
                wait_model_visible(gw, key, self.MODEL)
                fresh_window(margin=25)
                self.assertEqual(chat(gw, key, self.MODEL).status, 200)
                wait_until("first count synchronised", lambda: rate_count(pg, user_id, "rpm") == 1)
                pg.stop()
                for _ in range(3):
                    r = chat(gw, key, self.MODEL)
                    self.assertEqual(r.status, 200, r.body)
                r = chat(gw, key, self.MODEL)
                self.assertEqual(r.status, 429, r.body)
                self.assertEqual(r.json()["detail"], "Request limit per minute exceeded.")
                pg.pg_ctl_start()
                # The deltas counted meanwhile reach the table once it is back.
                wait_until("deltas pushed after the outage",
                           lambda: rate_count(pg, user_id, "rpm") == 4, timeout=60, step=0.5)
                self.assertIn("counting locally", gw.log())
                stopped_cleanly(gw)


if __name__ == "__main__":
    lgtest.main()
