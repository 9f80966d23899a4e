#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""RAG documents through the real server and PostgreSQL (spec §3.5, §10.2):
uploads of text, Markdown, HTML, PDF (written here byte by byte) and JSON
lists, cut into chunks of the requested sizes and embedded by the mock
provider; lists, gets and deletes; chunks added, listed, read and deleted
(and the deprecated /v1/chunks routes); /v1/parse-beta; bad files (a
truncated PDF, a wrong type, an empty file, a file too large, invalid
UTF-8) refused with a 4xx that leaves no row behind; an embedding that
fails stores nothing; who may read and write; two instances on one
database see each other's documents; document names are labels only."""
import json
import unittest
import uuid

import common
import lgtest
from pgcluster import PgCluster

MASTER = "master-key-for-rag-documents-tests-93be"
MAX_FILE = 100 * 1024


def config():
    return {"plugins": {"auth": {"master_key": MASTER}, "mock": {},
                        "rag": {"embeddings_model": "mock-embeddings", "max_file_size": "100k"}},
            "models": [{"name": "mock-embeddings", "type": "text-embeddings-inference",
                        "providers": [{"type": "mock", "model_name": "mock-embeddings"}]}]}


def multipart(fields, files=()):
    """A multipart/form-data body: fields {name: value or [values]},
    files [(field, filename, content type, bytes)]."""
    boundary = "----llmgate" + uuid.uuid4().hex
    out = b""
    for name, value in fields.items():
        for v in value if isinstance(value, list) else [value]:
            v = v if isinstance(v, bytes) else str(v).encode()
            out += ("--%s\r\nContent-Disposition: form-data; name=\"%s\"\r\n\r\n"
                    % (boundary, name)).encode() + v + b"\r\n"
    for field, filename, ctype, data in files:
        out += ("--%s\r\nContent-Disposition: form-data; name=\"%s\"; filename=\"%s\"\r\n"
                "Content-Type: %s\r\n\r\n" % (boundary, field, filename, ctype)).encode()
        out += data + b"\r\n"
    out += ("--%s--\r\n" % boundary).encode()
    return out, "multipart/form-data; boundary=" + boundary


def make_pdf(pages):
    """A PDF with one page of Helvetica text per item of @pages, with a
    correct cross-reference table."""
    objs = ["<< /Type /Catalog /Pages 2 0 R >>", None,
            "<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>"]
    kids = []
    for text in pages:
        stream = "BT /F1 18 Tf 72 720 Td (%s) Tj ET" % text
        objs.append("<< /Length %d >> stream\n%s\nendstream" % (len(stream), stream))
        content = len(objs)
        objs.append("<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents %d 0 R "
                    "/Resources << /Font << /F1 3 0 R >> >> >>" % content)
        kids.append("%d 0 R" % len(objs))
    objs[1] = "<< /Type /Pages /Kids [%s] /Count %d >>" % (" ".join(kids), len(kids))
    out = b"%PDF-1.4\n"
    offsets = []
    for i, body in enumerate(objs):
        offsets.append(len(out))
        out += ("%d 0 obj %s endobj\n" % (i + 1, body)).encode()
    xref = len(out)
    out += ("xref\n0 %d\n0000000000 65535 f \n" % (len(objs) + 1)).encode()
    for off in offsets:
        out += ("%010d 00000 n \n" % off).encode()
    out += ("trailer << /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n"
            % (len(objs) + 1, xref)).encode()
    return out


WORDS = ("alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike "
         "november oscar papa quebec romeo sierra tango uniform victor whiskey xray").split()


def prose(n, sep=" "):
    return sep.join(WORDS[i % len(WORDS)] + str(i) for i in range(n))


class Documents(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.pg = PgCluster().start()
        cls.g = lgtest.Gateway(config(), pg=cls.pg).start()
        model = int(cls.pg.psql("SELECT id FROM model WHERE name = 'mock-embeddings'")[0][0])
        limits = [{"model_id": model, "type": "rpm", "value": None}]
        roles = {
            "plain": cls.admin("POST", "/v1/admin/roles",
                               {"name": "plain", "permissions": [], "limits": limits})["id"],
            "publisher": cls.admin("POST", "/v1/admin/roles",
                                   {"name": "publisher", "limits": limits,
                                    "permissions": ["create_public_collection"]})["id"],
            "admins": cls.admin("POST", "/v1/admin/roles",
                                {"name": "admins", "permissions": ["admin"],
                                 "limits": limits})["id"],
            # No access to the embeddings model: uploads cannot be embedded.
            "blind": cls.admin("POST", "/v1/admin/roles",
                               {"name": "blind", "permissions": [], "limits": []})["id"],
        }
        cls.keys = {}
        for who, role in (("owner", "publisher"), ("other", "plain"), ("admin", "admins"),
                          ("blind", "blind")):
            u = cls.admin("POST", "/v1/admin/users",
                          {"email": who + "@example.org", "role_id": roles[role]})
            cls.keys[who] = cls.admin("POST", "/v1/admin/keys",
                                      {"name": who, "user": u["id"]})["value"]
        cls.private = cls.collection("owner", "private docs")
        cls.public = cls.collection("owner", "public docs", visibility="public")

    @classmethod
    def tearDownClass(cls):
        cls.g.close()
        cls.pg.destroy()

    @classmethod
    def admin(cls, method, path, body=None):
        return lgtest.admin(cls.g, MASTER, method, path, body)

    @classmethod
    def collection(cls, who, name, **extra):
        r = cls.g.request("POST", "/v1/collections", dict(name=name, **extra),
                          headers={"Authorization": "Bearer " + cls.keys[who]})
        assert r.status == 201, r
        return r.json()["id"]

    def call(self, who, method, path, body=None, headers=None, gateway=None):
        h = dict(headers or {})
        if who:
            h["Authorization"] = "Bearer " + self.keys[who]
        r = (gateway or self.g).request(method, path, body, headers=h, timeout=30)
        self.assertLess(r.status, 500, "%s %s %s: %r" % (who, method, path, r))
        return r

    def expect(self, who, method, path, status, body=None, gateway=None):
        r = self.call(who, method, path, body, gateway=gateway)
        self.assertEqual(r.status, status, "%s %s %s: %r" % (who, method, path, r))
        return r

    def upload(self, who, collection, filename, ctype, data, status=201, **fields):
        fields["collection_id"] = collection
        body, content_type = multipart(fields, [("file", filename, ctype, data)])
        r = self.call(who, "POST", "/v1/documents", body, {"Content-Type": content_type})
        self.assertEqual(r.status, status, "%s: %r" % (filename, r))
        return r.json()

    def chunks(self, who, doc):
        r = self.expect(who, "GET", "/v1/documents/%d/chunks?limit=100" % doc, 200).json()
        self.assertEqual(r["object"], "list")
        return r["data"]

    def rows(self, sql):
        return int(self.pg.psql(sql)[0][0])

    # ---- uploads by format ----

    def test_text_markdown_html_pdf(self):
        c = self.collection("owner", "formats")
        text = self.upload("owner", c, "notes.txt", "text/plain",
                           ("First paragraph of plain text.\n\nSecond paragraph, café.").encode(),
                           chunk_size=40)
        md = self.upload("owner", c, "guide.md", "text/markdown",
                         b"# Guide\nIntro line.\n## Install\nRun the installer.\n"
                         b"## Use\nCall the API.", chunk_size=30)
        html = self.upload("owner", c, "page.html", "text/html",
                           b"<html><head><title>x</title><script>var leak = 1;</script></head>"
                           b"<body><h1>Title</h1><p>Body text of the page.</p>"
                           b"<style>p{}</style></body></html>")
        pdf = self.upload("owner", c, "paper.pdf", "application/pdf",
                          make_pdf(["Portable document text", "Second page words"]))
        got = {}
        for name, d in (("text", text), ("md", md), ("html", html), ("pdf", pdf)):
            doc = self.expect("owner", "GET", "/v1/documents/%d" % d["id"], 200).json()
            self.assertEqual((doc["object"], doc["collection_id"]), ("document", c))
            got[name] = [k["content"] for k in self.chunks("owner", d["id"])]
            self.assertEqual(doc["chunks"], len(got[name]))
        self.assertEqual(got["text"], ["First paragraph of plain text.",
                                       "Second paragraph, café."])
        self.assertEqual(got["md"], ["# Guide\nIntro line.", "## Install\nRun the installer.",
                                     "## Use\nCall the API."])
        self.assertEqual(got["html"], ["Title\n\nBody text of the page."])
        self.assertEqual(len(got["pdf"]), 1)
        self.assertIn("Portable document text", got["pdf"][0])
        self.assertIn("Second page words", got["pdf"][0])
        # Every chunk was embedded and indexed for full-text search.
        self.assertEqual(self.rows("SELECT count(*) FROM chunk WHERE collection_id = %d "
                                   "AND (embedding IS NULL OR cardinality(embedding) = 0)" % c), 0)
        self.assertEqual(self.rows("SELECT count(*) FROM chunk WHERE collection_id = %d AND "
                                   "tsv @@ plainto_tsquery('english', 'installer')" % c), 1)
        self.assertEqual(self.rows("SELECT count(*) FROM chunk WHERE content LIKE '%leak%'"), 0)
        names = [d["name"] for d in self.expect("owner", "GET", "/v1/documents?collection_id=%d"
                                                 % c, 200).json()["data"]]
        self.assertEqual(names, ["notes.txt", "guide.md", "page.html", "paper.pdf"])

    def test_chunk_sizes_overlap_and_options(self):
        c = self.collection("owner", "sizes")
        text = prose(400).encode()
        d = self.upload("owner", c, "long.txt", "text/plain", text, chunk_size=100,
                        chunk_overlap=20, preset_separators="text")
        chunks = [k["content"] for k in self.chunks("owner", d["id"])]
        self.assertGreater(len(chunks), len(text) // 100)
        self.assertTrue(all(len(k) <= 100 for k in chunks))
        for a, b in zip(chunks, chunks[1:]):
            # The overlap: up to 20 characters of whole words carried over.
            self.assertIn(b.split()[0], a.split()[-3:])
            self.assertIn(a.split()[-1], b.split()[:3])
            self.assertLessEqual(len(a[a.rindex(b.split()[0]):]), 20)
        positions = [k["position"] for k in self.chunks("owner", d["id"])]
        self.assertEqual(positions, list(range(len(chunks))))
        # Characters, not bytes, and never half a character.
        multi = ("日本語のテキスト" * 40 + "é" * 100).encode()
        d = self.upload("owner", c, "multi.txt", "text/plain", multi, chunk_size=7)
        chunks = [k["content"] for k in self.chunks("owner", d["id"])]
        self.assertTrue(all(1 <= len(k) <= 7 for k in chunks))
        self.assertEqual("".join(chunks), multi.decode())
        # One chunk when chunking is off; custom separators; chunk_min_size.
        d = self.upload("owner", c, "whole.txt", "text/plain", text, disable_chunking="true")
        self.assertEqual([k["content"] for k in self.chunks("owner", d["id"])], [text.decode()])
        d = self.upload("owner", c, "semi.txt", "text/plain", b"aaa;bbb;ccc",
                        chunk_size=5, separators=[";"])
        self.assertEqual([k["content"] for k in self.chunks("owner", d["id"])],
                         ["aaa", ";bbb", ";ccc"])
        d = self.upload("owner", c, "regex.txt", "text/plain", b"1. one 2. two 3. three",
                        chunk_size=9, separators='["[0-9]\\\\. "]', is_separator_regex="true")
        self.assertEqual([k["content"] for k in self.chunks("owner", d["id"])],
                         ["1. one", "2. two", "3. three"])
        d = self.upload("owner", c, "min.txt", "text/plain",
                        b"long enough one\n\nx\n\nlong enough two", chunk_size=16,
                        chunk_min_size=5)
        self.assertEqual([k["content"] for k in self.chunks("owner", d["id"])],
                         ["long enough one", "long enough two"])
        before = self.rows("SELECT count(*) FROM document WHERE collection_id = %d" % c)
        for fields in ({"chunk_size": 10, "chunk_overlap": 10}, {"chunk_size": 0},
                       {"chunk_size": "ten"}, {"preset_separators": "klingon"},
                       {"separators": "(", "is_separator_regex": "true"},
                       {"disable_chunking": "maybe"}, {"chunk_min_size": 5000}):
            r = self.upload("owner", c, "x.txt", "text/plain", b"some text", status=422,
                            **fields)
            self.assertIn("detail", r)
        self.assertEqual(self.rows("SELECT count(*) FROM document WHERE collection_id = %d"
                                   % c), before)

    def test_metadata_and_json_lists(self):
        c = self.collection("owner", "meta")
        d = self.upload("owner", c, "m.txt", "text/plain", b"text with metadata",
                        metadata=json.dumps({"source": "test", "year": 2024, "tags": ["a", 1]}))
        meta = self.chunks("owner", d["id"])[0]["metadata"]
        self.assertEqual(meta, {"source": "test", "year": 2024, "tags": ["a", 1],
                                "document_name": "m.txt"})
        for bad in ("not json", "[1]", "{}", json.dumps({"k%d" % i: 1 for i in range(9)}),
                    json.dumps({"k": "x" * 256}), json.dumps({"k": {"nested": 1}}),
                    json.dumps({"k": 1e17}), json.dumps({"k": list(range(9))})):
            self.upload("owner", c, "m.txt", "text/plain", b"text", status=422, metadata=bad)
        entries = [{"text": "first entry text", "title": "First", "metadata": {"n": 1}},
                   {"text": "second entry text", "title": "Second"}]
        r = self.upload("owner", c, "list.json", "application/json",
                        json.dumps(entries).encode(), metadata='{"batch": "b1"}')
        self.assertEqual(len(r["ids"]), 2)
        self.assertEqual(r["id"], r["ids"][0])
        docs = [self.expect("owner", "GET", "/v1/documents/%d" % i, 200).json()
                for i in r["ids"]]
        self.assertEqual([x["name"] for x in docs], ["First", "Second"])
        metas = [self.chunks("owner", i)[0]["metadata"] for i in r["ids"]]
        self.assertEqual(metas, [{"batch": "b1", "n": 1, "document_name": "First"},
                                 {"batch": "b1", "document_name": "Second"}])

    # ---- bad files ----

    def test_bad_files_leave_nothing(self):
        c = self.collection("owner", "bad files")
        pdf = make_pdf(["will be cut"])
        cases = [
            ("cut.pdf", "application/pdf", pdf[:len(pdf) // 2], 422, "truncated"),
            ("fake.pdf", "application/pdf", b"just text, not a PDF", 422, "not a PDF"),
            ("junk.pdf", "application/pdf", b"%PDF-1.4\ngarbage only\n%%EOF\n", 422, "PDF"),
            ("prog.exe", "application/x-msdownload", b"MZ\x90\x00", 415, "Unsupported"),
            ("empty.txt", "text/plain", b"", 422, "empty"),
            ("blank.md", "text/markdown", b"  \n\n ", 422, "no text"),
            ("big.txt", "text/plain", b"a" * (MAX_FILE + 1), 413, "too large"),
            ("latin1.txt", "text/plain", "caf\u00e9".encode("latin-1"), 422, "UTF-8"),
            ("overlong.txt", "text/plain", b"a\xc0\xafb", 422, "UTF-8"),
            ("surrogate.md", "text/markdown", b"\xed\xa0\x80", 422, "UTF-8"),
            ("nul.txt", "text/plain", b"a\x00b", 422, "NUL"),
            ("broken.json", "application/json", b"[{\"text\": ", 422, "JSON"),
            ("object.json", "application/json", b"{\"text\": \"x\"}", 422, "list"),
            ("scripts.html", "text/html", b"<script>only()</script>", 422, "no text"),
        ]
        for filename, ctype, data, status, words in cases:
            r = self.upload("owner", c, filename, ctype, data, status=status)
            self.assertIn(words, r["detail"], filename)
        self.assertEqual(self.rows("SELECT count(*) FROM document WHERE collection_id = %d" % c), 0)
        self.assertEqual(self.rows("SELECT count(*) FROM chunk WHERE collection_id = %d" % c), 0)
        # A body that is no form, no collection, a collection that is not there.
        r = self.call("owner", "POST", "/v1/documents", b"plain", {"Content-Type": "text/plain"})
        self.assertEqual(r.status, 400, r)
        body, ctype = multipart({}, [("file", "a.txt", "text/plain", b"x")])
        r = self.call("owner", "POST", "/v1/documents", body, {"Content-Type": ctype})
        self.assertEqual(r.status, 422, r)
        self.upload("owner", 999999, "a.txt", "text/plain", b"text", status=404)

    def test_failed_embedding_stores_nothing(self):
        c = self.collection("blind", "no model")
        r = self.upload("blind", c, "a.txt", "text/plain", b"some text to embed", status=404)
        self.assertIn("not stored", r["detail"])
        self.assertIn("embedding", r["detail"])
        self.assertEqual(self.rows("SELECT count(*) FROM document WHERE collection_id = %d" % c), 0)
        self.assertEqual(self.rows("SELECT count(*) FROM chunk WHERE collection_id = %d" % c), 0)

    # ---- names ----

    def test_names_are_labels(self):
        c = self.collection("owner", "names")
        for name in ("../../etc/passwd", "..\\x", "/abs", "%2e%2e%2f", "a\r\nb", "\u2024\u2024/"):
            d = self.upload("owner", c, "x.txt", "text/plain", b"text", name=name)
            self.assertEqual(self.expect("owner", "GET", "/v1/documents/%d" % d["id"], 200)
                             .json()["name"], name)
        d = self.upload("owner", c, "../../etc/shadow.txt", "text/plain", b"text")
        self.assertEqual(self.expect("owner", "GET", "/v1/documents/%d" % d["id"], 200)
                         .json()["name"], "../../etc/shadow.txt")
        self.upload("owner", c, "x.txt", "text/plain", b"text", status=422, name="n" * 4096)
        self.upload("owner", c, "x.txt", "text/plain", b"text", status=422, name=b"a\x00b")

    # ---- lists, deletes, chunks ----

    def test_list_get_delete(self):
        c = self.collection("owner", "lifecycle")
        ids = [self.upload("owner", c, "d%d.txt" % i, "text/plain", prose(30).encode(),
                           chunk_size=50)["id"] for i in range(3)]
        page = self.expect("owner", "GET", "/v1/documents?collection_id=%d&limit=2" % c,
                           200).json()
        self.assertEqual((page["total"], [x["id"] for x in page["data"]]), (3, ids[:2]))
        page = self.expect("owner", "GET", "/v1/documents?collection_id=%d&offset=2" % c,
                           200).json()
        self.assertEqual([x["id"] for x in page["data"]], ids[2:])
        page = self.expect("owner", "GET", "/v1/documents?collection_id=%d&sort_by=name"
                           "&sort_order=desc" % c, 200).json()
        self.assertEqual([x["name"] for x in page["data"]], ["d2.txt", "d1.txt", "d0.txt"])
        for bad in ("limit=0", "limit=101", "sort_by=size", "collection_id=abc"):
            self.expect("owner", "GET", "/v1/documents?" + bad, 422)
        self.expect("owner", "DELETE", "/v1/documents/%d" % ids[0], 204)
        self.expect("owner", "GET", "/v1/documents/%d" % ids[0], 404)
        self.expect("owner", "DELETE", "/v1/documents/%d" % ids[0], 404)
        self.assertEqual(self.rows("SELECT count(*) FROM chunk WHERE document_id = %d"
                                   % ids[0]), 0)
        self.assertGreater(self.rows("SELECT count(*) FROM chunk WHERE document_id = %d"
                                     % ids[1]), 0)

    def test_chunks_routes(self):
        c = self.collection("owner", "chunks")
        d = self.upload("owner", c, "a.txt", "text/plain", b"one\n\ntwo", chunk_size=4)["id"]
        first = self.chunks("owner", d)
        self.assertEqual([k["content"] for k in first], ["one", "two"])
        r = self.expect("owner", "POST", "/v1/documents/%d/chunks" % d, 201,
                        {"chunks": [{"content": "three"},
                                    {"content": "four", "metadata": {"page": 4}}]}).json()
        added = r["data"]
        self.assertEqual([(k["content"], k["position"]) for k in added],
                         [("three", 2), ("four", 3)])
        self.assertEqual(added[1]["metadata"], {"page": 4, "document_name": "a.txt"})
        self.assertEqual(self.rows("SELECT count(*) FROM chunk WHERE document_id = %d AND "
                                   "embedding IS NOT NULL" % d), 4)
        k = added[0]
        path = "/v1/documents/%d/chunks/%d" % (d, k["id"])
        self.assertEqual(self.expect("owner", "GET", path, 200).json(), k)
        self.assertEqual(self.expect("owner", "GET", "/v1/chunks/%d/%d" % (d, k["id"]), 200)
                         .json(), k)
        old = self.expect("owner", "GET", "/v1/chunks/%d?limit=100" % d, 200).json()["data"]
        self.assertEqual(len(old), 4)
        self.expect("owner", "DELETE", path, 204)
        self.expect("owner", "GET", path, 404)
        self.assertEqual(len(self.chunks("owner", d)), 3)
        self.expect("owner", "GET", "/v1/documents/%d/chunks/%d" % (d + 1000, first[0]["id"]),
                    404)
        for bad in ({}, {"chunks": []}, {"chunks": [{"content": "x"}] * 65},
                    {"chunks": [{"content": ""}]}, {"chunks": [{"content": 5}]},
                    {"chunks": [{"content": "x", "metadata": {"k": {"deep": 1}}}]}):
            self.expect("owner", "POST", "/v1/documents/%d/chunks" % d, 422, bad)
        self.expect("owner", "POST", "/v1/documents/999999/chunks", 404,
                    {"chunks": [{"content": "x"}]})
        self.expect("owner", "GET", "/v1/documents/999999/chunks", 404)
        # An empty document, filled through /chunks.
        body, ctype = multipart({"collection_id": c, "name": "empty one"})
        r = self.call("owner", "POST", "/v1/documents", body, {"Content-Type": ctype})
        self.assertEqual(r.status, 201, r)
        e = r.json()["id"]
        self.assertEqual(self.chunks("owner", e), [])
        self.expect("owner", "POST", "/v1/documents/%d/chunks" % e, 201,
                    {"chunks": [{"content": "filled later"}]})
        self.assertEqual([k["position"] for k in self.chunks("owner", e)], [0])

    def test_parse_beta(self):
        before = self.rows("SELECT count(*) FROM document")
        pdf = make_pdf(["page zero", "page one", "page two", "page three"])
        body, ctype = multipart({"page_range": "0,2-3"},
                                [("file", "book.pdf", "application/pdf", pdf)])
        r = self.call("other", "POST", "/v1/parse-beta", body, {"Content-Type": ctype})
        self.assertEqual(r.status, 200, r)
        got = r.json()
        self.assertEqual(got["object"], "list")
        self.assertEqual([p["metadata"] for p in got["data"]],
                         [{"document_name": "book.pdf", "page": i} for i in (0, 2, 3)])
        self.assertEqual([p["object"] for p in got["data"]], ["documentPage"] * 3)
        self.assertIn("page two", got["data"][1]["content"])
        self.assertEqual(got["data"][0]["images"], [])
        for bad_range in ("x", "3-1", "1,", "-2"):
            body, ctype = multipart({"page_range": bad_range},
                                    [("file", "book.pdf", "application/pdf", pdf)])
            r = self.call("other", "POST", "/v1/parse-beta", body, {"Content-Type": ctype})
            self.assertEqual(r.status, 422, (bad_range, r))
        body, ctype = multipart({}, [("file", "cut.pdf", "application/pdf", pdf[:300])])
        r = self.call("other", "POST", "/v1/parse-beta", body, {"Content-Type": ctype})
        self.assertEqual(r.status, 422, r)
        self.assertEqual(self.rows("SELECT count(*) FROM document"), before)

    # ---- who reaches what ----

    def test_access_rules(self):
        d = self.upload("owner", self.private, "secret.txt", "text/plain", b"private words")
        pub = self.upload("owner", self.public, "open.txt", "text/plain", b"public words")
        doc, pdoc = "/v1/documents/%d" % d["id"], "/v1/documents/%d" % pub["id"]
        chunk = self.chunks("owner", d["id"])[0]["id"]
        pchunk = self.chunks("owner", pub["id"])[0]["id"]
        for who in ("other", "admin"):
            # A private collection's documents do not exist for them.
            self.expect(who, "GET", doc, 404)
            self.expect(who, "DELETE", doc, 404)
            self.expect(who, "GET", doc + "/chunks", 404)
            self.expect(who, "GET", "%s/chunks/%d" % (doc, chunk), 404)
            self.expect(who, "DELETE", "%s/chunks/%d" % (doc, chunk), 404)
            self.expect(who, "GET", "/v1/chunks/%d" % d["id"], 404)
            self.expect(who, "POST", doc + "/chunks", 404, {"chunks": [{"content": "x"}]})
            listed = self.expect(who, "GET", "/v1/documents?limit=100", 200).json()["data"]
            self.assertNotIn(d["id"], [x["id"] for x in listed])
            self.assertEqual(self.expect(who, "GET", "/v1/documents?collection_id=%d"
                                         % self.private, 200).json()["data"], [])
            self.upload(who, self.private, "in.txt", "text/plain", b"intruder", status=404)
            # A public collection's documents are read, not changed.
            self.expect(who, "GET", pdoc, 200)
            self.assertEqual([k["content"] for k in self.chunks(who, pub["id"])],
                             ["public words"])
            self.expect(who, "GET", "%s/chunks/%d" % (pdoc, pchunk), 200)
            self.assertIn(pub["id"], [x["id"] for x in self.expect(
                who, "GET", "/v1/documents?limit=100", 200).json()["data"]])
            self.expect(who, "DELETE", pdoc, 404)
            self.expect(who, "DELETE", "%s/chunks/%d" % (pdoc, pchunk), 404)
            self.expect(who, "POST", pdoc + "/chunks", 404, {"chunks": [{"content": "x"}]})
            self.upload(who, self.public, "in.txt", "text/plain", b"intruder", status=404)
        self.expect(None, "GET", doc, 401)
        self.expect(None, "POST", "/v1/documents", 401)
        for d_id in (d["id"], pub["id"]):
            self.assertEqual(self.rows("SELECT count(*) FROM chunk WHERE document_id = %d"
                                       % d_id), 1)
        self.assertEqual(self.rows("SELECT count(*) FROM document WHERE name = 'in.txt'"), 0)
        self.expect("owner", "GET", doc, 200)

    def test_two_instances_share_documents(self):
        g2 = lgtest.Gateway(config(), pg=self.pg).start()
        try:
            c = self.collection("owner", "shared between instances")
            d = self.upload("owner", c, "one.txt", "text/plain", b"written on the first")
            got = self.expect("owner", "GET", "/v1/documents/%d" % d["id"], 200,
                              gateway=g2).json()
            self.assertEqual(got["name"], "one.txt")
            body, ctype = multipart({"collection_id": c},
                                    [("file", "two.txt", "text/plain", b"written on the second")])
            r = self.call("owner", "POST", "/v1/documents", body, {"Content-Type": ctype},
                          gateway=g2)
            self.assertEqual(r.status, 201, r)
            listed = self.expect("owner", "GET", "/v1/documents?collection_id=%d" % c,
                                 200).json()["data"]
            self.assertEqual([x["name"] for x in listed], ["one.txt", "two.txt"])
            self.expect("owner", "DELETE", "/v1/collections/%d" % c, 204, gateway=g2)
            self.expect("owner", "GET", "/v1/documents/%d" % d["id"], 404)
        finally:
            g2.close()


if __name__ == "__main__":
    unittest.main()
