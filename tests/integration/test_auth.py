#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""The auth plugin's configuration and its first users: the master key is an
admin key; API keys need a hashing secret; the bootstrap admin is created at
start and logs in (POST /v1/auth/login) for its playground key, one per
user, replaced at each login; emails are case-insensitive; password checks
(logins, PATCH /v1/me) are limited per account; the queue of password
hashes is bounded; default secrets are refused beyond loopback."""
import subprocess
import threading
import time
import unittest

import common
import lgtest
from pgcluster import PgCluster

MASTER = "master-key-for-tests-7f3a"
ADMIN_PASSWORD = "bootstrap-password-for-tests"
PERMISSIONS = ["admin", "create_public_collection", "provide_models", "read_metric"]


def models():
    return [{"name": "m1", "type": "text-generation",
             "providers": [{"type": "mock", "url": "http://mock.invalid",
                            "model_name": "mock-model"}]}]


def config(**auth):
    auth = dict({"master_key": MASTER, "bootstrap_admin_password": ADMIN_PASSWORD}, **auth)
    return {"plugins": {"auth": auth, "mock": {}}, "models": models()}


def bearer(key):
    return {"Authorization": "Bearer " + key}


def login(g, email, password, timeout=10):
    return g.request("POST", "/v1/auth/login", body={"email": email, "password": password},
                     timeout=timeout)


class MasterKey(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.pg = PgCluster().start()

    @classmethod
    def tearDownClass(cls):
        cls.pg.destroy()

    def test_master_key_is_admin(self):
        cfg = {"plugins": {"auth": {"master_key": MASTER}, "good": {}}}
        with lgtest.Gateway(cfg, pg=self.pg,
                            env={"LLMGATE_PLUGIN_PATH": common.test_plugins_path()}) as g:
            ok = g.request("GET", "/good/admin", headers={"Authorization": "Bearer " + MASTER})
            self.assertEqual(ok.status, 200)
            for bad in (MASTER + "x", MASTER[:-1], "", "' OR '1'='1", "x" * 5000):
                r = g.request("GET", "/good/admin", headers={"Authorization": "Bearer " + bad})
                self.assertEqual(r.status, 401, bad[:20])
            r = g.request("GET", "/good/admin", headers={"Authorization": "Basic " + MASTER})
            self.assertEqual(r.status, 401)
            self.assertEqual(r.json()["detail"], "Invalid authentication scheme.")
            # The scheme is "Bearer", exactly (spec §5.3).
            r = g.request("GET", "/good/admin", headers={"Authorization": "bearer " + MASTER})
            self.assertEqual(r.status, 401)
            self.assertEqual(r.json()["detail"], "Invalid authentication scheme.")
            log = g.log()
        self.assertNotIn(MASTER, log)

    def test_no_master_key_configured(self):
        cfg = {"plugins": {"auth": {"secret_key": "a-hashing-secret-for-tests"}, "good": {}}}
        with lgtest.Gateway(cfg, pg=self.pg,
                            env={"LLMGATE_PLUGIN_PATH": common.test_plugins_path()}) as g:
            r = g.request("GET", "/good/admin", headers={"Authorization": "Bearer changeme"})
            self.assertEqual(r.status, 401)

    def test_no_secret_at_all_is_refused(self):
        r = lgtest.run_llmgate(["--check"], config={"plugins": {"auth": {}}}, pg=self.pg)
        self.assertEqual(r.returncode, 2, r.stderr)
        self.assertIn("set secret_key (or master_key", r.stderr)

    def test_default_master_key_refused_beyond_loopback(self):
        for key in ("changeme", "short-key"):
            cfg = {"plugins": {"auth": {"master_key": key}},
                   "server": {"listen": ["0.0.0.0:0"]}}
            r = lgtest.run_llmgate(["--check"], config=cfg, pg=self.pg)
            self.assertEqual(r.returncode, 2, r.stderr)
            self.assertIn("set a long random master_key", r.stderr)
            self.assertNotIn(key, r.stderr)
        # On loopback the default is accepted (the embedded default).
        cfg = {"plugins": {"auth": {"master_key": "changeme"}},
               "server": {"listen": ["127.0.0.1:0", "[::1]:0"]}}
        r = lgtest.run_llmgate(["--check"], config=cfg, pg=self.pg)
        self.assertEqual(r.returncode, 0, r.stderr)
        cfg = {"plugins": {"auth": {"master_key": "x" * 40,
                                    "bootstrap_admin_password": ADMIN_PASSWORD}},
               "server": {"listen": ["0.0.0.0:0"]}}
        self.assertEqual(lgtest.run_llmgate(["--check"], config=cfg, pg=self.pg).returncode, 0)

    def test_default_bootstrap_password_refused_beyond_loopback(self):
        for password in (None, "changeme", "short-pw"):
            auth = {"master_key": "x" * 40}
            if password:
                auth["bootstrap_admin_password"] = password
            cfg = {"plugins": {"auth": auth}, "server": {"listen": ["0.0.0.0:0"]}}
            r = lgtest.run_llmgate(["--check"], config=cfg, pg=self.pg)
            self.assertEqual(r.returncode, 2, r.stderr)
            self.assertIn("set a long random bootstrap_admin_password", r.stderr)
            self.assertNotIn("changeme", r.stderr)
            if password:
                self.assertNotIn(password, r.stderr)


class BootstrapAndLogin(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.pg = PgCluster().start()

    @classmethod
    def tearDownClass(cls):
        cls.pg.destroy()

    def test_bootstrap_admin_logs_in_and_its_key_works(self):
        with lgtest.Gateway(config(), pg=self.pg) as g:
            rows = self.pg.psql(
                "SELECT u.email, r.name, o.name, u.password LIKE '$argon2id$%', "
                "(SELECT string_agg(permission, ',' ORDER BY permission) FROM permission p "
                " WHERE p.role_id = r.id) FROM \"user\" u JOIN role r ON r.id = u.role_id "
                "JOIN organization o ON o.id = u.organization_id")
            self.assertEqual(rows, [["admin", "bootstrap_admin", "default", "t",
                                     ",".join(PERMISSIONS)]])
            self.assertNotIn(ADMIN_PASSWORD, self.pg.psql("SELECT password FROM \"user\"")[0][0])

            r = login(g, "admin", ADMIN_PASSWORD)
            self.assertEqual(r.status, 200, r.body)
            body = r.json()
            self.assertEqual(set(body), {"id", "key"})
            key = body["key"]
            self.assertRegex(key, r"^sk-[A-Za-z0-9_-]{48}$")
            row = self.pg.psql("SELECT name, masked, extract(epoch FROM expires - now()), "
                               "revoked FROM token WHERE id = %d" % body["id"])[0]
            self.assertEqual(row[0], "_system_playground_key")
            self.assertEqual(row[1], key[:8] + "..." + key[-8:])
            self.assertTrue(3500 < float(row[2]) <= 3600, row[2])
            self.assertEqual(row[3], "f")
            self.assertEqual(self.pg.psql("SELECT count(*) FROM token WHERE "
                                          "hash::text LIKE '%%%s%%'" % key[3:20])[0][0], "0")

            r = g.request("GET", "/v1/models", headers={"Authorization": "Bearer " + key})
            self.assertEqual(r.status, 200, r.body)
            self.assertIn("m1", [m["id"] for m in r.json()["data"]])
            # Twice: the second answer comes from the cache.
            r = g.request("GET", "/v1/models", headers={"Authorization": "Bearer " + key})
            self.assertEqual(r.status, 200, r.body)

            for email, password in (("admin", ADMIN_PASSWORD + "x"), ("nobody", ADMIN_PASSWORD),
                                    ("admin", "' OR '1'='1")):
                r = login(g, email, password)
                self.assertEqual(r.status, 401, r.body)
                self.assertEqual(r.json()["detail"], "Invalid email or password.")
            r = g.request("POST", "/v1/auth/login", body={"email": "admin"})
            self.assertEqual(r.status, 422, r.body)
            log = g.log()
        self.assertNotIn(key, log)
        self.assertNotIn(ADMIN_PASSWORD, log)

        # A second start finds an admin and leaves it alone.
        with lgtest.Gateway(config(bootstrap_admin_password="another-password-123"),
                            pg=self.pg) as g:
            self.assertEqual(login(g, "admin", ADMIN_PASSWORD).status, 200)
            self.assertEqual(login(g, "admin", "another-password-123").status, 401)

    def test_login_attempts_are_limited_per_account(self):
        with lgtest.Gateway(config(login_attempts_per_minute=3), pg=self.pg) as g:
            for _ in range(3):
                self.assertEqual(login(g, "admin", "wrong-password").status, 401)
            r = login(g, "admin", ADMIN_PASSWORD)
            self.assertEqual(r.status, 429, r.body)
            self.assertTrue(1 <= int(r.headers["Retry-After"]) <= 60, r.headers)
            # Other accounts are not affected.
            self.assertEqual(login(g, "someone-else", "wrong-password").status, 401)

    def test_concurrent_logins_are_all_answered(self):
        # Several workers: a job that waited is started on its own worker by
        # another one's finished job.
        cfg = config(password_hash_concurrency=1, login_attempts_per_minute=100)
        cfg["server"] = {"workers": 4}
        with lgtest.Gateway(cfg, pg=self.pg) as g:
            results = []

            def one(i):
                pw = ADMIN_PASSWORD if i % 2 == 0 else "wrong-password"
                # Generous: the hashes run one at a time on a busy machine.
                results.append((i, login(g, "admin", pw, timeout=120).status))
            threads = [threading.Thread(target=one, args=(i,)) for i in range(8)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(150)
            self.assertEqual(sorted(results),
                             [(i, 200 if i % 2 == 0 else 401) for i in range(8)])

    def test_login_replaces_the_playground_key(self):
        with lgtest.Gateway(config(), pg=self.pg) as g:
            first = login(g, "admin", ADMIN_PASSWORD).json()
            self.assertEqual(g.request("GET", "/v1/models",
                                       headers=bearer(first["key"])).status, 200)
            second = login(g, "admin", ADMIN_PASSWORD).json()
            self.assertEqual(second["id"], first["id"])
            self.assertNotEqual(second["key"], first["key"])
            rows = self.pg.psql("SELECT count(*), bool_or(revoked) FROM token t JOIN \"user\" u "
                                "ON u.id = t.user_id WHERE u.email = 'admin' "
                                "AND t.name = '_system_playground_key'")
            self.assertEqual(rows, [["1", "f"]])
            # The old key stops at once on this instance (it was cached).
            self.assertEqual(g.request("GET", "/v1/models",
                                       headers=bearer(first["key"])).status, 401)
            self.assertEqual(g.request("GET", "/v1/models",
                                       headers=bearer(second["key"])).status, 200)
            # A revoked playground key is made anew by the next login.
            self.pg.psql("UPDATE token SET revoked = true, revoked_at = now() WHERE id = %d"
                         % second["id"])
            third = login(g, "admin", ADMIN_PASSWORD).json()
            self.assertEqual(third["id"], first["id"])
            self.assertEqual(self.pg.psql("SELECT revoked, revoked_at IS NULL, masked FROM token "
                                          "WHERE id = %d" % third["id"]),
                             [["f", "t", third["key"][:8] + "..." + third["key"][-8:]]])
            self.assertEqual(g.request("GET", "/v1/models",
                                       headers=bearer(third["key"])).status, 200)

    def test_emails_are_case_insensitive(self):
        with lgtest.Gateway(config(), pg=self.pg) as g:
            self.assertEqual(login(g, "ADMIN", ADMIN_PASSWORD).status, 200)
            with self.assertRaises(subprocess.CalledProcessError) as e:
                self.pg.psql("INSERT INTO \"user\" (email, role_id, organization_id) "
                             "SELECT 'Admin', role_id, organization_id FROM \"user\" "
                             "WHERE email = 'admin'")
            self.assertIn("user_email_lower_key", e.exception.stderr)
            # bob has the admin's password, and another email.
            self.pg.psql("INSERT INTO \"user\" (email, password, role_id, organization_id) "
                         "SELECT 'bob@example.org', password, role_id, organization_id "
                         "FROM \"user\" WHERE email = 'admin'")
            r = login(g, "Bob@Example.ORG", ADMIN_PASSWORD)
            self.assertEqual(r.status, 200, r.body)
            bob = r.json()["key"]
            r = g.request("PATCH", "/v1/me", body={"email": "ADMIN"}, headers=bearer(bob))
            self.assertEqual(r.status, 409, r.body)
            self.assertEqual(r.json()["detail"], "User already exists.")
            r = g.request("PATCH", "/v1/me", body={"email": "BOB@example.org"},
                          headers=bearer(bob))
            self.assertEqual(r.status, 204, r.body)

    def test_login_limit_ignores_the_case_of_the_email(self):
        with lgtest.Gateway(config(login_attempts_per_minute=3), pg=self.pg) as g:
            for email in ("admin", "ADMIN", "Admin"):
                self.assertEqual(login(g, email, "wrong-password").status, 401)
            r = login(g, "aDmin", ADMIN_PASSWORD)
            self.assertEqual(r.status, 429, r.body)
            self.assertIn("Retry-After", r.headers)

    def test_password_change_attempts_are_limited(self):
        with lgtest.Gateway(config(login_attempts_per_minute=3), pg=self.pg) as g:
            key = login(g, "admin", ADMIN_PASSWORD).json()["key"]
            change = {"current_password": "wrong-password", "password": "new-password-123"}
            for _ in range(3):
                r = g.request("PATCH", "/v1/me", body=change, headers=bearer(key))
                self.assertEqual(r.status, 401, r.body)
                self.assertEqual(r.json()["detail"], "Invalid current password.")
            change["current_password"] = ADMIN_PASSWORD
            r = g.request("PATCH", "/v1/me", body=change, headers=bearer(key))
            self.assertEqual(r.status, 429, r.body)
            self.assertTrue(1 <= int(r.headers["Retry-After"]) <= 60, r.headers)
            # The account's logins share the count.
            self.assertEqual(login(g, "admin", ADMIN_PASSWORD).status, 429)
            # Unchanged.
            self.assertEqual(self.pg.psql("SELECT count(*) FROM \"user\" WHERE email = 'admin'"
                                          " AND password IS NOT NULL")[0][0], "1")

    def test_password_queue_is_bounded(self):
        cfg = config(password_hash_concurrency=1, password_queue_max=0,
                     login_attempts_per_minute=1000)
        cfg["server"] = {"workers": 4}
        with lgtest.Gateway(cfg, pg=self.pg) as g:
            busy = []
            for burst in range(5):
                results = []

                def one(i):
                    r = login(g, "nobody-%d-%d" % (burst, i), "wrong-password", timeout=120)
                    results.append((r.status, r.headers.get("Retry-After"),
                                    r.json()["detail"]))
                threads = [threading.Thread(target=one, args=(i,)) for i in range(16)]
                for t in threads:
                    t.start()
                for t in threads:
                    t.join(150)
                self.assertEqual(len(results), 16)
                for status, retry, detail in results:
                    self.assertIn(status, (401, 503), detail)
                busy = [x for x in results if x[0] == 503]
                if busy:
                    break
            self.assertTrue(busy, "no login was refused with a queue of 0")
            self.assertEqual(busy[0][1], "1")
            self.assertEqual(busy[0][2], "The server is busy, please try again later.")
            # Once the burst is over, logins work again.
            self.assertEqual(login(g, "admin", ADMIN_PASSWORD).status, 200)


if __name__ == "__main__":
    lgtest.main()
