#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""The model registry through the real binary and a real PostgreSQL:
config.yml's models reconciled at start and on SIGHUP, /v1/models, the
admin API for routers and providers (with the capability probe against a
mock upstream), a second instance following changes, and /health/models."""
import os
import signal
import subprocess
import tempfile
import threading
import time
import unittest
import urllib.parse

import common
import lgtest
from mock import MockUpstream
from pgcluster import PgCluster

ADMIN = {"Authorization": "Bearer good-admin"}
USER = {"Authorization": "Bearer good-token"}
PLUGIN_ENV = {"LLMGATE_PLUGIN_PATH": common.test_plugins_path()}
CLOSED_URL = "http://127.0.0.1:1"


def have_plugins(*names):
    return all(os.path.exists(os.path.join(common.PLUGIN_PATH, n + ".so")) for n in names)


def path_of(name):
    return "/v1/models/" + urllib.parse.quote(name, safe="")


def poll(fn, timeout=5.0, interval=0.05):
    """fn() until it returns something true, for up to @timeout s; the last value."""
    deadline = time.monotonic() + timeout
    while True:
        value = fn()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(interval)


def check_yaml(models_yaml, plugins=("good", "mock")):
    """llmgate --check on a file whose first model starts on line 7."""
    text = "# models\nplugins: {%s}\ndependencies:\n  postgres:\n    url: %s\nmodels:\n%s" % (
        ", ".join("%s: {}" % p for p in plugins), common.NOWHERE_DB, models_yaml)
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "config.yml")
        with open(path, "w") as f:
            f.write(text)
        r = subprocess.run([os.environ["LLMGATE_BIN"], "--config", path, "--check"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           env=dict(os.environ, **PLUGIN_ENV), timeout=30)
        return r, path


class Check(unittest.TestCase):
    """--check refuses a bad models: section with file, line and key."""

    def assertRefused(self, models_yaml, line, *fragments, plugins=("good", "mock")):
        r, path = check_yaml(models_yaml, plugins)
        self.assertEqual(r.returncode, 2, r.stdout + r.stderr)
        self.assertIn("%s:%d: " % (path, line), r.stderr)
        for f in fragments:
            self.assertIn(f, r.stderr)

    def test_valid_section_passes(self):
        r, _ = check_yaml("  - name: a/b\n    type: text-generation\n    aliases: [x, y]\n"
                          "    load_balancing_strategy: least_busy\n"
                          "    providers:\n"
                          "      - { type: mock, url: 'http://h:1/', model_name: m, qos_limit: 3,\n"
                          "          connect_timeout: 250ms, model_carbon_footprint_zone: FRA }\n"
                          "  - name: c\n    type: text-embeddings-inference\n")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("configuration OK", r.stdout)

    def test_unknown_keys(self):
        self.assertRefused("  - name: a\n    type: text-generation\n    colour: red\n", 9,
                           "models[0].colour: unknown key")
        self.assertRefused("  - name: a\n    type: text-generation\n    providers:\n"
                           "      - type: mock\n        url: http://h\n        model_name: m\n"
                           "        basic_auth: {username: u, password: p}\n", 13,
                           "models[0].providers[0].basic_auth: unknown key")

    def test_names(self):
        self.assertRefused("  - name: '%s'\n    type: text-generation\n" % ("n" * 65), 7,
                           "models[0].name: must be 1 to 64 characters")
        self.assertRefused("  - type: text-generation\n", 7, "models[0].name: required")
        self.assertRefused("  - name: a\n    type: text-generation\n    aliases: [b]\n"
                           "  - name: b\n    type: text-generation\n", 10,
                           'models[1].name: "b" is already the alias of models[0] (line 9)')
        self.assertRefused("  - name: a\n    type: text-generation\n    aliases:\n"
                           "      - z\n      - a\n", 11,
                           'models[0].aliases: "a" is already the name of this model')
        self.assertRefused("  - name: a\n    type: text-generation\n"
                           "  - name: c\n    type: text-generation\n    aliases: [a]\n", 11,
                           'models[1].aliases: "a" is already the name of models[0]')

    def test_types_and_strategy(self):
        self.assertRefused("  - name: a\n    type: chat\n", 8,
                           'models[0].type: unknown model type "chat"')
        self.assertRefused("  - name: a\n    type: text-generation\n"
                           "    load_balancing_strategy: random\n", 9,
                           'unknown strategy "random"')
        self.assertRefused("  - name: a\n    type: text-generation\n    cost_prompt_tokens: -1\n",
                           9, "models[0].cost_prompt_tokens: -1 is out of range")

    def test_providers(self):
        head = "  - name: a\n    type: text-generation\n    providers:\n"
        self.assertRefused(head + "      - { type: nosuch, url: 'http://h', model_name: m }\n", 10,
                           'models[0].providers[0].type: unknown provider type "nosuch"',
                           "loaded: mock")
        self.assertRefused(head + "      - { type: mock, url: 'ftp://h', model_name: m }\n", 10,
                           "models[0].providers[0].url: must start with http:// or https://")
        self.assertRefused(head + "      - { type: mock, url: 'http://h/v1/', model_name: m }\n",
                           10, "must not end with /v1")
        # vllm has no default URL (the mock has one that is never contacted).
        self.assertRefused(head + "      - { type: vllm, model_name: m }\n", 10,
                           "models[0].providers[0].url: required",
                           plugins=("good", "mock", "vllm"))
        r, _ = check_yaml(head + "      - { type: mock, model_name: m }\n")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertRefused(head + "      - { type: mock, url: 'http://h', model_name: m,"
                           " max_concurrency: 0 }\n", 10, "max_concurrency: 0 is out of range")
        self.assertRefused(head + "      - { type: mock, url: 'http://h', model_name: m,"
                           " max_concurrency: 2, qos_limit: 3 }\n", 10,
                           "qos_limit: also given as max_concurrency")
        self.assertRefused(head + "      - { type: mock, url: 'http://h', model_name: m,"
                           " model_hosting_zone: France }\n", 10, "ISO 3166-1 alpha-3")
        self.assertRefused(head + "      - { type: mock, url: 'http://h', model_name: m }\n"
                           "      - { type: mock, url: 'http://h/', model_name: m }\n", 11,
                           "models[0].providers[1]: same url and model_name as providers[0]")
        self.assertRefused(head + "      - { type: mock, url: 'http://h' }\n", 10,
                           "models[0].providers[0].model_name: required")

    @unittest.skipUnless(have_plugins("tei"), "the tei provider plugin is not built")
    def test_provider_type_must_serve_the_model_type(self):
        self.assertRefused("  - name: a\n    type: text-generation\n    providers:\n"
                           "      - { type: tei, url: 'http://h', model_name: m }\n", 10,
                           'provider type "tei" cannot serve text-generation models',
                           plugins=("good", "mock", "tei"))


class Gateway(lgtest.Gateway):
    """A gateway that must stop cleanly: status 0 after SIGTERM, and no
    sanitizer report (leaks are reported at exit)."""

    def __exit__(self, exc_type, *exc):
        super().__exit__(exc_type, *exc)
        log = self.log()
        if exc_type is None and (self.returncode != 0 or "Sanitizer" in log or
                                 "runtime error" in log):
            raise AssertionError("llmgate did not stop cleanly (status %s):\n%s" %
                                 (self.returncode, log[-6000:]))
        return False


class Registry(unittest.TestCase):
    """One PostgreSQL cluster; each test has a database of its own."""

    @classmethod
    def setUpClass(cls):
        cls.pg = PgCluster().start()

    @classmethod
    def tearDownClass(cls):
        cls.pg.destroy()

    def setUp(self):
        self.db = "t_" + self._testMethodName.lower()[:50]
        self.pg.psql("CREATE DATABASE %s" % self.db)

    def config(self, models, plugins=None):
        return {"plugins": plugins or {"good": {}, "mock": {}},
                "dependencies": {"postgres": {"url": self.pg.url(self.db)}},
                "models": models}

    def gateway(self, models, plugins=None, **kw):
        return Gateway(self.config(models, plugins), pg=self.pg, env=PLUGIN_ENV, **kw)

    def rewrite(self, g, models, plugins=None):
        with open(g.config_path, "w") as f:
            f.write(lgtest.config_yaml(self.config(models, plugins), self.pg))

    def sql(self, query):
        return self.pg.psql(query, dbname=self.db)

    def create_router(self, g, name, type_="text-generation", **extra):
        r = g.request("POST", "/v1/admin/routers", dict(extra, name=name, type=type_),
                      headers=ADMIN)
        self.assertEqual(r.status, 201, r.text)
        return r.json()

    def create_mock_provider(self, g, router_id, model_name="m"):
        r = g.request("POST", "/v1/admin/providers",
                      {"router_id": router_id, "type": "mock", "url": CLOSED_URL,
                       "model_name": model_name}, headers=ADMIN)
        self.assertEqual(r.status, 201, r.text)
        return r.json()

    def visible(self, g, name):
        return g.request("GET", path_of(name), headers=USER).status == 200

    # -- config.yml --

    def test_config_models_are_served(self):
        models = [
            {"name": "org/chat-1", "type": "text-generation", "aliases": ["chat"],
             "cost_prompt_tokens": 0.5, "cost_completion_tokens": 1.5,
             "providers": [{"type": "mock", "url": CLOSED_URL, "model_name": "m1"}]},
            {"name": "no-providers", "type": "text-generation"},
        ]
        with self.gateway(models) as g:
            r = g.request("GET", "/v1/models", headers=USER)
            self.assertEqual(r.status, 200, r.text)
            self.assertEqual(r.json()["object"], "list")
            self.assertEqual([m["id"] for m in r.json()["data"]], ["org/chat-1"])
            model = r.json()["data"][0]
            self.assertEqual(model["object"], "model")
            self.assertEqual(model["type"], "text-generation")
            self.assertEqual(model["aliases"], ["chat"])
            self.assertEqual(model["owned_by"], "llmgate")
            self.assertEqual(model["costs"], {"prompt_tokens": 0.5, "completion_tokens": 1.5})
            self.assertIsInstance(model["created"], int)
            # By name (with a '/'), and by alias: the same object.
            self.assertEqual(g.request("GET", "/v1/models/org/chat-1", headers=USER).json(),
                             model)
            self.assertEqual(g.request("GET", "/v1/models/chat", headers=USER).json(), model)
            for name in ("no-providers", "nope", "org"):
                r = g.request("GET", path_of(name), headers=USER)
                self.assertEqual(r.status, 404, name)
                self.assertEqual(r.json()["detail"], "Model %s not found." % name)
            self.assertEqual(g.request("GET", "/v1/models").status, 401)
            self.assertEqual(self.sql("SELECT name, from_config FROM model ORDER BY name"),
                             [["no-providers", "t"], ["org/chat-1", "t"]])

    def test_reload_reconciles_config(self):
        first = [
            {"name": "a", "type": "text-generation", "aliases": ["a1"],
             "providers": [{"type": "mock", "url": CLOSED_URL, "model_name": "ma"}]},
            {"name": "b", "type": "text-generation",
             "providers": [{"type": "mock", "url": CLOSED_URL, "model_name": "mb"}]},
        ]
        with self.gateway(first) as g:
            made = self.create_router(g, "admin-made")
            self.create_mock_provider(g, made["id"])
            provider_a = self.sql("SELECT c.id FROM model_client c JOIN model m "
                                  "ON m.id = c.model_id WHERE m.name = 'a'")
            second = [
                {"name": "a", "type": "text-generation", "aliases": ["a2"],
                 "cost_prompt_tokens": 2,
                 "providers": [{"type": "mock", "url": CLOSED_URL, "model_name": "ma",
                                "timeout": 60}]},
                {"name": "c", "type": "text-generation", "aliases": ["c1"],
                 "providers": [{"type": "mock", "url": CLOSED_URL, "model_name": "mc"}]},
            ]
            self.rewrite(g, second)
            g.send_signal(signal.SIGHUP)
            self.assertTrue(poll(lambda: self.visible(g, "c1")), g.log()[-3000:])
            self.assertFalse(self.visible(g, "b"))
            self.assertFalse(self.visible(g, "a1"))
            r = g.request("GET", "/v1/models/a2", headers=USER)
            self.assertEqual(r.json()["id"], "a")
            self.assertEqual(r.json()["costs"]["prompt_tokens"], 2)
            self.assertTrue(self.visible(g, "admin-made"))
            # A provider that stays keeps its id (and its live state).
            self.assertEqual(self.sql("SELECT c.id, c.timeout FROM model_client c JOIN model m "
                                      "ON m.id = c.model_id WHERE m.name = 'a'"),
                             [[provider_a[0][0], "60"]])
            self.assertEqual(self.sql("SELECT name, from_config FROM model ORDER BY name"),
                             [["a", "t"], ["admin-made", "f"], ["c", "t"]])

            # An invalid file keeps the registry as it is.
            self.rewrite(g, second + [{"name": "d", "type": "text-generation",
                                       "aliases": ["c1"]}])
            g.send_signal(signal.SIGHUP)
            self.assertTrue(g.wait_log(r'reload refused.*models\[2\]\.aliases: "c1" is '
                                       r'already the alias of models\[1\]', 5), g.log()[-2000:])
            # A config model may not take the name of one made through the API.
            self.rewrite(g, second + [{"name": "admin-made", "type": "text-generation"}])
            g.send_signal(signal.SIGHUP)
            self.assertTrue(g.wait_log(r'reload refused.*models\[2\]\.name: "admin-made" is '
                                       r'already taken by model "admin-made"', 5),
                            g.log()[-2000:])
            self.assertTrue(self.visible(g, "c1"))
            self.assertTrue(self.visible(g, "a2"))
            self.assertEqual(self.sql("SELECT name, from_config FROM model ORDER BY name"),
                             [["a", "t"], ["admin-made", "f"], ["c", "t"]])
            # Config models are changed in config.yml only.
            a_id = self.sql("SELECT id FROM model WHERE name = 'a'")[0][0]
            r = g.request("PATCH", "/v1/admin/routers/" + a_id, {"cost_prompt_tokens": 9},
                          headers=ADMIN)
            self.assertEqual(r.status, 409, r.text)
            self.assertIn("declared in config.yml", r.json()["detail"])
            self.assertEqual(g.request("DELETE", "/v1/admin/routers/" + a_id,
                                       headers=ADMIN).status, 409)
            r = g.request("POST", "/v1/admin/providers",
                          {"router_id": int(a_id), "type": "mock", "url": CLOSED_URL,
                           "model_name": "other"}, headers=ADMIN)
            self.assertEqual(r.status, 409, r.text)
            r = g.request("DELETE", "/v1/admin/providers/" + provider_a[0][0], headers=ADMIN)
            self.assertEqual(r.status, 409, r.text)
            self.assertIn("declared in config.yml", r.json()["detail"])

    def test_start_refuses_a_config_name_taken_through_the_api(self):
        with self.gateway([]) as g:
            self.create_router(g, "taken")
        g = self.gateway([{"name": "x", "type": "text-generation", "aliases": ["taken"]}])
        with self.assertRaises(lgtest.GatewayError):
            g.start()
        self.assertNotEqual(g.wait(20), 0)
        self.assertRegex(g.log(), r'models\[0\]\.aliases: "taken" is already taken by model '
                                  r'"taken" \(id \d+\), created through the admin API')

    # -- the admin API --

    def test_admin_routers(self):
        config = [{"name": "from-config", "type": "text-generation",
                   "providers": [{"type": "mock", "url": CLOSED_URL, "model_name": "x"}]}]
        with self.gateway(config) as g:
            r = g.request("GET", "/v1/admin/routers", headers=USER)
            self.assertEqual(r.status, 403)
            self.assertEqual(r.json()["detail"], "User has no admin rights.")
            self.assertEqual(g.request("POST", "/v1/admin/routers",
                                       {"name": "x", "type": "text-generation"},
                                       headers=USER).status, 403)
            self.assertEqual(g.request("GET", "/v1/admin/routers").status, 401)

            b = self.create_router(g, "r-b", aliases=["rb1", " rb2 "],
                                   load_balancing_strategy="least_busy",
                                   cost_prompt_tokens=1, cost_completion_tokens=2.5)
            self.assertEqual(b["object"], "router")
            self.assertEqual(b["name"], "r-b")
            self.assertEqual(b["aliases"], ["rb1", "rb2"])
            self.assertEqual(b["load_balancing_strategy"], "least_busy")
            self.assertEqual((b["cost_prompt_tokens"], b["cost_completion_tokens"]), (1, 2.5))
            self.assertEqual((b["providers"], b["user_id"], b["from_config"]), (0, 1, False))
            a = self.create_router(g, "r-a")
            c = self.create_router(g, "r-c", type_="text-embeddings-inference")
            self.assertEqual(a["load_balancing_strategy"], "shuffle")

            conflicts = [
                ({"name": "r-b"}, "Router r-b already exists."),
                ({"name": "rb1"}, "Router rb1 already exists."),
                ({"name": "from-config"}, "Router from-config already exists."),
                ({"name": "r-d", "aliases": ["new", "rb2"]},
                 "Following aliases already exist: '['rb2']'"),
                ({"name": "r-e", "aliases": ["from-config"]},
                 "Following aliases already exist: '['from-config']'"),
            ]
            for body, detail in conflicts:
                r = g.request("POST", "/v1/admin/routers", dict(body, type="text-generation"),
                              headers=ADMIN)
                self.assertEqual(r.status, 409, body)
                self.assertEqual(r.json()["detail"], detail)

            invalid = [
                {"type": "text-generation"},
                {"name": "x"},
                {"name": "n" * 65, "type": "text-generation"},
                {"name": "   ", "type": "text-generation"},
                {"name": "x", "type": "chat"},
                {"name": 5, "type": "text-generation"},
                {"name": "x", "type": "text-generation", "load_balancing_strategy": "random"},
                {"name": "x", "type": "text-generation", "cost_prompt_tokens": -1},
                {"name": "x", "type": "text-generation", "cost_prompt_tokens": "1"},
                {"name": "x", "type": "text-generation", "aliases": "a"},
                {"name": "x", "type": "text-generation", "aliases": ["d", "d"]},
                {"name": "x", "type": "text-generation", "aliases": ["x"]},
                {"name": "x", "type": "text-generation", "aliases": [""]},
                {"name": "x", "type": "text-generation", "aliases": ["a\nb"]},
            ]
            for body in invalid:
                r = g.request("POST", "/v1/admin/routers", body, headers=ADMIN)
                self.assertEqual(r.status, 422, (body, r.text))
            self.assertEqual(g.request("POST", "/v1/admin/routers", b"{", headers=ADMIN).status,
                             400)
            self.assertEqual(g.request("POST", "/v1/admin/routers", [], headers=ADMIN).status,
                             422)

            r = g.request("GET", "/v1/admin/routers/%d" % b["id"], headers=ADMIN)
            self.assertEqual(r.status, 200)
            self.assertEqual(r.json(), b)
            r = g.request("GET", "/v1/admin/routers/999999", headers=ADMIN)
            self.assertEqual(r.status, 404)
            self.assertEqual(r.json()["detail"], "Model router 999999 not found.")
            self.assertEqual(g.request("GET", "/v1/admin/routers/abc", headers=ADMIN).status,
                             422)

            # Pagination and sorting.
            def names(query):
                r = g.request("GET", "/v1/admin/routers" + query, headers=ADMIN)
                self.assertEqual(r.status, 200, r.text)
                return r.json()

            page = names("")
            self.assertEqual((page["object"], page["total"], page["offset"], page["limit"]),
                             ("list", 4, 0, 10))
            self.assertEqual([x["name"] for x in page["data"]],
                             ["from-config", "r-b", "r-a", "r-c"])
            self.assertEqual([x["name"] for x in names("?limit=2&offset=1")["data"]],
                             ["r-b", "r-a"])
            self.assertEqual(names("?limit=2&offset=1")["total"], 4)
            self.assertEqual([x["name"] for x in names("?sort_by=name")["data"]],
                             ["from-config", "r-a", "r-b", "r-c"])
            self.assertEqual([x["name"] for x in names("?sort_by=name&sort_order=desc")["data"]],
                             ["r-c", "r-b", "r-a", "from-config"])
            self.assertEqual([x["id"] for x in names("?sort_by=created&sort_order=desc")["data"]],
                             [c["id"], a["id"], b["id"], page["data"][0]["id"]])
            self.assertEqual(names("?offset=10")["data"], [])
            for query in ("limit=0", "limit=101", "limit=-1", "limit=abc", "limit=1e9",
                          "offset=-5", "offset=9223372036854775808", "sort_by=updated",
                          "sort_by=name%20desc%3B%20select%201", "sort_order=up"):
                r = g.request("GET", "/v1/admin/routers?" + query, headers=ADMIN)
                self.assertEqual(r.status, 422, query)

            # PATCH changes what it names; aliases replace the whole set.
            r = g.request("PATCH", "/v1/admin/routers/%d" % a["id"],
                          {"name": "r-a2", "aliases": ["ra1"], "cost_prompt_tokens": 3},
                          headers=ADMIN)
            self.assertEqual(r.status, 200, r.text)
            self.assertEqual((r.json()["name"], r.json()["aliases"]), ("r-a2", ["ra1"]))
            self.assertEqual((r.json()["cost_prompt_tokens"], r.json()["cost_completion_tokens"],
                              r.json()["load_balancing_strategy"]), (3, 0, "shuffle"))
            self.assertGreaterEqual(r.json()["updated"], a["updated"])
            r = g.request("PATCH", "/v1/admin/routers/%d" % a["id"], {"aliases": ["ra1", "ra2"]},
                          headers=ADMIN)
            self.assertEqual(r.status, 200, r.text)
            self.assertEqual(r.json()["aliases"], ["ra1", "ra2"])
            r = g.request("PATCH", "/v1/admin/routers/%d" % a["id"], {"name": "r-b"},
                          headers=ADMIN)
            self.assertEqual((r.status, r.json()["detail"]), (409, "Router r-b already exists."))
            r = g.request("PATCH", "/v1/admin/routers/%d" % a["id"], {"aliases": ["rb1", "z"]},
                          headers=ADMIN)
            self.assertEqual(r.status, 409)
            self.assertEqual(r.json()["detail"], "Following aliases already exist: '['rb1']'")
            # Its own name as an alias: the database's namespace check says no.
            r = g.request("PATCH", "/v1/admin/routers/%d" % a["id"], {"aliases": ["r-a2"]},
                          headers=ADMIN)
            self.assertEqual(r.status, 409, r.text)
            self.assertEqual(g.request("PATCH", "/v1/admin/routers/999999", {"name": "q"},
                                       headers=ADMIN).status, 404)
            self.assertEqual(g.request("PATCH", "/v1/admin/routers/%d" % a["id"],
                                       {"type": "nope"}, headers=ADMIN).status, 422)

            r = g.request("DELETE", "/v1/admin/routers/%d" % c["id"], headers=ADMIN)
            self.assertEqual(r.status, 200)
            self.assertEqual(r.json()["name"], "r-c")
            self.assertEqual(g.request("GET", "/v1/admin/routers/%d" % c["id"],
                                       headers=ADMIN).status, 404)
            self.assertEqual(g.request("DELETE", "/v1/admin/routers/%d" % c["id"],
                                       headers=ADMIN).status, 404)
            self.assertEqual(self.sql("SELECT count(*) FROM model"), [["3"]])

    @unittest.skipUnless(have_plugins("openai", "tei"), "openai and tei plugins not built")
    def test_admin_providers_and_probe(self):
        plugins = {"good": {}, "mock": {}, "openai": {}, "tei": {}}
        with MockUpstream(models=["up-chat", "up-embed"], dim=24, context=4096) as up, \
                MockUpstream(models=["up-embed"], dim=32, context=4096) as up2, \
                self.gateway([], plugins) as g:
            chat = self.create_router(g, "chat")["id"]
            emb = self.create_router(g, "emb", type_="text-embeddings-inference")["id"]
            self.assertFalse(self.visible(g, "chat"))

            secret = "sk-upstream-secret-123"
            r = g.request("POST", "/v1/admin/providers",
                          {"router_id": chat, "type": "openai", "url": up.url + "/",
                           "key": secret, "model_name": "up-chat", "timeout": 30,
                           "model_hosting_zone": "fra", "model_total_params": 8,
                           "qos_limit": 4, "connect_timeout": 2.5}, headers=ADMIN)
            self.assertEqual(r.status, 201, r.text)
            p = r.json()
            self.assertEqual((p["object"], p["router_id"], p["type"], p["url"], p["model_name"]),
                             ("provider", chat, "openai", up.url, "up-chat"))
            self.assertEqual((p["timeout"], p["model_hosting_zone"], p["model_total_params"],
                              p["qos_limit"], p["max_concurrency"], p["connect_timeout"]),
                             (30, "FRA", 8, 4, 4, 2.5))
            self.assertEqual((p["max_context_length"], p["vector_size"]), (4096, None))
            self.assertNotIn("key", p)
            self.assertNotIn(secret, r.text)
            self.assertGreaterEqual(up.stats()["by_path"].get("/v1/models", 0), 1)
            # Visible now, with the probed context length; no need to wait.
            r = g.request("GET", "/v1/models/chat", headers=USER)
            self.assertEqual(r.status, 200)
            self.assertEqual(r.json()["max_context_length"], 4096)

            def create(body):
                return g.request("POST", "/v1/admin/providers", body, headers=ADMIN)

            r = create({"router_id": chat, "type": "openai", "url": up.url,
                        "model_name": "up-chat"})
            self.assertEqual(r.status, 409)
            self.assertEqual(r.json()["detail"], "Model provider up-chat for url %s already "
                             "exists for router %d." % (up.url, chat))
            r = create({"router_id": chat, "type": "openai", "url": up.url,
                        "model_name": "up-missing"})
            self.assertEqual(r.status, 424, r.text)
            self.assertIn("up-missing is not in its model list", r.json()["detail"])
            r = create({"router_id": chat, "type": "openai", "url": CLOSED_URL,
                        "model_name": "up-chat"})
            self.assertEqual(r.status, 424, r.text)
            self.assertIn("Model provider up-chat not reachable", r.json()["detail"])
            r = create({"router_id": chat, "type": "tei", "url": up2.url,
                        "model_name": "up-embed"})
            self.assertEqual(r.status, 400)
            self.assertEqual(r.json()["detail"],
                             "Invalid model provider type tei for text-generation router.")
            r = create({"router_id": 999999, "type": "openai", "url": up.url,
                        "model_name": "up-chat"})
            self.assertEqual((r.status, r.json()["detail"]),
                             (404, "Model router 999999 not found."))
            for body in ({"router_id": chat, "type": "nosuch", "model_name": "m"},
                         {"router_id": chat, "type": "openai", "url": up.url + "/v1",
                          "model_name": "m"},
                         {"router_id": chat, "type": "openai", "url": up.url},
                         {"type": "openai", "url": up.url, "model_name": "m"},
                         {"router_id": chat, "type": "openai", "url": up.url,
                          "model_name": "m", "qos_limit": 0},
                         {"router_id": chat, "type": "openai", "url": up.url,
                          "model_name": "m", "timeout": 0},
                         {"router_id": chat, "type": "openai", "url": up.url,
                          "model_name": "m", "model_hosting_zone": "France"},
                         {"router_id": chat, "type": "openai", "url": up.url,
                          "model_name": "m", "basic_auth": {"username": "u"}}):
                r = create(body)
                self.assertEqual(r.status, 422, (body, r.text))

            # Embeddings: the vector size is probed too, and must agree.
            r = create({"router_id": emb, "type": "openai", "url": up.url,
                        "model_name": "up-embed"})
            self.assertEqual(r.status, 201, r.text)
            self.assertEqual((r.json()["vector_size"], r.json()["max_context_length"]),
                             (24, 4096))
            self.assertGreaterEqual(up.stats()["by_path"].get("/v1/embeddings", 0), 1)
            r = create({"router_id": emb, "type": "tei", "url": up2.url,
                        "model_name": "up-embed"})
            self.assertEqual(r.status, 400, r.text)
            self.assertEqual(r.json()["detail"],
                             "Inconsistent vector size for emb. Expected: 24. Actual: 32")
            self.assertGreaterEqual(up2.stats()["by_path"].get("/info", 0), 1)
            router = g.request("GET", "/v1/admin/routers/%d" % emb, headers=ADMIN).json()
            self.assertEqual((router["vector_size"], router["providers"]), (24, 1))

            # Lists, filtered and sorted; never a key.
            def plist(query):
                r = g.request("GET", "/v1/admin/providers" + query, headers=ADMIN)
                self.assertEqual(r.status, 200, r.text)
                self.assertNotIn(secret, r.text)
                return r.json()

            self.assertEqual(plist("")["total"], 2)
            self.assertEqual([x["id"] for x in plist("?router_id=%d" % chat)["data"]], [p["id"]])
            self.assertEqual(plist("?router_id=%d" % chat)["total"], 1)
            self.assertEqual([x["model_name"] for x in plist("?sort_by=model_name&sort_order=desc")
                              ["data"]], ["up-embed", "up-chat"])
            for query in ("router_id=1%20OR%201%3D1", "sort_by=url", "limit=0"):
                self.assertEqual(g.request("GET", "/v1/admin/providers?" + query,
                                           headers=ADMIN).status, 422, query)
            self.assertEqual(g.request("GET", "/v1/admin/providers", headers=USER).status, 403)

            # PATCH what may change; null leaves a member as it is.
            r = g.request("PATCH", "/v1/admin/providers/%d" % p["id"],
                          {"timeout": 60, "qos_limit": 2, "model_hosting_zone": None,
                           "idle_timeout": 0.5}, headers=ADMIN)
            self.assertEqual(r.status, 200, r.text)
            self.assertEqual((r.json()["timeout"], r.json()["max_concurrency"],
                              r.json()["model_hosting_zone"], r.json()["idle_timeout"]),
                             (60, 2, "FRA", 0.5))
            self.assertEqual(g.request("GET", "/v1/admin/providers/%d" % p["id"],
                                       headers=ADMIN).json(), r.json())
            self.assertEqual(g.request("PATCH", "/v1/admin/providers/%d" % p["id"],
                                       {"qos_limit": 0}, headers=ADMIN).status, 422)
            # A router's new type must suit its providers.
            r = g.request("PATCH", "/v1/admin/routers/%d" % chat, {"type": "text-classification"},
                          headers=ADMIN)
            self.assertEqual((r.status, r.json()["detail"]),
                             (400, "Invalid model provider type openai for text-classification "
                              "router."))
            r = g.request("PATCH", "/v1/admin/providers/%d" % p["id"], {"router_id": 999999},
                          headers=ADMIN)
            self.assertEqual((r.status, r.json()["detail"]),
                             (404, "Model router 999999 not found."))
            self.assertEqual(g.request("PATCH", "/v1/admin/providers/999999", {"timeout": 5},
                                       headers=ADMIN).status, 404)

            r = g.request("DELETE", "/v1/admin/providers/%d" % p["id"], headers=ADMIN)
            self.assertEqual((r.status, r.json()["id"]), (200, p["id"]))
            r = g.request("GET", "/v1/admin/providers/%d" % p["id"], headers=ADMIN)
            self.assertEqual((r.status, r.json()["detail"]),
                             (404, "Model provider %d not found." % p["id"]))
            self.assertFalse(self.visible(g, "chat"))
            # Deleting a router deletes its providers.
            self.assertEqual(g.request("DELETE", "/v1/admin/routers/%d" % emb,
                                       headers=ADMIN).status, 200)
            self.assertEqual(self.sql("SELECT count(*) FROM model_client"), [["0"]])

    @unittest.skipUnless(have_plugins("openai"), "the openai plugin is not built")
    def test_shutdown_during_a_probe(self):
        """SIGTERM while a provider is being probed: the drain deadline cuts
        the request, and the process still ends cleanly."""
        cfg = self.config([], {"good": {}, "mock": {}, "openai": {}})
        cfg["server"] = {"drain_timeout": "1s"}
        with MockUpstream(models=["slow"]) as up:
            up.fault("delay", count=-1, ms=20000, path="/v1/models")
            g = Gateway(cfg, pg=self.pg, env=PLUGIN_ENV)
            with g:
                router = self.create_router(g, "slow")
                results = []

                def create():
                    try:
                        results.append(g.request(
                            "POST", "/v1/admin/providers",
                            {"router_id": router["id"], "type": "openai", "url": up.url,
                             "model_name": "slow"}, headers=ADMIN, timeout=30).status)
                    except Exception as e:  # noqa: BLE001
                        results.append(type(e).__name__)

                t = threading.Thread(target=create)
                t.start()
                self.assertTrue(poll(lambda: up.stats()["by_path"].get("/v1/models", 0) >= 1),
                                up.stats())
                g.send_signal(signal.SIGTERM)
                self.assertEqual(g.wait(20), 0, g.log()[-3000:])
                t.join()
                self.assertNotEqual(results, [201])
            self.assertIn("drain deadline reached", g.log())
            self.assertEqual(self.sql("SELECT count(*) FROM model_client"), [["0"]])

    def test_sql_metacharacters_are_data(self):
        corpus = ["'", "''", '";--', "\\", "$$", "%", "_", "/*", "1;DROP TABLE x",
                  "a' OR '1'='1", "name desc; select 1", "\u00e9t\u00e9 \U0001F600"]
        with self.gateway([]) as g:
            for name in corpus:
                router = self.create_router(g, name, aliases=[name + " alias"])
                self.assertEqual(router["name"], name)
                self.create_mock_provider(g, router["id"], model_name=name)
                for key in (name, name + " alias"):
                    r = g.request("GET", path_of(key), headers=USER)
                    self.assertEqual(r.status, 200, (key, r.text))
                    self.assertEqual(r.json()["id"], name)
            listed = g.request("GET", "/v1/admin/routers?limit=100&sort_by=name", headers=ADMIN)
            self.assertEqual(listed.status, 200)
            self.assertEqual(sorted(x["name"] for x in listed.json()["data"]), sorted(corpus))
            self.assertEqual(self.sql("SELECT count(*) FROM model"), [[str(len(corpus))]])
            self.assertEqual(self.sql("SELECT count(*) FROM model_client"), [[str(len(corpus))]])

    def test_second_instance_follows_changes(self):
        with self.gateway([]) as g1, self.gateway([]) as g2:
            router = self.create_router(g1, "shared", aliases=["s1"])
            self.create_mock_provider(g1, router["id"])
            # LISTEN/NOTIFY: well within a second; the bound is generous.
            self.assertTrue(poll(lambda: self.visible(g2, "shared")), g2.log()[-2000:])
            r = g1.request("PATCH", "/v1/admin/routers/%d" % router["id"],
                           {"aliases": ["s2"]}, headers=ADMIN)
            self.assertEqual(r.status, 200, r.text)
            self.assertTrue(poll(lambda: self.visible(g2, "s2")))
            self.assertFalse(self.visible(g2, "s1"))
            self.assertEqual(g1.request("DELETE", "/v1/admin/routers/%d" % router["id"],
                                        headers=ADMIN).status, 200)
            self.assertTrue(poll(lambda: not self.visible(g2, "shared")))
            # A change made behind llmgate's back, announced by hand.
            self.sql("WITH m AS (INSERT INTO model (name, type) VALUES ('by-hand', "
                     "'text-generation') RETURNING id) INSERT INTO model_client (model_id, "
                     "type, url, model_name) SELECT id, 'mock', 'http://h', 'x' FROM m")
            self.sql("NOTIFY llmgate_models")
            self.assertTrue(poll(lambda: self.visible(g1, "by-hand") and
                                 self.visible(g2, "by-hand")))

    @unittest.skipUnless(have_plugins("openai", "vllm"), "openai and vllm plugins not built")
    def test_health_models(self):
        plugins = {"good": {}, "mock": {}, "openai": {}, "vllm": {}}
        with MockUpstream(models=["h-chat"]) as up, MockUpstream(models=["h-vllm"]) as vl:
            models = [
                {"name": "h-openai", "type": "text-generation",
                 "providers": [{"type": "openai", "url": up.url, "model_name": "h-chat"}]},
                {"name": "h-vllm", "type": "text-generation",
                 "providers": [{"type": "vllm", "url": vl.url, "model_name": "h-vllm"}]},
                {"name": "h-mock", "type": "text-generation",
                 "providers": [{"type": "mock", "url": CLOSED_URL, "model_name": "x"}]},
                {"name": "h-none", "type": "text-generation"},
            ]
            with self.gateway(models, plugins) as g:
                def statuses():
                    r = g.request("GET", "/health/models", headers=USER)
                    self.assertEqual(r.status, 200, r.text)
                    return {x["id"]: x["status"] for x in r.json()}

                def becomes(model, status):
                    return poll(lambda: statuses()[model] == status, timeout=10)

                self.assertEqual(g.request("GET", "/health/models").status, 401)
                expected = {"h-openai": "green", "h-vllm": "green", "h-mock": "green"}
                self.assertTrue(poll(lambda: statuses() == expected, timeout=10), statuses())
                self.assertGreaterEqual(up.stats()["by_path"].get("/v1/models", 0), 1)
                # Checks never bill a completion.
                for u in (up, vl):
                    paths = u.stats()["by_path"]
                    self.assertNotIn("/v1/chat/completions", paths)
                    self.assertNotIn("/v1/completions", paths)
                # vLLM: yellow with requests waiting, red above 20 running. A reload
                # runs a round at once instead of waiting for the 10 s timer.
                vl.config(metrics_waiting=3)
                g.send_signal(signal.SIGHUP)
                self.assertTrue(becomes("h-vllm", "yellow"), statuses())
                vl.config(metrics_waiting=0, metrics_running=25)
                g.send_signal(signal.SIGHUP)
                self.assertTrue(becomes("h-vllm", "red"), statuses())
                vl.reset()
                up.stop()
                g.send_signal(signal.SIGHUP)
                self.assertTrue(becomes("h-openai", "red"), statuses())
                self.assertTrue(becomes("h-vllm", "green"), statuses())
                self.assertEqual(statuses()["h-mock"], "green")
                # A provider type without its plugin here is kept, and red.
                self.sql("WITH m AS (INSERT INTO model (name, type) VALUES ('h-ghost', "
                         "'text-generation') RETURNING id) INSERT INTO model_client (model_id, "
                         "type, url, model_name) SELECT id, 'ghost', 'http://h', 'x' FROM m")
                self.sql("NOTIFY llmgate_models")
                self.assertTrue(poll(lambda: self.visible(g, "h-ghost")))
                self.assertTrue(becomes("h-ghost", "red"), statuses())


if __name__ == "__main__":
    lgtest.main()
