#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""The auth plugin's REST API against a real server and PostgreSQL: every
endpoint of /v1/me, /v1/keys, /v1/organizations/me and /v1/admin/{users,
roles,organizations,keys} with its status codes and messages; paging and
sorting, bad values included; the last admin keeps admin; SQL
metacharacters in every text field come back as they were sent, with no
5xx and no SQL error in PostgreSQL's log."""
import json
import threading
import time
import unittest
import urllib.parse

import common
import lgtest
from pgcluster import PgCluster

MASTER = "master-key-for-auth-api-tests-9d2b"
MAX_DAYS = 30
DAY = 86400
RESERVED = "_system_playground_key"
# reliability-security.md §5.3, SQL metacharacters in every text field.
SQL_CORPUS = ["'", "''", "\";--", "\\", "$$", "%", "_", "/*", "1;DROP TABLE x",
              "name desc; select 1", "a' OR '1'='1", "x\"); DROP TABLE \"user\"; --",
              "$1", "?", "\\x00", "é'ü"]


def models():
    return [{"name": n, "type": "text-generation",
             "providers": [{"type": "mock", "url": "http://mock.invalid", "model_name": n}]}
            for n in ("m1", "m2")]


def config():
    # Wrong current passwords are part of the corpus: more than login's
    # default number of attempts per minute.
    return {"plugins": {"auth": {"master_key": MASTER, "key_max_expiration_days": MAX_DAYS,
                                 "login_attempts_per_minute": 1000},
                        "mock": {}},
            "models": models()}


class Base(unittest.TestCase):
    """One PostgreSQL cluster and one server for the class."""

    @classmethod
    def setUpClass(cls):
        cls.pg = PgCluster().start()
        cls.g = lgtest.Gateway(config(), pg=cls.pg).start()
        cls.n = 0

    @classmethod
    def tearDownClass(cls):
        cls.g.close()
        errors = [l for l in cls.pg.server_log().splitlines()
                  if "syntax error" in l or "invalid input syntax" in l]
        cls.pg.destroy()
        # No client value ever reaches the SQL text.
        if errors:
            raise AssertionError("SQL errors in the PostgreSQL log: %r" % errors[:5])

    def call(self, method, path, body=None, key=MASTER, raw=None):
        headers = {"Authorization": "Bearer " + key} if key is not None else {}
        r = self.g.request(method, path, raw if raw is not None else body, headers=headers)
        self.assertLess(r.status, 500, "%s %s: %r" % (method, path, r))
        return r

    def ok(self, method, path, body=None, status=200, key=MASTER):
        r = self.call(method, path, body, key)
        self.assertEqual(r.status, status, "%s %s: %r" % (method, path, r))
        return r.json() if r.body else None

    def fails(self, method, path, body=None, status=422, detail=None, key=MASTER):
        r = self.call(method, path, body, key)
        self.assertEqual(r.status, status, "%s %s: %r" % (method, path, r))
        if detail is not None:
            self.assertEqual(r.json()["detail"], detail)
        return r

    def unique(self, prefix):
        type(self).n += 1
        return "%s-%d-%d" % (prefix, type(self).n, int(time.time() * 1000) % 100000)

    def model_id(self, name):
        return int(self.pg.psql("SELECT id FROM model WHERE name = '%s'" % name)[0][0])

    def admin_role(self):
        return int(self.pg.psql("SELECT id FROM role WHERE name = 'bootstrap_admin'")[0][0])

    def role(self, **body):
        body.setdefault("name", self.unique("role"))
        body.setdefault("limits", [{"model_id": self.model_id("m1"), "type": "rpm",
                                    "value": None}])
        return self.ok("POST", "/v1/admin/roles", body, 201)

    def org(self):
        return self.ok("POST", "/v1/admin/organizations", {"name": self.unique("org")}, 201)

    def user(self, role=None, org=None, **body):
        body.setdefault("email", self.unique("user") + "@example.org")
        body["role_id"] = role if role is not None else self.role()["id"]
        if org is not None:
            body["organization_id"] = org
        return self.ok("POST", "/v1/admin/users", body, 201)

    def key(self, user_id, name=None, **body):
        body.update({"name": name or self.unique("key"), "user": user_id})
        return self.ok("POST", "/v1/admin/keys", body, 201)


class Me(Base):
    def test_master_key_is_user_zero_with_every_permission(self):
        for path in ("/v1/me", "/v1/me/info"):
            me = self.ok("GET", path)
            self.assertEqual(me["object"], "userInfo")
            self.assertEqual(me["id"], 0)
            self.assertEqual(sorted(me["permissions"]),
                             ["admin", "create_public_collection", "provide_models",
                              "read_metric"])
            self.assertEqual(me["limits"], [])
        self.fails("PATCH", "/v1/me", {"name": "x"}, 400)
        self.fails("POST", "/v1/keys", {"name": "x"}, 400)
        self.assertEqual(self.ok("GET", "/v1/keys")["data"], [])
        self.fails("GET", "/v1/organizations/me", status=404,
                   detail="Organization 0 not found.")

    def test_user_info_and_organization(self):
        org = self.org()
        role = self.role(permissions=["read_metric"],
                         limits=[{"router_id": self.model_id("m1"), "type": "tpm",
                                  "value": 100}])
        u = self.user(role["id"], org["id"], name="Ann", budget=2.5, priority=3)
        k = self.key(u["id"])["value"]
        me = self.ok("GET", "/v1/me", key=k)
        self.assertEqual((me["object"], me["id"], me["email"], me["name"]),
                         ("userInfo", u["id"], u["email"], "Ann"))
        self.assertEqual(me["organization_id"], org["id"])
        self.assertEqual(me["budget"], 2.5)
        self.assertEqual(me["priority"], 3)
        self.assertEqual(me["permissions"], ["read_metric"])
        self.assertEqual(me["limits"], [{"router_id": self.model_id("m1"),
                                         "model_id": self.model_id("m1"),
                                         "type": "tpm", "value": 100}])
        self.assertEqual(self.ok("GET", "/v1/me/info", key=k), me)
        o = self.ok("GET", "/v1/organizations/me", key=k)
        self.assertEqual((o["object"], o["id"], o["name"], o["users"]),
                         ("organization", org["id"], org["name"], 1))

    def test_patch_me(self):
        role = self.role()
        u = self.user(role["id"], password="first-pass")
        k = self.key(u["id"])["value"]
        email = self.unique("new") + "@example.org"
        self.assertIsNone(self.ok("PATCH", "/v1/me", {"name": "Bob", "email": email}, 204,
                                  key=k))
        me = self.ok("GET", "/v1/me", key=k)
        self.assertEqual((me["name"], me["email"]), ("Bob", email))
        self.ok("PATCH", "/v1/me", {"name": None}, 204, key=k)
        self.assertIsNone(self.ok("GET", "/v1/me", key=k)["name"])
        # Someone else's email.
        other = self.user(role["id"])
        self.fails("PATCH", "/v1/me", {"email": other["email"]}, 409, key=k)
        # Fields that grant rights are not the user's to set.
        self.ok("PATCH", "/v1/me", {"role_id": self.admin_role(), "budget": 1e9,
                                    "organization_id": 1, "expires": None}, 204, key=k)
        me = self.ok("GET", "/v1/me", key=k)
        self.assertEqual(self.ok("GET", "/v1/admin/users/%d" % u["id"])["role_id"], role["id"])
        self.assertIsNone(me["budget"])
        self.fails("GET", "/v1/admin/users", status=403, key=k)
        # Passwords.
        before = self.pg.psql("SELECT password FROM \"user\" WHERE id = %d" % u["id"])[0][0]
        self.assertTrue(before.startswith("$argon2id$"), before)
        self.fails("PATCH", "/v1/me", {"password": "second-pass"}, 401,
                   "Invalid current password.", key=k)
        self.fails("PATCH", "/v1/me", {"password": "second-pass",
                                       "current_password": "wrong-pass"}, 401,
                   "Invalid current password.", key=k)
        self.fails("PATCH", "/v1/me", {"password": "short", "current_password": "first-pass"},
                   422, key=k)
        self.fails("PATCH", "/v1/me", {"password": "x" * 73, "current_password": "first-pass"},
                   422, key=k)
        self.assertEqual(self.pg.psql("SELECT password FROM \"user\" WHERE id = %d"
                                      % u["id"])[0][0], before)
        self.ok("PATCH", "/v1/me", {"password": "second-pass", "current_password": "first-pass"},
                204, key=k)
        after = self.pg.psql("SELECT password FROM \"user\" WHERE id = %d" % u["id"])[0][0]
        self.assertTrue(after.startswith("$argon2id$"), after)
        self.assertNotEqual(after, before)
        self.ok("PATCH", "/v1/me", {"password": "third-pass", "current_password": "second-pass"},
                204, key=k)
        # Bad bodies.
        self.fails("PATCH", "/v1/me", {"email": ""}, 422, key=k)
        self.fails("PATCH", "/v1/me", {"email": "x" * 255}, 422, key=k)
        self.fails("PATCH", "/v1/me", {"name": 5}, 422, key=k)
        r = self.call("PATCH", "/v1/me", raw="{not json", key=k)
        self.assertEqual(r.status, 400)

    def test_no_key(self):
        for method, path in (("GET", "/v1/me"), ("PATCH", "/v1/me"), ("GET", "/v1/me/info"),
                             ("GET", "/v1/organizations/me"), ("GET", "/v1/keys"),
                             ("POST", "/v1/keys"), ("GET", "/v1/admin/users")):
            self.fails(method, path, {}, 401, key=None)


class Organizations(Base):
    def test_crud(self):
        name = self.unique("org")
        o = self.ok("POST", "/v1/admin/organizations", {"name": "  %s " % name}, 201)
        self.assertEqual((o["object"], o["name"], o["users"]), ("organization", name, 0))
        for k in ("id", "created", "updated"):
            self.assertIsInstance(o[k], int)
        path = "/v1/admin/organizations/%d" % o["id"]
        self.assertEqual(self.ok("GET", path), o)
        self.fails("POST", "/v1/admin/organizations", {"name": name}, 409,
                   "Organization already exists.")
        self.fails("POST", "/v1/admin/organizations", {}, 422)
        self.fails("POST", "/v1/admin/organizations", {"name": ""}, 422)
        self.fails("POST", "/v1/admin/organizations", {"name": ["x"]}, 422)
        renamed = self.unique("org")
        self.assertEqual(self.ok("PATCH", path, {"name": renamed})["name"], renamed)
        other = self.org()
        self.fails("PATCH", path, {"name": other["name"]}, 409, "Organization already exists.")
        u = self.user(org=o["id"])
        self.assertEqual(self.ok("GET", path)["users"], 1)
        self.fails("DELETE", path, status=409,
                   detail="Organization still has users and cannot be removed.")
        self.ok("DELETE", "/v1/admin/users/%d" % u["id"], status=204)
        self.assertIsNone(self.ok("DELETE", path, status=204))
        missing = "Organization %d not found." % o["id"]
        for method in ("GET", "PATCH", "DELETE"):
            self.fails(method, path, {"name": self.unique("x")}, 404, missing)
        self.fails("GET", "/v1/admin/organizations/abc", status=422)
        self.fails("GET", "/v1/admin/organizations/0", status=422)
        self.fails("GET", "/v1/admin/organizations/-1", status=422)

    def test_default_organization_is_listed(self):
        names = [o["name"] for o in self.ok("GET", "/v1/admin/organizations?limit=100")["data"]]
        self.assertIn("default", names)


class Roles(Base):
    def test_crud(self):
        m1, m2 = self.model_id("m1"), self.model_id("m2")
        name = self.unique("role")
        body = {"name": name, "permissions": ["read_metric", "provide_models", "read_metric"],
                "limits": [{"router_id": m1, "type": "rpm", "value": 10},
                           {"model_id": m1, "type": "rpm", "value": 20},     # last wins
                           {"model_id": m2, "type": "tpd", "value": None}]}
        r = self.ok("POST", "/v1/admin/roles", body, 201)
        self.assertEqual((r["object"], r["name"], r["users"]), ("role", name, 0))
        self.assertEqual(r["permissions"], ["provide_models", "read_metric"])
        self.assertEqual([(l["router_id"], l["type"], l["value"]) for l in r["limits"]],
                         sorted([(m1, "rpm", 20), (m2, "tpd", None)]))
        path = "/v1/admin/roles/%d" % r["id"]
        self.assertEqual(self.ok("GET", path), r)
        self.fails("POST", "/v1/admin/roles", {"name": name}, 409, "Role already exists.")
        # A patch of the name keeps the sets; sets given replace the old ones.
        p = self.ok("PATCH", path, {"name": name + "-2"})
        self.assertEqual((p["permissions"], p["limits"]), (r["permissions"], r["limits"]))
        p = self.ok("PATCH", path, {"permissions": ["admin"],
                                    "limits": [{"model_id": m2, "type": "tpd", "value": 5},
                                               {"model_id": m2, "type": "rpm", "value": 0}]})
        self.assertEqual(p["name"], name + "-2")
        self.assertEqual(p["permissions"], ["admin"])
        self.assertEqual([(l["model_id"], l["type"], l["value"]) for l in p["limits"]],
                         [(m2, "rpm", 0), (m2, "tpd", 5)])
        p = self.ok("PATCH", path, {"permissions": [], "limits": []})
        self.assertEqual((p["permissions"], p["limits"]), ([], []))
        rows = self.pg.psql("SELECT count(*) FROM role_limit WHERE role_id = %d" % r["id"])
        self.assertEqual(rows, [["0"]])
        # Users keep a role.
        u = self.user(r["id"])
        self.assertEqual(self.ok("GET", path)["users"], 1)
        self.fails("DELETE", path, status=409,
                   detail="Role still has users and cannot be removed.")
        self.ok("DELETE", "/v1/admin/users/%d" % u["id"], status=204)
        self.assertIsNone(self.ok("DELETE", path, status=204))
        missing = "Role %d not found." % r["id"]
        for method in ("GET", "PATCH", "DELETE"):
            self.fails(method, path, {"name": self.unique("x")}, 404, missing)

    def test_validation(self):
        m1 = self.model_id("m1")
        bad = [{"name": ""},
               {"permissions": ["root"]}, {"permissions": "admin"}, {"permissions": [1]},
               {"limits": {}}, {"limits": [1]},
               {"limits": [{"type": "rpm", "value": 1}]},
               {"limits": [{"model_id": m1, "type": "rph", "value": 1}]},
               {"limits": [{"model_id": m1, "value": 1}]},
               {"limits": [{"model_id": m1, "type": "rpm", "value": -1}]},
               {"limits": [{"model_id": m1, "type": "rpm", "value": "10"}]},
               {"limits": [{"model_id": m1, "type": "rpm", "value": 1.5}]},
               {"limits": [{"model_id": "m1", "type": "rpm", "value": 1}]}]
        for body in bad:
            body = dict({"name": self.unique("role")}, **body)
            self.fails("POST", "/v1/admin/roles", body, 422)
        self.fails("POST", "/v1/admin/roles", {}, 422)
        self.fails("POST", "/v1/admin/roles",
                   {"name": self.unique("role"),
                    "limits": [{"model_id": 999999, "type": "rpm", "value": 1}]},
                   404, "Model router 999999 not found.")
        r = self.role()
        self.fails("PATCH", "/v1/admin/roles/%d" % r["id"],
                   {"limits": [{"model_id": 999998, "type": "rpm", "value": 1}]},
                   404, "Model router 999998 not found.")
        # Nothing was half-written.
        self.assertEqual(len(self.ok("GET", "/v1/admin/roles/%d" % r["id"])["limits"]), 1)


class Users(Base):
    def test_crud(self):
        org = self.org()
        role = self.role()
        email = self.unique("u") + "@example.org"
        u = self.ok("POST", "/v1/admin/users",
                    {"email": email, "password": "sixsix", "role": role["id"],
                     "organization": org["id"], "name": "N", "budget": 12.25,
                     "expires": int(time.time()) + DAY, "priority": 2}, 201)
        self.assertEqual((u["object"], u["email"], u["name"], u["role_id"],
                          u["organization_id"], u["budget"], u["priority"]),
                         ("user", email, "N", role["id"], org["id"], 12.25, 2))
        self.assertNotIn("password", u)
        path = "/v1/admin/users/%d" % u["id"]
        self.assertEqual(self.ok("GET", path), u)
        self.fails("POST", "/v1/admin/users", {"email": email, "role_id": role["id"]}, 409,
                   "User already exists.")
        # Without an organization, a user joins "default".
        d = self.user(role["id"])
        default = self.pg.psql("SELECT id FROM organization WHERE name = 'default'")[0][0]
        self.assertEqual(d["organization_id"], int(default))
        # Updates: absent fields stay, null clears.
        role2 = self.role()
        p = self.ok("PATCH", path, {"role_id": role2["id"], "budget": None, "expires": None,
                                    "name": None})
        self.assertEqual((p["role_id"], p["budget"], p["expires"], p["name"], p["email"],
                          p["priority"]), (role2["id"], None, None, None, email, 2))
        p = self.ok("PATCH", path, {"password": "another-password", "budget": 0})
        self.assertEqual(p["budget"], 0)
        self.fails("PATCH", path, {"email": d["email"]}, 409, "User already exists.")
        self.fails("PATCH", path, {"role_id": 999999}, 404, "Role 999999 not found.")
        self.fails("PATCH", path, {"organization_id": 999999}, 404,
                   "Organization 999999 not found.")
        self.assertIsNone(self.ok("DELETE", path, status=204))
        missing = "User %d not found." % u["id"]
        for method in ("GET", "PATCH", "DELETE"):
            self.fails(method, path, {"name": "x"}, 404, missing)
        self.fails("GET", "/v1/admin/users/x1", status=422)

    def test_create_errors(self):
        role = self.role()
        base = {"email": self.unique("e") + "@example.org", "role_id": role["id"]}
        self.fails("POST", "/v1/admin/users", dict(base, role_id=999999), 404,
                   "Role 999999 not found.")
        self.fails("POST", "/v1/admin/users", dict(base, organization_id=999999), 404,
                   "Organization 999999 not found.")
        for bad in ({"email": None}, {"email": ""}, {"email": "x" * 255}, {"role_id": None},
                    {"role_id": "1"}, {"password": "12345"}, {"password": "x" * 73},
                    {"budget": -1}, {"budget": "1"}, {"priority": -1}, {"priority": 1.5},
                    {"expires": "tomorrow"}, {"name": ""}):
            self.fails("POST", "/v1/admin/users", dict(base, **bad), 422)
        # 6 and 72 characters are the bounds.
        self.user(role["id"], password="x" * 6)
        self.user(role["id"], password="y" * 72)

    def test_list_filters(self):
        org = self.org()
        role = self.role()
        tag = self.unique("flt")
        made = [self.user(role["id"], org["id"], email="%s-%d@Example.org" % (tag, i))
                for i in range(3)]
        self.user(self.role()["id"], email="%s-x@example.org" % tag)
        ids = [u["id"] for u in made]
        r = self.ok("GET", "/v1/admin/users?role=%d&limit=100" % role["id"])
        self.assertEqual((r["object"], r["total"]), ("list", 3))
        self.assertEqual([u["id"] for u in r["data"]], ids)
        r = self.ok("GET", "/v1/admin/users?organization=%d" % org["id"])
        self.assertEqual(r["total"], 3)
        r = self.ok("GET", "/v1/admin/users?email=%s&limit=100" % tag.upper())
        self.assertEqual(r["total"], 4)
        r = self.ok("GET", "/v1/admin/users?email=%s&role=%d&sort_by=email&sort_order=desc"
                    % (tag, role["id"]))
        self.assertEqual([u["id"] for u in r["data"]], ids[::-1])
        self.fails("GET", "/v1/admin/users?role=abc")
        self.fails("GET", "/v1/admin/users?organization=-1")
        self.fails("GET", "/v1/admin/users?email=" + "x" * 300)


class LastAdmin(Base):
    def test_last_admin_keeps_admin(self):
        admin_role = self.admin_role()
        admin = int(self.pg.psql("SELECT id FROM \"user\" WHERE role_id = %d" % admin_role)[0][0])
        plain = self.role()
        msg_user = "The last user with the admin permission cannot lose it or be removed."
        msg_role = "The admin permission cannot be removed from the last role whose users have it."
        self.fails("PATCH", "/v1/admin/users/%d" % admin, {"role_id": plain["id"]}, 409,
                   msg_user)
        self.fails("DELETE", "/v1/admin/users/%d" % admin, status=409, detail=msg_user)
        self.fails("PATCH", "/v1/admin/roles/%d" % admin_role, {"permissions": ["read_metric"]},
                   409, msg_role)
        self.fails("DELETE", "/v1/admin/roles/%d" % admin_role, status=409)
        # Other changes to the last admin are fine.
        self.ok("PATCH", "/v1/admin/users/%d" % admin, {"name": "Root"})
        self.ok("PATCH", "/v1/admin/roles/%d" % admin_role,
                {"permissions": ["admin", "read_metric"]})
        # An admin role without users may lose admin.
        spare = self.role(permissions=["admin"])
        self.ok("PATCH", "/v1/admin/roles/%d" % spare["id"], {"permissions": []})
        # With a second admin (through another role), the first may go.
        second_role = self.role(permissions=["admin"])
        second = self.user(second_role["id"])
        self.ok("PATCH", "/v1/admin/users/%d" % admin, {"role_id": plain["id"]})
        self.fails("DELETE", "/v1/admin/users/%d" % second["id"], status=409, detail=msg_user)
        self.fails("PATCH", "/v1/admin/roles/%d" % second_role["id"], {"permissions": []}, 409,
                   msg_role)
        self.ok("PATCH", "/v1/admin/users/%d" % admin, {"role_id": admin_role})
        self.ok("DELETE", "/v1/admin/users/%d" % second["id"], status=204)
        self.assertEqual(self.ok("GET", "/v1/admin/users/%d" % admin)["role_id"], admin_role)


    def test_expired_admins_do_not_count(self):
        admin_role = self.admin_role()
        admin = int(self.pg.psql("SELECT id FROM \"user\" WHERE role_id = %d" % admin_role)[0][0])
        path = "/v1/admin/users/%d" % admin
        plain = self.role()
        msg_user = "The last user with the admin permission cannot lose it or be removed."
        msg_role = "The admin permission cannot be removed from the last role whose users have it."
        msg_expiry = "The last user with the admin permission cannot be given an expiry date."
        now = int(time.time())
        # The last admin cannot be given an expiry date, past or future.
        for expires in (now - DAY, now + DAY, 1):
            self.fails("PATCH", path, {"expires": expires}, 409, msg_expiry)
        self.ok("PATCH", path, {"expires": None})
        # Admins that expired are no admins: with only such others, the
        # last one still keeps admin.
        other_role = self.role(permissions=["admin"])
        same = self.user(admin_role, expires=now - 60)
        other = self.user(other_role["id"], expires=now - 60)
        self.fails("PATCH", path, {"role_id": plain["id"]}, 409, msg_user)
        self.fails("PATCH", path, {"expires": now + DAY}, 409, msg_expiry)
        self.fails("DELETE", path, status=409, detail=msg_user)
        self.fails("PATCH", "/v1/admin/roles/%d" % admin_role, {"permissions": []}, 409, msg_role)
        # The expired ones themselves may change and go.
        self.ok("PATCH", "/v1/admin/users/%d" % same["id"], {"role_id": plain["id"]})
        self.ok("PATCH", "/v1/admin/roles/%d" % other_role["id"], {"permissions": []})
        self.ok("DELETE", "/v1/admin/users/%d" % same["id"], status=204)
        # One that has not expired yet counts: the first may then expire.
        self.ok("PATCH", "/v1/admin/roles/%d" % other_role["id"], {"permissions": ["admin"]})
        self.ok("PATCH", "/v1/admin/users/%d" % other["id"], {"expires": None})
        self.ok("PATCH", path, {"expires": now + DAY})
        self.ok("PATCH", path, {"expires": None})
        self.ok("DELETE", "/v1/admin/users/%d" % other["id"], status=204)
        self.assertIsNone(self.ok("GET", path)["expires"])


class LastAdminRace(Base):
    """Two statements that each take admin away from one of the last two
    admins, sent at the same moment: one must be refused, whatever the
    kinds (role PATCH, user PATCH to a plain role, user DELETE, expiry)."""

    def last_two_admins(self):
        """Two fresh admin roles with one user each; every other user is
        moved to a plain role, so these two are the only admins."""
        if not hasattr(type(self), "plain"):
            type(self).plain = self.role()
        plain = self.plain
        roles = [self.role(permissions=["admin"], limits=[]) for _ in range(2)]
        users = [self.user(r["id"]) for r in roles]
        self.pg.psql("UPDATE \"user\" SET role_id = %d WHERE id NOT IN (%d, %d)"
                     % (plain["id"], users[0]["id"], users[1]["id"]))
        return plain["id"], roles, users

    def admins_left(self):
        return int(self.pg.psql(
            "SELECT count(*) FROM \"user\" u JOIN permission p ON p.role_id = u.role_id "
            "WHERE p.permission = 'admin' AND (u.expires IS NULL OR u.expires > now())")[0][0])

    def removal(self, kind, plain, role, user):
        if kind == "role":
            return "PATCH", "/v1/admin/roles/%d" % role["id"], {"permissions": ["read_metric"]}
        if kind == "user":
            return "PATCH", "/v1/admin/users/%d" % user["id"], {"role_id": plain}
        if kind == "expire":
            return "PATCH", "/v1/admin/users/%d" % user["id"], {"expires": int(time.time()) - 5}
        return "DELETE", "/v1/admin/users/%d" % user["id"], None

    def race(self, kinds):
        plain, roles, users = self.last_two_admins()
        reqs = [self.removal(k, plain, roles[i], users[i]) for i, k in enumerate(kinds)]
        barrier = threading.Barrier(2)
        replies = [None, None]

        def one(i):
            barrier.wait()
            method, path, body = reqs[i]
            replies[i] = self.g.request(method, path, body,
                                        headers={"Authorization": "Bearer " + MASTER})
        threads = [threading.Thread(target=one, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        statuses = sorted(r.status for r in replies)
        self.assertEqual(self.admins_left(), 1, "%s: %r" % (kinds, replies))
        self.assertIn(statuses, ([200, 409], [204, 409]), "%s: %r" % (kinds, replies))

    def test_two_role_patches(self):
        for _ in range(10):
            self.race(("role", "role"))

    def test_mixed_removals(self):
        for kinds in (("user", "user"), ("role", "user"), ("delete", "role"),
                      ("expire", "role"), ("expire", "delete"), ("user", "expire")):
            self.race(kinds)


class Keys(Base):
    def setUp(self):
        self.u = self.user()
        self.k = self.key(self.u["id"], "first")
        self.uk = self.k["value"]

    def test_create_show_once_and_mask(self):
        now = int(time.time())
        k = self.ok("POST", "/v1/keys", {"name": "mine"}, 201, key=self.uk)
        self.assertEqual((k["object"], k["name"], k["user"], k["status"]),
                         ("key", "mine", self.u["id"], "active"))
        self.assertTrue(k["value"].startswith("sk-") and len(k["value"]) > 40, k["value"])
        # Without an expiry, the longest one.
        self.assertAlmostEqual(k["expires"], now + MAX_DAYS * DAY, delta=30)
        self.assertEqual(self.ok("GET", "/v1/me", key=k["value"])["id"], self.u["id"])
        got = self.ok("GET", "/v1/keys/%d" % k["id"], key=self.uk)
        self.assertEqual(got["value"], k["value"][:8] + "..." + k["value"][-8:])
        listed = self.ok("GET", "/v1/keys?limit=100", key=self.uk)
        self.assertEqual(listed["total"], 2)
        for item in listed["data"]:
            self.assertIn("...", item["value"])
            self.assertNotEqual(item["value"], k["value"])
        self.assertNotIn(k["value"], json.dumps(listed))
        # Deprecated spellings.
        old = self.ok("POST", "/v1/me/keys", {"name": "old"}, 201, key=self.uk)
        self.assertEqual(self.ok("GET", "/v1/me/keys", key=self.uk)["total"], 3)
        self.assertEqual(self.ok("GET", "/v1/me/keys/%d" % old["id"], key=self.uk)["name"], "old")
        self.assertEqual(self.ok("PATCH", "/v1/me/keys/%d" % old["id"], {"name": "older"},
                                 key=self.uk)["name"], "older")
        self.assertEqual(self.ok("DELETE", "/v1/me/keys/%d" % old["id"], key=self.uk)["status"],
                         "revoked")

    def test_expiry(self):
        now = int(time.time())
        k = self.ok("POST", "/v1/keys", {"name": "soon", "expires": now + 3600}, 201, key=self.uk)
        self.assertEqual(k["expires"], now + 3600)
        self.ok("POST", "/v1/keys", {"name": "max", "expires": now + MAX_DAYS * DAY}, 201,
                key=self.uk)
        msg = "Key expiration timestamp cannot be greater than %d days from now." % MAX_DAYS
        self.fails("POST", "/v1/keys", {"name": "far", "expires": now + (MAX_DAYS + 1) * DAY},
                   400, msg, key=self.uk)
        self.fails("POST", "/v1/admin/keys", {"name": "far", "user": self.u["id"],
                                              "expires": now + 10 ** 9}, 400, msg)
        for bad in (now - 10, 0, -5, "tomorrow", 1.5, 1e300):
            self.fails("POST", "/v1/keys", {"name": "past", "expires": bad}, 422, key=self.uk)

    def test_names(self):
        self.fails("POST", "/v1/keys", {"name": RESERVED}, 400,
                   "The key name %s is reserved." % RESERVED, key=self.uk)
        self.fails("POST", "/v1/admin/keys", {"name": RESERVED, "user": self.u["id"]}, 400)
        self.fails("PATCH", "/v1/keys/%d" % self.k["id"], {"name": RESERVED}, 400, key=self.uk)
        for bad in ({}, {"name": ""}, {"name": "   "}, {"name": 7}, {"name": "x" * 129}):
            self.fails("POST", "/v1/keys", bad, 422, key=self.uk)
            self.fails("PATCH", "/v1/keys/%d" % self.k["id"], bad, 422, key=self.uk)
        # Two keys may share a name.
        self.ok("POST", "/v1/keys", {"name": "first"}, 201, key=self.uk)
        r = self.ok("PATCH", "/v1/keys/%d" % self.k["id"], {"name": "renamed"}, key=self.uk)
        self.assertEqual((r["name"], r["id"], r["status"]), ("renamed", self.k["id"], "active"))
        self.assertIn("...", r["value"])

    def test_revoke_is_immediate_and_listed_by_status(self):
        other = self.ok("POST", "/v1/keys", {"name": "second"}, 201, key=self.uk)
        expired = self.ok("POST", "/v1/keys", {"name": "third"}, 201, key=self.uk)
        self.pg.psql("UPDATE token SET expires = now() - interval '1 hour' WHERE id = %d"
                     % expired["id"])
        # The key is known to the cache now.
        self.assertEqual(self.ok("GET", "/v1/me", key=other["value"])["id"], self.u["id"])
        r = self.ok("DELETE", "/v1/keys/%d" % other["id"], key=self.uk)
        self.assertEqual((r["object"], r["id"], r["status"]), ("key", other["id"], "revoked"))
        self.assertIsInstance(r["revoked_at"], int)
        self.fails("GET", "/v1/me", status=401, detail="Invalid API key.", key=other["value"])
        # A second revocation changes nothing.
        again = self.ok("DELETE", "/v1/keys/%d" % other["id"], key=self.uk)
        self.assertEqual(again["revoked_at"], r["revoked_at"])
        row = self.pg.psql("SELECT revoked, revoked_at IS NOT NULL FROM token WHERE id = %d"
                           % other["id"])
        self.assertEqual(row, [["t", "t"]])
        by = {}
        for status in ("active", "expired", "revoked"):
            data = self.ok("GET", "/v1/keys?status=" + status, key=self.uk)["data"]
            by[status] = [k["id"] for k in data]
            self.assertTrue(all(k["status"] == status for k in data), data)
        self.assertEqual(by, {"active": [self.k["id"]], "expired": [expired["id"]],
                              "revoked": [other["id"]]})
        self.assertEqual(self.ok("GET", "/v1/keys", key=self.uk)["total"], 3)
        self.fails("GET", "/v1/keys?status=deleted", key=self.uk)
        self.fails("GET", "/v1/keys?status=active%27", key=self.uk)

    def test_not_found(self):
        for method in ("GET", "PATCH", "DELETE"):
            self.fails(method, "/v1/keys/999999", {"name": "x"}, 404, "Key 999999 not found.",
                       key=self.uk)
        self.fails("GET", "/v1/keys/abc", status=422, key=self.uk)
        self.fails("GET", "/v1/keys/1e3", status=422, key=self.uk)

    def test_admin_keys(self):
        k = self.key(self.u["id"], "by-admin", expires=int(time.time()) + 600)
        self.assertEqual(k["user"], self.u["id"])
        self.assertEqual(self.ok("GET", "/v1/me", key=k["value"])["id"], self.u["id"])
        self.fails("POST", "/v1/admin/keys", {"name": "x", "user": 999999}, 404,
                   "User 999999 not found.")
        self.fails("POST", "/v1/admin/keys", {"name": "x"}, 422)
        self.fails("POST", "/v1/admin/keys", {"name": "x", "user": "me"}, 422)
        listed = self.ok("GET", "/v1/admin/keys?user=%d&limit=100" % self.u["id"])
        self.assertEqual(sorted(x["id"] for x in listed["data"]), sorted([self.k["id"], k["id"]]))
        self.assertGreaterEqual(self.ok("GET", "/v1/admin/keys")["total"], 2)
        self.fails("GET", "/v1/admin/keys?user=x")
        self.assertEqual(self.ok("GET", "/v1/admin/keys/%d" % k["id"])["name"], "by-admin")
        self.assertEqual(self.ok("DELETE", "/v1/admin/keys/%d" % k["id"])["status"], "revoked")
        self.fails("GET", "/v1/me", status=401, key=k["value"])
        self.fails("GET", "/v1/admin/keys/999999", status=404, detail="Key 999999 not found.")
        # A deleted user's keys stop working at once.
        self.ok("DELETE", "/v1/admin/users/%d" % self.u["id"], status=204)
        self.fails("GET", "/v1/me", status=401, key=self.uk)


class Paging(Base):
    LISTS = ["/v1/admin/users", "/v1/admin/roles", "/v1/admin/organizations", "/v1/admin/keys",
             "/v1/keys"]
    BAD = ["limit=-1", "limit=0", "limit=101", "limit=1e9", "limit=abc", "limit=", "offset=-5",
           "offset=9223372036854775808", "offset=abc", "sort_by=unknown", "sort_by=ID",
           "sort_by=" + urllib.parse.quote("name desc; select 1"),
           "sort_by=" + urllib.parse.quote("name; DROP TABLE role"), "sort_order=up",
           "sort_order=" + urllib.parse.quote("asc; select 1")]

    def test_bad_values_are_422(self):
        for path in self.LISTS:
            for q in self.BAD:
                self.fails("GET", path + "?" + q, status=422)

    def test_pages_and_sorting(self):
        tag = self.unique("pg")
        names = ["%s-%s" % (tag, c) for c in "dbeac"]
        made = [self.ok("POST", "/v1/admin/organizations", {"name": n}, 201) for n in names]
        total = self.ok("GET", "/v1/admin/organizations")["total"]
        self.assertGreaterEqual(total, 6)
        seen = []
        for offset in range(0, total, 2):
            page = self.ok("GET", "/v1/admin/organizations?limit=2&offset=%d" % offset)
            self.assertEqual((page["object"], page["total"], page["offset"], page["limit"]),
                             ("list", total, offset, 2))
            self.assertLessEqual(len(page["data"]), 2)
            seen += [o["id"] for o in page["data"]]
        self.assertEqual(seen, sorted(seen))
        self.assertEqual(len(seen), len(set(seen)))
        self.assertEqual(len(seen), total)
        past = self.ok("GET", "/v1/admin/organizations?offset=%d" % (total + 10))
        self.assertEqual((past["data"], past["total"]), ([], total))
        data = self.ok("GET", "/v1/admin/organizations?sort_by=name&sort_order=desc&limit=100")
        got = [o["name"] for o in data["data"] if o["name"].startswith(tag)]
        self.assertEqual(got, sorted(names, reverse=True))
        data = self.ok("GET", "/v1/admin/organizations?sort_by=created&limit=100")["data"]
        ids = [o["id"] for o in data if o["id"] in {m["id"] for m in made}]
        self.assertEqual(ids, [m["id"] for m in made])
        self.assertEqual(self.ok("GET", "/v1/admin/organizations?limit=100")["limit"], 100)


class Metacharacters(Base):
    """Every text field takes the corpus and gives it back unchanged."""

    def test_corpus_in_every_text_field(self):
        role_id = self.role()["id"]
        user = self.user(role_id, password="pass-word")
        uk = self.key(user["id"])["value"]
        for i, s in enumerate(SQL_CORPUS):
            with self.subTest(value=s):
                tagged = "%s%d" % (s, i)
                o = self.ok("POST", "/v1/admin/organizations", {"name": tagged}, 201)
                self.assertEqual(o["name"], tagged)
                self.assertEqual(self.ok("PATCH", "/v1/admin/organizations/%d" % o["id"],
                                         {"name": tagged + s})["name"], tagged + s)
                r = self.ok("POST", "/v1/admin/roles", {"name": tagged}, 201)
                self.assertEqual(self.ok("GET", "/v1/admin/roles/%d" % r["id"])["name"], tagged)
                self.ok("PATCH", "/v1/admin/roles/%d" % r["id"], {"name": tagged + s})
                u = self.ok("POST", "/v1/admin/users",
                            {"email": tagged + "@x", "name": s, "role_id": role_id,
                             "password": ("pw" + s * 6)[:72]},
                            201)
                self.assertEqual((u["email"], u["name"]), (tagged + "@x", s))
                self.ok("PATCH", "/v1/admin/users/%d" % u["id"], {"name": s + s})
                q = urllib.parse.quote(tagged + "@x")
                found = self.ok("GET", "/v1/admin/users?email=" + q)["data"]
                self.assertEqual([x["id"] for x in found], [u["id"]])
                k = self.ok("POST", "/v1/keys", {"name": s}, 201, key=uk)
                self.assertEqual(k["name"], s)
                self.assertEqual(self.ok("PATCH", "/v1/keys/%d" % k["id"], {"name": s + "2"},
                                         key=uk)["name"], s + "2")
                self.ok("PATCH", "/v1/me", {"name": s, "email": tagged + "@me"}, 204, key=uk)
                me = self.ok("GET", "/v1/me", key=uk)
                self.assertEqual((me["name"], me["email"]), (s, tagged + "@me"))
                self.fails("PATCH", "/v1/me", {"password": "new-password",
                                               "current_password": s}, 401, key=uk)
                # In query values and path segments.
                for q in ("status", "sort_by", "sort_order", "limit", "offset"):
                    self.fails("GET", "/v1/keys?%s=%s" % (q, urllib.parse.quote(s)), key=uk)
                self.fails("GET", "/v1/admin/users?role=" + urllib.parse.quote(s))
                r = self.call("GET", "/v1/keys/" + urllib.parse.quote(s, safe=""), key=uk)
                self.assertIn(r.status, (404, 422))
                # As the bearer token.
                r = self.call("GET", "/v1/me", key=s)
                self.assertIn(r.status, (400, 401))
        # %, _ and \ matched literally in the email filter.
        self.assertEqual(self.ok("GET", "/v1/admin/users?email=%25")["total"],
                         sum(1 for s in SQL_CORPUS if "%" in s))
        tables = {r[0] for r in self.pg.psql("SELECT tablename FROM pg_tables")}
        self.assertTrue({"user", "role", "token", "organization"} <= tables)


class Walk(Base):
    """The newcomer's walk of docs/auth-api.md, step by step."""

    def test_newcomer_walk(self):
        r = self.g.request("POST", "/v1/auth/login", {"email": "admin", "password": "changeme"})
        self.assertEqual(r.status, 200, r)
        admin_key = r.json()["key"]
        self.assertEqual(self.ok("GET", "/v1/me", key=admin_key)["email"], "admin")
        org = self.ok("POST", "/v1/admin/organizations", {"name": "research"}, 201,
                      key=admin_key)["id"]
        routers = self.ok("GET", "/v1/admin/routers?limit=100", key=admin_key)["data"]
        model = [m["id"] for m in routers if m["name"] == "m1"][0]
        role = self.ok("POST", "/v1/admin/roles",
                       {"name": "researchers",
                        "limits": [{"model_id": model, "type": "rpm", "value": 3},
                                   {"model_id": model, "type": "tpm", "value": None}]},
                       201, key=admin_key)["id"]
        user = self.ok("POST", "/v1/admin/users",
                       {"email": "ann@example.org", "password": "ann-password",
                        "role_id": role, "organization_id": org}, 201, key=admin_key)["id"]
        key = self.ok("POST", "/v1/admin/keys", {"name": "ann", "user": user}, 201,
                      key=admin_key)["value"]
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            seen = [m["id"] for m in self.ok("GET", "/v1/models", key=key)["data"]]
            if seen == ["m1"]:
                break
            time.sleep(0.1)
        self.assertEqual(seen, ["m1"])
        # Three calls fit in one minute window; keep them in the same one.
        if time.time() % 60 > 45:
            time.sleep(61 - time.time() % 60)
        body = {"model": "m1", "messages": [{"role": "user", "content": "Hello"}]}
        for _ in range(3):
            self.ok("POST", "/v1/chat/completions", body, key=key)
        self.fails("POST", "/v1/chat/completions", body, 429,
                   "Request limit per minute exceeded.", key=key)
        keys = self.ok("GET", "/v1/admin/keys?user=%d" % user, key=admin_key)["data"]
        self.ok("DELETE", "/v1/admin/keys/%d" % keys[0]["id"], key=admin_key)
        self.fails("GET", "/v1/me", status=401, key=key)


class DatabaseDown(Base):
    """Without PostgreSQL the API answers 503, and recovers with it."""

    def test_503_then_recovery(self):
        u = self.user()
        self.pg.stop()
        try:
            for method, path, body in (("GET", "/v1/admin/users", None),
                                       ("POST", "/v1/admin/organizations", {"name": "down"}),
                                       ("GET", "/v1/admin/roles/1", None),
                                       ("PATCH", "/v1/admin/users/%d" % u["id"], {"name": "x"}),
                                       ("DELETE", "/v1/admin/organizations/1", None),
                                       ("POST", "/v1/admin/keys", {"name": "k", "user": u["id"]}),
                                       ("GET", "/v1/admin/keys", None)):
                r = self.g.request(method, path, body,
                                   headers={"Authorization": "Bearer " + MASTER})
                self.assertEqual(r.status, 503, "%s %s: %r" % (method, path, r))
                self.assertEqual(r.json()["detail"],
                                 "The database is not available, please try again later.")
        finally:
            self.pg.pg_ctl_start()
        deadline = time.monotonic() + 30
        while self.g.request("GET", "/v1/admin/users",
                             headers={"Authorization": "Bearer " + MASTER}).status != 200:
            self.assertLess(time.monotonic(), deadline, "no recovery")
            time.sleep(0.2)
        self.assertEqual(self.ok("GET", "/v1/admin/users/%d" % u["id"])["id"], u["id"])


if __name__ == "__main__":
    lgtest.main()
