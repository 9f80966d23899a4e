#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Who reaches what (reliability-security.md §5.2, §5.3): the matrix
{owner, user of the same organization, user of another organization,
admin, no key} x {get, list, patch, delete} for keys and for the admin
objects (users, roles, organizations); which models a role sees and calls
(spec §5.2: only models with limit rows, none of value 0; admins see all);
and a canary key that never shows up in the log, an error body, a listing,
the database or PostgreSQL's log."""
import json
import time
import unittest

import common
import lgtest
from pgcluster import PgCluster

MASTER = "master-key-for-auth-access-tests-41f7"
NO_ADMIN = "User has no admin rights."
ROLES_TIMEOUT = 10          # seconds for a role change to reach the server
CHAT = "/v1/chat/completions"


def config():
    return {"plugins": {"auth": {"master_key": MASTER}, "mock": {}},
            "models": [{"name": n, "type": "text-generation",
                        "providers": [{"type": "mock", "url": "http://mock.invalid",
                                       "model_name": n}]} for n in ("m1", "m2", "m3")]}


class Access(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.pg = PgCluster().start()
        cls.g = lgtest.Gateway(config(), pg=cls.pg).start()
        ids = dict(cls.pg.psql("SELECT name, id FROM model"))
        cls.m = {name: int(i) for name, i in ids.items()}
        org_a = cls.admin("POST", "/v1/admin/organizations", {"name": "org-a"})["id"]
        org_b = cls.admin("POST", "/v1/admin/organizations", {"name": "org-b"})["id"]
        cls.orgs = {"a": org_a, "b": org_b}
        r1 = cls.make_role("r1", [("m1", "rpm", None), ("m1", "tpm", 100000)])
        r2 = cls.make_role("r2", [("m2", "rpd", None)])
        r0 = cls.make_role("r0", [("m1", "rpm", 0), ("m1", "tpm", None), ("m3", "rpm", None)])
        admin_role = cls.make_role("admins", [], ["admin"])
        cls.roles = {"r1": r1, "r2": r2, "r0": r0}
        cls.users, cls.keys = {}, {}
        for who, role, org in (("owner", r1, org_a), ("same", r1, org_a),
                               ("other", r2, org_b), ("admin", admin_role, org_b),
                               ("zero", r0, org_a)):
            u = cls.admin("POST", "/v1/admin/users",
                          {"email": who + "@example.org", "role_id": role,
                           "organization_id": org})
            cls.users[who] = u["id"]
            cls.keys[who] = cls.admin("POST", "/v1/admin/keys",
                                      {"name": who, "user": u["id"]})["value"]

    @classmethod
    def tearDownClass(cls):
        cls.g.close()
        cls.pg.destroy()

    @classmethod
    def admin(cls, method, path, body=None):
        return lgtest.admin(cls.g, MASTER, method, path, body)

    @classmethod
    def make_role(cls, name, limits, permissions=()):
        body = {"name": name, "permissions": list(permissions),
                "limits": [{"model_id": cls.m[m], "type": t, "value": v} for m, t, v in limits]}
        return cls.admin("POST", "/v1/admin/roles", body)["id"]

    def call(self, who, method, path, body=None):
        headers = {"Authorization": "Bearer " + self.keys[who]} if who else {}
        r = self.g.request(method, path, body, headers=headers)
        self.assertLess(r.status, 500, "%s %s %s: %r" % (who, method, path, r))
        return r

    def expect(self, who, method, path, status, body=None, detail=None):
        r = self.call(who, method, path, body)
        self.assertEqual(r.status, status, "%s %s %s: %r" % (who, method, path, r))
        if detail is not None:
            self.assertEqual(r.json()["detail"], detail)
        return r

    def visible(self, who):
        return {m["id"] for m in self.expect(who, "GET", "/v1/models", 200).json()["data"]}

    def wait_visible(self, who, expected):
        deadline = time.monotonic() + ROLES_TIMEOUT
        while self.visible(who) != expected and time.monotonic() < deadline:
            time.sleep(0.1)
        self.assertEqual(self.visible(who), expected, who)

    # ---- keys ----

    def test_keys_matrix(self):
        k = self.expect("owner", "POST", "/v1/keys", 201, {"name": "target"}).json()
        path = "/v1/keys/%d" % k["id"]
        missing = "Key %d not found." % k["id"]
        for who in ("same", "other", "admin", "zero"):
            self.expect(who, "GET", path, 404, detail=missing)
            self.expect(who, "PATCH", path, 404, {"name": "stolen"}, detail=missing)
            self.expect(who, "DELETE", path, 404, detail=missing)
            self.expect(who, "DELETE", "/v1/me/keys/%d" % k["id"], 404, detail=missing)
            listed = self.expect(who, "GET", "/v1/keys?limit=100", 200).json()["data"]
            self.assertNotIn(k["id"], [x["id"] for x in listed], who)
            self.assertTrue(all(x["user"] == self.users[who] for x in listed), who)
            # Nor through the admin routes, for non-admins.
            if who != "admin":
                self.expect(who, "GET", "/v1/admin/keys/%d" % k["id"], 403, detail=NO_ADMIN)
                self.expect(who, "GET", "/v1/admin/keys?user=%d" % self.users["owner"], 403,
                            detail=NO_ADMIN)
                self.expect(who, "POST", "/v1/admin/keys", 403,
                            {"name": "x", "user": self.users["owner"]}, detail=NO_ADMIN)
        for method in ("GET", "PATCH", "DELETE"):
            self.expect(None, method, path, 401, {"name": "x"})
        self.expect(None, "GET", "/v1/keys", 401)
        self.expect(None, "POST", "/v1/keys", 401, {"name": "x"})
        # Untouched by all of that, and still the owner's.
        got = self.expect("owner", "GET", path, 200).json()
        self.assertEqual((got["name"], got["status"]), ("target", "active"))
        self.assertEqual(self.call(None, "GET", "/v1/me").status, 401)
        self.assertEqual(self.expect("owner", "GET", "/v1/me", 200).json()["id"],
                         self.users["owner"])
        self.assertIn(k["id"], [x["id"] for x in
                                self.expect("owner", "GET", "/v1/keys?limit=100", 200)
                                .json()["data"]])
        self.expect("owner", "PATCH", path, 200, {"name": "renamed"})
        self.expect("owner", "DELETE", path, 200)
        # The admin reaches it through the admin routes.
        admin_view = self.expect("admin", "GET", "/v1/admin/keys/%d" % k["id"], 200).json()
        self.assertEqual((admin_view["name"], admin_view["status"]), ("renamed", "revoked"))
        ids = [x["id"] for x in self.expect("admin", "GET", "/v1/admin/keys?user=%d&limit=100"
                                            % self.users["owner"], 200).json()["data"]]
        self.assertIn(k["id"], ids)

    # ---- admin objects ----

    def test_admin_objects_matrix(self):
        throwaway = {
            "users": lambda: self.admin("POST", "/v1/admin/users",
                                        {"email": "t%d@example.org" % time.monotonic_ns(),
                                         "role_id": self.roles["r1"]})["id"],
            "roles": lambda: self.make_role("t%d" % time.monotonic_ns(), []),
            "organizations": lambda: self.admin("POST", "/v1/admin/organizations",
                                                {"name": "t%d" % time.monotonic_ns()})["id"],
        }
        patches = {"users": {"name": "x"}, "roles": {"name": "x%d" % time.monotonic_ns()},
                   "organizations": {"name": "x%d" % time.monotonic_ns()}}
        creates = {"users": {"email": "new@example.org", "role_id": 1},
                   "roles": {"name": "new"}, "organizations": {"name": "new"}}
        for kind, make in throwaway.items():
            base = "/v1/admin/" + kind
            obj = make()
            path = "%s/%d" % (base, obj)
            for who in ("owner", "same", "other", "zero"):
                self.expect(who, "GET", base, 403, detail=NO_ADMIN)
                self.expect(who, "POST", base, 403, creates[kind], detail=NO_ADMIN)
                self.expect(who, "GET", path, 403, detail=NO_ADMIN)
                self.expect(who, "PATCH", path, 403, patches[kind], detail=NO_ADMIN)
                self.expect(who, "DELETE", path, 403, detail=NO_ADMIN)
            for method in ("GET", "PATCH", "DELETE"):
                self.expect(None, method, path, 401, patches[kind])
            self.expect(None, "GET", base, 401)
            self.expect(None, "POST", base, 401, creates[kind])
            # Still there, unchanged, and the admin user may do it all.
            self.assertNotEqual(self.expect("admin", "GET", path, 200).json()["name"], "x")
            listed = self.expect("admin", "GET", base + "?limit=100", 200).json()["data"]
            self.assertIn(obj, [o["id"] for o in listed])
            self.expect("admin", "PATCH", path, 200, patches[kind])
            self.expect("admin", "DELETE", path, 204)
            self.expect("admin", "GET", path, 404)

    def test_own_profile_and_organization(self):
        for who, org in (("owner", "a"), ("same", "a"), ("other", "b"), ("zero", "a")):
            self.assertEqual(self.expect(who, "GET", "/v1/me", 200).json()["id"],
                             self.users[who])
            o = self.expect(who, "GET", "/v1/organizations/me", 200).json()
            self.assertEqual(o["id"], self.orgs[org])
            # Rights cannot be granted to oneself.
            self.expect(who, "PATCH", "/v1/me", 204,
                        {"role_id": 1, "organization_id": self.orgs["b" if org == "a" else "a"],
                         "budget": None, "permissions": ["admin"]})
            self.assertEqual(self.expect(who, "GET", "/v1/organizations/me", 200).json()["id"],
                             self.orgs[org])
            self.expect(who, "GET", "/v1/admin/users", 403, detail=NO_ADMIN)

    # ---- models ----

    def chat(self, who, model):
        return self.call(who, "POST", CHAT, {"model": model,
                                             "messages": [{"role": "user", "content": "hi"}]})

    def test_model_visibility_by_role(self):
        self.wait_visible("owner", {"m1"})
        self.wait_visible("other", {"m2"})
        self.wait_visible("zero", {"m3"})       # a 0 on m1 closes it
        self.assertEqual(self.visible("admin"), {"m1", "m2", "m3"})
        cases = (("owner", "m1", "m2"), ("same", "m1", "m3"), ("other", "m2", "m1"),
                 ("zero", "m3", "m1"))
        for who, allowed, refused in cases:
            self.expect(who, "GET", "/v1/models/" + allowed, 200)
            self.expect(who, "GET", "/v1/models/" + refused, 404,
                        detail="Model %s not found." % refused)
            self.assertEqual(self.chat(who, allowed).status, 200, who)
            r = self.chat(who, refused)
            self.assertEqual(r.status, 404, who)
            self.assertEqual(r.json()["detail"], "Model %s not found." % refused)
            # The same answer as a model that does not exist.
            self.assertEqual(self.chat(who, "no-such-model").status, 404)
        for m in ("m1", "m2", "m3"):
            self.assertEqual(self.chat("admin", m).status, 200, m)
        self.expect(None, "GET", "/v1/models", 401)
        self.assertEqual(self.chat(None, "m1").status, 401)

    def test_model_access_follows_role_changes(self):
        role = self.make_role("moving", [("m1", "rpm", None)])
        u = self.admin("POST", "/v1/admin/users", {"email": "mover@example.org",
                                                   "role_id": role})
        self.keys["mover"] = self.admin("POST", "/v1/admin/keys",
                                        {"name": "mover", "user": u["id"]})["value"]
        self.wait_visible("mover", {"m1"})
        self.admin("PATCH", "/v1/admin/roles/%d" % role,
                   {"limits": [{"router_id": self.m["m2"], "type": "tpm", "value": 10}]})
        self.wait_visible("mover", {"m2"})
        self.admin("PATCH", "/v1/admin/roles/%d" % role,
                   {"limits": [{"model_id": self.m["m2"], "type": "tpm", "value": 0}]})
        self.wait_visible("mover", set())
        self.assertEqual(self.chat("mover", "m2").status, 404)
        self.admin("PATCH", "/v1/admin/users/%d" % u["id"], {"role_id": self.roles["r2"]})
        self.wait_visible("mover", {"m2"})

    # ---- the canary ----

    def test_canary_key_never_leaks(self):
        k = self.expect("owner", "POST", "/v1/keys", 201, {"name": "canary"}).json()
        canary = k["value"]
        self.keys["canary"] = canary
        bodies = []
        for method, path, body in (
                ("GET", "/v1/me", None),
                ("GET", "/v1/admin/users", None),
                ("PATCH", "/v1/me", {"email": canary * 10}),
                ("POST", "/v1/keys", {"name": 5, "value": canary}),
                ("POST", "/v1/keys", {"name": "x", "expires": canary}),
                ("PATCH", "/v1/keys/%d" % k["id"], {"name": canary * 5}),
                ("POST", CHAT, {"model": "m2", "messages": []})):
            bodies.append(self.call("canary", method, path, body))
        listed = self.expect("canary", "GET", "/v1/keys?limit=100", 200)
        self.expect("owner", "DELETE", "/v1/keys/%d" % k["id"], 200)
        for variant in (canary, canary + "x", canary[:-1], canary.upper(), " " + canary):
            r = self.g.request("GET", "/v1/me", headers={"Authorization": "Bearer " + variant})
            self.assertEqual(r.status, 401, variant[:12])
            bodies.append(r)
        for r in bodies + [listed]:
            self.assertNotIn(canary, r.text)
            self.assertNotIn(canary, repr(r.headers.items()))
        self.assertNotIn(canary, self.g.log())
        self.assertNotIn(canary, self.pg.server_log())
        dump = self.pg.psql("SELECT row_to_json(t)::text FROM token t")
        self.assertNotIn(canary, json.dumps(dump))


if __name__ == "__main__":
    lgtest.main()
