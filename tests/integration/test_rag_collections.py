#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""RAG collections through the real server and PostgreSQL (spec §10.1):
create, list (filters, sorting, paging), get, patch and delete; who sees
what ({owner, other user, admin, master key, no key} x private and public);
public collections need create_public_collection; deleting a collection
removes its documents and chunks."""
import unittest
import uuid

import common
import lgtest
from pgcluster import PgCluster

MASTER = "master-key-for-rag-collections-tests-7a2c"


def config():
    return {"plugins": {"auth": {"master_key": MASTER}, "mock": {},
                        "rag": {"embeddings_model": "mock-embeddings"}},
            "models": [{"name": "mock-embeddings", "type": "text-embeddings-inference",
                        "providers": [{"type": "mock", "model_name": "mock-embeddings"}]}]}


def multipart(fields, files):
    """A multipart/form-data body: fields {name: value}, files [(field, filename, type, bytes)]."""
    boundary = "----llmgate" + uuid.uuid4().hex
    out = b""
    for name, value in fields.items():
        out += ("--%s\r\nContent-Disposition: form-data; name=\"%s\"\r\n\r\n"
                % (boundary, name)).encode() + str(value).encode() + b"\r\n"
    for field, filename, ctype, data in files:
        out += ("--%s\r\nContent-Disposition: form-data; name=\"%s\"; filename=\"%s\"\r\n"
                "Content-Type: %s\r\n\r\n" % (boundary, field, filename, ctype)).encode()
        out += data + b"\r\n"
    out += ("--%s--\r\n" % boundary).encode()
    return out, "multipart/form-data; boundary=" + boundary


class Collections(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.pg = PgCluster().start()
        cls.g = lgtest.Gateway(config(), pg=cls.pg).start()
        # Uploads embed on behalf of their caller, who must reach the model.
        model = int(cls.pg.psql("SELECT id FROM model WHERE name = 'mock-embeddings'")[0][0])
        limits = [{"model_id": model, "type": "rpm", "value": None}]
        plain = cls.admin("POST", "/v1/admin/roles",
                          {"name": "plain", "permissions": [], "limits": limits})["id"]
        publisher = cls.admin("POST", "/v1/admin/roles",
                              {"name": "publisher", "permissions": ["create_public_collection"],
                               "limits": limits})["id"]
        admins = cls.admin("POST", "/v1/admin/roles",
                           {"name": "admins", "permissions": ["admin"], "limits": limits})["id"]
        cls.users, cls.keys = {}, {}
        for who, role in (("owner", publisher), ("other", plain), ("admin", admins),
                          ("plain", plain)):
            u = cls.admin("POST", "/v1/admin/users",
                          {"email": who + "@example.org", "role_id": role})
            cls.users[who] = u["id"]
            cls.keys[who] = cls.admin("POST", "/v1/admin/keys",
                                      {"name": who, "user": u["id"]})["value"]
        cls.keys["master"] = MASTER

    @classmethod
    def tearDownClass(cls):
        cls.g.close()
        cls.pg.destroy()

    @classmethod
    def admin(cls, method, path, body=None):
        return lgtest.admin(cls.g, MASTER, method, path, body)

    def call(self, who, method, path, body=None, headers=None):
        h = dict(headers or {})
        if who:
            h["Authorization"] = "Bearer " + self.keys[who]
        r = self.g.request(method, path, body, headers=h)
        self.assertLess(r.status, 500, "%s %s %s: %r" % (who, method, path, r))
        return r

    def expect(self, who, method, path, status, body=None, detail=None):
        r = self.call(who, method, path, body)
        self.assertEqual(r.status, status, "%s %s %s: %r" % (who, method, path, r))
        if detail is not None:
            self.assertEqual(r.json()["detail"], detail)
        return r

    def create(self, who, name, **extra):
        body = dict(name=name, **extra)
        return self.expect(who, "POST", "/v1/collections", 201, body).json()

    def listed(self, who, query=""):
        r = self.expect(who, "GET", "/v1/collections?limit=100" + query, 200).json()
        self.assertEqual(r["object"], "list")
        return r

    def test_create_get_patch(self):
        c = self.create("owner", "notes", description="my notes")
        self.assertIsInstance(c["id"], int)
        self.assertEqual((c["object"], c["name"], c["description"], c["visibility"],
                          c["owner"], c["documents"]),
                         ("collection", "notes", "my notes", "private", "owner@example.org", 0))
        self.assertIsInstance(c["created"], int)
        path = "/v1/collections/%d" % c["id"]
        got = self.expect("owner", "GET", path, 200).json()
        self.assertEqual(got, c)
        self.expect("owner", "PATCH", path, 204, {"name": "renamed", "description": None})
        got = self.expect("owner", "GET", path, 200).json()
        self.assertEqual((got["name"], got["description"], got["visibility"]),
                         ("renamed", None, "private"))
        # Validation.
        self.expect("owner", "POST", "/v1/collections", 422, {"description": "no name"})
        self.expect("owner", "POST", "/v1/collections", 422, {"name": ""})
        self.expect("owner", "POST", "/v1/collections", 422, {"name": "x", "visibility": "all"})
        self.expect("owner", "PATCH", path, 422, {"visibility": "world"})
        self.expect("owner", "GET", "/v1/collections/abc", 422)
        # Text that looks like SQL is only text.
        odd = "x'; DROP TABLE collection; --"
        got = self.create("owner", odd)
        self.assertEqual(got["name"], odd)
        self.expect(None, "GET", path, 401)
        self.expect(None, "POST", "/v1/collections", 401, {"name": "anon"})

    def test_private_collections_are_invisible_to_everybody_else(self):
        c = self.create("owner", "private-one")
        path = "/v1/collections/%d" % c["id"]
        missing = "Collection %d not found." % c["id"]
        for who in ("other", "admin", "master"):
            self.expect(who, "GET", path, 404, detail=missing)
            self.expect(who, "PATCH", path, 404, {"name": "stolen"}, detail=missing)
            self.expect(who, "DELETE", path, 404, detail=missing)
            ids = [x["id"] for x in self.listed(who)["data"]]
            self.assertNotIn(c["id"], ids, who)
        self.assertEqual(self.expect("owner", "GET", path, 200).json()["name"], "private-one")

    def test_public_collections(self):
        # Without the permission: 403, at creation and by PATCH.
        self.expect("plain", "POST", "/v1/collections", 403, {"name": "p", "visibility": "public"})
        mine = self.create("plain", "mine")
        self.expect("plain", "PATCH", "/v1/collections/%d" % mine["id"], 403,
                    {"visibility": "public"})
        c = self.create("owner", "shared", visibility="public")
        self.assertEqual(c["visibility"], "public")
        path = "/v1/collections/%d" % c["id"]
        for who in ("other", "admin", "plain", "master"):
            self.assertEqual(self.expect(who, "GET", path, 200).json()["id"], c["id"])
            self.assertIn(c["id"], [x["id"] for x in self.listed(who)["data"]])
            # Writes stay the owner's.
            self.expect(who, "PATCH", path, 404, {"name": "stolen"})
            self.expect(who, "DELETE", path, 404)
        self.assertEqual(self.expect("owner", "GET", path, 200).json()["name"], "shared")
        # Made private again, it disappears for the others.
        self.expect("owner", "PATCH", path, 204, {"visibility": "private"})
        self.expect("other", "GET", path, 404)
        # The master key has every permission.
        m = self.create("master", "master-public", visibility="public")
        self.assertEqual(m["owner"], "master")
        self.expect("other", "GET", "/v1/collections/%d" % m["id"], 200)

    def test_list_filters_sorting_and_paging(self):
        made = [self.create("other", n)["id"] for n in ("b-list", "a-list", "c-list")]
        pub = self.create("owner", "a-list", visibility="public")["id"]
        got = self.listed("other", "&name=a-list")
        self.assertEqual(sorted(x["id"] for x in got["data"]), sorted([made[1], pub]))
        self.assertEqual(got["total"], 2)
        got = self.listed("other", "&name=a-list&visibility=private")
        self.assertEqual([x["id"] for x in got["data"]], [made[1]])
        got = self.listed("other", "&visibility=public")
        self.assertTrue(all(x["visibility"] == "public" for x in got["data"]))
        names = [x["name"] for x in self.listed("other", "&sort_by=name&sort_order=desc")["data"]]
        self.assertEqual(names, sorted(names, reverse=True))
        page = self.expect("other", "GET", "/v1/collections?limit=1&offset=1", 200).json()
        self.assertEqual((page["limit"], page["offset"], len(page["data"])), (1, 1, 1))
        self.assertGreaterEqual(page["total"], 4)
        for bad in ("limit=0", "limit=abc", "offset=-5", "sort_by=owner",
                    "sort_by=name%20desc;%20select%201", "visibility=all"):
            self.expect("other", "GET", "/v1/collections?" + bad, 422)

    def test_delete_removes_documents_and_chunks(self):
        c = self.create("owner", "doomed")
        body, ctype = multipart({"collection_id": c["id"], "chunk_size": 30},
                                [("file", "a.txt", "text/plain",
                                  b"first paragraph here\n\nsecond paragraph here")])
        r = self.call("owner", "POST", "/v1/documents", body, {"Content-Type": ctype})
        self.assertEqual(r.status, 201, r)
        self.assertEqual(self.pg.psql("SELECT count(*) FROM chunk WHERE collection_id = %d"
                                      % c["id"]), [["2"]])
        self.assertEqual(self.expect("owner", "GET", "/v1/collections/%d" % c["id"], 200)
                         .json()["documents"], 1)
        self.expect("owner", "DELETE", "/v1/collections/%d" % c["id"], 204)
        self.expect("owner", "GET", "/v1/collections/%d" % c["id"], 404)
        self.expect("owner", "GET", "/v1/documents/%d" % r.json()["id"], 404)
        for table in ("document", "chunk"):
            self.assertEqual(self.pg.psql("SELECT count(*) FROM %s WHERE collection_id = %d"
                                          % (table, c["id"])), [["0"]])
        self.expect("owner", "DELETE", "/v1/collections/%d" % c["id"], 404)


if __name__ == "__main__":
    unittest.main()
