#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""API keys on the request path: junk keys are refused without asking
PostgreSQL (malformed ones and made-up ones, whose tag the server secret
did not make, never reach it; unknown authentic ones are remembered);
revocation is immediate on this instance and within a second on another;
while PostgreSQL is down cached keys keep working and an unknown key gets
503; an expired account gets 403 except on GET /v1/me; keys never reach the
log; SQL metacharacters in the bearer token are only a bad key."""
import base64
import hashlib
import os
import threading
import time
import unittest

import common  # noqa: F401 (sets the path to tests/lib)
import lgtest
from pgcluster import PgCluster

MASTER = "master-key-for-key-tests-93b1"
ADMIN_PASSWORD = "bootstrap-password-for-key-tests"
SQL_CORPUS = ["'", "''", "\";--", "\\", "$$", "%", "_", "/*", "1;DROP TABLE x",
              "' OR '1'='1", "sk-' OR '1'='1", "%00", "x" * 10000]


def models():
    return [{"name": "m1", "type": "text-generation",
             "providers": [{"type": "mock", "url": "http://mock.invalid",
                            "model_name": "mock-model"}]}]


def config(**auth):
    auth = dict({"master_key": MASTER, "bootstrap_admin_password": ADMIN_PASSWORD}, **auth)
    return {"plugins": {"auth": auth, "mock": {}}, "models": models()}


def bearer(key):
    return {"Authorization": "Bearer " + key}


def models_status(g, key):
    return g.request("GET", "/v1/models", headers=bearer(key)).status


def new_key(g):
    r = g.request("POST", "/v1/auth/login",
                  body={"email": "admin", "password": ADMIN_PASSWORD})
    assert r.status == 200, r
    return r.json()


def forged(key, keep):
    """A well-formed key sharing the first @keep characters of @key: its
    tag is wrong."""
    tail = "".join("A" if c != "A" else "B" for c in key[keep:-1]) + "A"
    return key[:keep] + tail


def hashing_secret(master):
    """The secret keys are tagged and hashed with, as auth.c derives it."""
    return hashlib.blake2b(master.encode(), digest_size=32,
                           key=b"llmgate auth: API key hashing secret v1").digest()


def authentic(master=MASTER):
    """A key the server could have made (its tag is right) but did not."""
    raw = os.urandom(32)
    tag = hashlib.blake2b(raw, digest_size=32, key=hashing_secret(master),
                          person=b"llmgate:key-tag1").digest()[:4]
    return "sk-" + base64.urlsafe_b64encode(raw + tag).decode().rstrip("=")


def made_up():
    """A well-formed key with random characters (and so a wrong tag)."""
    return "sk-" + base64.urlsafe_b64encode(os.urandom(36)).decode()


def xact_commits(pg):
    return int(pg.psql("SELECT xact_commit FROM pg_stat_database "
                       "WHERE datname = current_database()")[0][0])


def wait_status(g, key, status, timeout):
    """Seconds until @key gets @status, or None after @timeout."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if models_status(g, key) == status:
            return time.monotonic() - start
        time.sleep(0.02)
    return None


class Keys(unittest.TestCase):
    def setUp(self):
        self.pg = PgCluster().start()

    def tearDown(self):
        self.pg.destroy()

    def test_junk_keys_never_reach_the_database(self):
        with lgtest.Gateway(config(cache_negative_ttl="60s"), pg=self.pg) as g:
            key = new_key(g)["key"]
            self.assertEqual(len(key), 51)
            self.assertEqual(models_status(g, key), 200)
            unknown = authentic()
            self.assertEqual(models_status(g, unknown), 401)
            self.pg.stop()
            try:
                # Malformed or made up: refused before any lookup, so no 503.
                for junk in ["", "sk-", "sk-abc", key[:-1], key + "A", "sk_" + key[3:],
                             key[:-1] + ("B" if key[-1] != "B" else "C"), forged(key, 20),
                             authentic("another-secret")] + \
                        [made_up() for _ in range(20)] + SQL_CORPUS:
                    r = g.request("GET", "/v1/models", headers=bearer(junk))
                    self.assertEqual(r.status, 401, (junk[:30], r.body))
                    if junk:        # "Bearer " alone loses its blank on the way
                        self.assertEqual(r.json()["detail"], "Invalid API key.")
                # Authentic but known to be unknown: remembered, still 401.
                self.assertEqual(models_status(g, unknown), 401)
                # A cached key keeps working.
                self.assertEqual(models_status(g, key), 200)
                # An authentic key never seen: the database must say, and cannot.
                r = g.request("GET", "/v1/models", headers=bearer(authentic()))
                self.assertEqual(r.status, 503, r.body)
                self.assertEqual(r.json()["detail"],
                                 "The database is not available, please try again later.")
                self.assertIn("Retry-After", r.headers)
            finally:
                self.pg.pg_ctl_start()
            # Once the pool has reconnected, the database answers: unknown.
            self.assertIsNotNone(wait_status(g, authentic(), 401, 30))
            log = g.log()
        self.assertNotIn(key, log)
        self.assertNotIn(key[3:20], log)

    def test_made_up_keys_cost_no_transaction(self):
        """Every distinct made-up key used to cost one query; now none. The
        commits of the database are counted over a quiet period first, so
        that the gateway's own background work is allowed for."""
        window = 12.0   # a busy backend reports its counts within 10 s
        with lgtest.Gateway(config(), pg=self.pg) as g:
            key = new_key(g)["key"]
            self.assertEqual(models_status(g, key), 200)
            time.sleep(1.5)
            c0 = xact_commits(self.pg)
            time.sleep(window)
            c1 = xact_commits(self.pg)
            start = time.monotonic()
            keys = [made_up() for _ in range(200)]
            self.assertEqual(len(set(keys)), 200)
            for k in keys:
                r = g.request("GET", "/v1/models", headers=bearer(k))
                self.assertEqual(r.status, 401, r.body)
                self.assertEqual(r.json()["detail"], "Invalid API key.")
            took = time.monotonic() - start
            time.sleep(window)
            c2 = xact_commits(self.pg)
        background = (c1 - c0) * (took + window) / window
        self.assertLess(c1 - c0, 50, "too much background activity to measure")
        self.assertLess(c2 - c1, background + 25,
                        "made-up keys reached the database: %d commits, %.0f expected"
                        % (c2 - c1, background))

    def test_stale_keys_serve_while_the_database_is_down(self):
        with lgtest.Gateway(config(cache_ttl="0s"), pg=self.pg) as g:
            key = new_key(g)["key"]
            self.assertEqual(models_status(g, key), 200)
            self.pg.stop()
            try:
                # Past its TTL at once: each request asks the database, which
                # is down, so the cached answer is used.
                for _ in range(5):
                    self.assertEqual(models_status(g, key), 200)
            finally:
                self.pg.pg_ctl_start()
            self.pg.psql("UPDATE token SET revoked = true")
            self.assertIsNotNone(wait_status(g, key, 401, 10))

    def test_revocation_on_this_and_another_instance(self):
        with lgtest.Gateway(config(), pg=self.pg) as g1, \
                lgtest.Gateway(config(), pg=self.pg) as g2:
            made = new_key(g1)
            key = made["key"]
            # A login replaces the user's playground key: the other key is
            # an ordinary one.
            r = g2.request("POST", "/v1/keys", body={"name": "other"}, headers=bearer(key))
            self.assertEqual(r.status, 201, r.body)
            other = r.json()["value"]
            for g in (g1, g2):
                self.assertEqual(models_status(g, key), 200)
                self.assertEqual(models_status(g, other), 200)
            self.pg.psql("UPDATE token SET revoked = true, revoked_at = now() WHERE id = %d"
                         % made["id"])
            # Within a second by design; generous bounds for a loaded machine.
            for g in (g1, g2):
                took = wait_status(g, key, 401, 5)
                self.assertIsNotNone(took, "the revoked key still works")
                self.assertEqual(models_status(g, other), 200)

    def test_calls_go_on_while_postgresql_restarts_under_load(self):
        # An ordinary user (a role with limits on the model, no budget)
        # calls without a pause while PostgreSQL is killed and started
        # again: its cached key and the local limits keep every call served.
        with lgtest.Gateway(config(), pg=self.pg) as g:
            admin = bearer(MASTER)
            model_id = g.request("GET", "/v1/admin/routers", headers=admin).json()["data"][0]["id"]
            role = g.request("POST", "/v1/admin/roles", headers=admin, body={
                "name": "callers", "permissions": [],
                "limits": [{"router_id": model_id, "type": "rpm", "value": 100000}]}).json()
            user = g.request("POST", "/v1/admin/users", headers=admin, body={
                "email": "caller@example.org", "password": "caller-password",
                "role_id": role["id"]}).json()
            key = g.request("POST", "/v1/admin/keys", headers=admin,
                            body={"name": "load", "user": user["id"]}).json()["value"]
            # The new role reaches the roles snapshot through NOTIFY.
            deadline = time.monotonic() + 10
            while not any(m["id"] == "m1" for m in g.request(
                    "GET", "/v1/models", headers=bearer(key)).json()["data"]):
                self.assertLess(time.monotonic(), deadline, "the role's model never showed")
                time.sleep(0.05)
            statuses, bodies, halt = [], [], threading.Event()

            def call():
                while not halt.is_set():
                    r = g.request("POST", "/v1/chat/completions", headers=bearer(key), body={
                        "model": "m1", "messages": [{"role": "user", "content": "hi"}]})
                    statuses.append(r.status)
                    if r.status != 200 and not bodies:
                        bodies.append(r.body)

            threads = [threading.Thread(target=call) for _ in range(4)]
            for t in threads:
                t.start()
            try:
                time.sleep(1)
                before = len(statuses)
                self.pg.stop("immediate")
                time.sleep(3)
                during = len(statuses) - before
                self.pg.pg_ctl_start()
                time.sleep(2)
            finally:
                halt.set()
                for t in threads:
                    t.join()
            self.assertGreater(during, 10, "too few calls while PostgreSQL was down")
            self.assertEqual(sorted(set(statuses)), [200],
                             "%d of %d calls failed, first: %r" % (
                                 sum(s != 200 for s in statuses), len(statuses), bodies[:1]))

    def test_deleted_user_and_expired_key(self):
        with lgtest.Gateway(config(), pg=self.pg) as g:
            made = new_key(g)
            key = made["key"]
            self.assertEqual(models_status(g, key), 200)
            self.pg.psql("UPDATE token SET expires = now() - interval '1 second' WHERE id = %d"
                         % made["id"])
            self.assertIsNotNone(wait_status(g, key, 401, 5))

    def test_expired_account(self):
        with lgtest.Gateway(config(), pg=self.pg) as g:
            key = new_key(g)["key"]
            self.assertEqual(models_status(g, key), 200)
            self.pg.psql("UPDATE \"user\" SET expires = now() - interval '1 day' "
                         "WHERE email = 'admin'")
            self.assertIsNotNone(wait_status(g, key, 403, 5))
            r = g.request("GET", "/v1/models", headers=bearer(key))
            self.assertEqual(r.json()["detail"],
                             "Your account has expired. Please contact support to renew "
                             "your account.")
            r = g.request("GET", "/v1/me", headers=bearer(key))
            self.assertNotEqual(r.status, 403, r.body)
            self.assertNotEqual(r.status, 401, r.body)

    def test_sql_metacharacters_in_the_bearer(self):
        with lgtest.Gateway(config(), pg=self.pg) as g:
            key = new_key(g)["key"]
            for junk in SQL_CORPUS + [key[:20] + c * (len(key) - 20)
                                      for c in ("'", "%", "_", "\\")]:
                r = g.request("GET", "/v1/models", headers=bearer(junk))
                self.assertEqual(r.status, 401, (junk[:30], r.body))
            self.assertEqual(models_status(g, key), 200)
        self.assertNotIn("syntax error", self.pg.server_log())
        self.assertNotIn("ERROR:", self.pg.server_log())


if __name__ == "__main__":
    lgtest.main()
