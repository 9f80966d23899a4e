#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""RAG benchmark: ingestion, search latency and retrieval quality.

Starts a private PostgreSQL cluster and one llmgate (auth, mock, rag with
the mock provider's embeddings) from a build directory, then:

1. ingestion: uploads text files of generated paragraphs (one paragraph,
   one chunk) until a collection holds each size (10k, 100k chunks) and
   reports chunks per second through POST /v1/documents (parse, chunk,
   embed, store);
2. search latency: --queries sequential POST /v1/search per method on each
   collection over one keep-alive connection, p50 and p99 (the first,
   cold semantic search that loads the vectors is reported apart);
3. retrieval quality on the manual pages installed on this machine: each
   page (rendered by groff, its NAME section removed) is a document; its
   NAME line's description is the query; the page is the one relevant
   document. recall@5 and MRR@10 per method, over documents (a page's
   chunks count once, at its best rank).

Never part of the test suite. Prints a Markdown table; --json writes the
figures.
"""
import argparse
import concurrent.futures
import glob
import gzip
import http.client
import json
import os
import random
import re
import subprocess
import sys
import time
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.join(HERE, "..", "..")
sys.path.insert(0, os.path.join(ROOT, "tests", "lib"))

import lgtest                   # noqa: E402
from pgcluster import PgCluster  # noqa: E402

MASTER = "rag-bench-master-key-5d2a"
METHODS = ("lexical", "semantic", "hybrid")
PARAGRAPH_CHARS = 300
CHUNKS_PER_FILE = 1000


class BenchError(RuntimeError):
    pass


def config(workers):
    return {"server": {"listen": ["127.0.0.1:0"], "workers": workers},
            "plugins": {"auth": {"master_key": MASTER}, "mock": {},
                        "rag": {"embeddings_model": "mock-embeddings"}},
            "models": [{"name": "mock-embeddings", "type": "text-embeddings-inference",
                        "providers": [{"type": "mock", "model_name": "mock-embeddings"}]}]}


class Client:
    """One keep-alive connection with the master key."""

    def __init__(self, gw, timeout=600):
        self.conn = http.client.HTTPConnection(gw.host, gw.port, timeout=timeout)

    def request(self, method, path, body=None, ctype="application/json"):
        headers = {"Authorization": "Bearer " + MASTER}
        if isinstance(body, (dict, list)):
            body = json.dumps(body).encode()
        if body is not None:
            headers["Content-Type"] = ctype
        self.conn.request(method, path, body=body, headers=headers)
        resp = self.conn.getresponse()
        data = resp.read()
        if resp.status not in (200, 201, 204):
            raise BenchError("%s %s: %d %s" % (method, path, resp.status, data[:300]))
        return json.loads(data) if data else None


def multipart(fields, filename, data):
    boundary = "b-" + uuid.uuid4().hex
    out = b""
    for name, value in fields.items():
        out += ("--%s\r\nContent-Disposition: form-data; name=\"%s\"\r\n\r\n%s\r\n"
                % (boundary, name, value)).encode()
    out += ("--%s\r\nContent-Disposition: form-data; name=\"file\"; filename=\"%s\"\r\n"
            "Content-Type: text/plain\r\n\r\n" % (boundary, filename)).encode()
    out += data + b"\r\n--%s--\r\n" % boundary.encode()
    return "multipart/form-data; boundary=" + boundary, out


def upload(client, collection, name, text, chunk_size):
    ctype, body = multipart({"collection_id": collection, "name": name,
                             "chunk_size": chunk_size, "chunk_overlap": 0,
                             "preset_separators": "text"}, name + ".txt", text.encode())
    return client.request("POST", "/v1/documents", body, ctype)


# ---- ingestion and latency on generated text ----

def vocabulary(pages):
    words = set()
    for text in pages:
        words.update(w.lower() for w in re.findall(r"[A-Za-z]{4,12}", text))
    words = sorted(words)
    if len(words) < 1000:
        raise BenchError("too few words in the manual pages for a vocabulary")
    return words


def paragraph(rng, words):
    out = []
    size = 0
    while size < PARAGRAPH_CHARS:
        w = rng.choice(words)
        out.append(w)
        size += len(w) + 1
    return " ".join(out) + "."


def ingest(client, collection, rng, words, chunks):
    """Uploads @chunks paragraphs; returns the seconds spent in uploads."""
    spent = 0.0
    done = 0
    while done < chunks:
        n = min(CHUNKS_PER_FILE, chunks - done)
        text = "\n\n".join(paragraph(rng, words) for _ in range(n))
        t0 = time.perf_counter()
        upload(client, collection, "gen-%d" % done, text, PARAGRAPH_CHARS + 60)
        spent += time.perf_counter() - t0
        done += n
    return spent


def percentile(values, p):
    values = sorted(values)
    k = max(0, min(len(values) - 1, int(round(p / 100.0 * (len(values) - 1)))))
    return values[k]


def latency(client, collection, rng, words, method, queries):
    times = []
    for _ in range(queries):
        q = " ".join(rng.choice(words) for _ in range(5))
        t0 = time.perf_counter()
        client.request("POST", "/v1/search", {"query": q, "collection_ids": [collection],
                                              "method": method, "limit": 10})
        times.append((time.perf_counter() - t0) * 1000)
    return times


# ---- manual pages ----

NAME_RE = re.compile(r"^(NAME|名前)\s*$", re.M)


def man_pages(limit, seed):
    """(name, description, text) for up to @limit English pages of sections
    1 and 8, a seeded sample of the installed ones."""
    files = sorted(glob.glob("/usr/share/man/man1/*") + glob.glob("/usr/share/man/man8/*"))
    random.Random(seed).shuffle(files)
    pages, seen = [], set()

    def render(path):
        try:
            opener = gzip.open if path.endswith(".gz") else open
            with opener(path, "rb") as f:
                source = f.read()
            if source.lstrip().startswith(b".so "):       # an alias of another page
                return None
            grog = subprocess.run(["lexgrog", path], capture_output=True, text=True, timeout=30)
            m = re.search(r': "(.+?) - (.+)"$', grog.stdout.strip().split("\n")[0])
            if not m:
                return None
            out = subprocess.run(["groff", "-t", "-man", "-Tutf8", "-P-cbou", "-rLL=80n"],
                                 input=source, capture_output=True, timeout=60)
            text = out.stdout.decode("utf-8", "replace")
            return m.group(1), m.group(2).strip(), without_name(text)
        except (subprocess.SubprocessError, OSError, EOFError):
            return None

    with concurrent.futures.ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        for i in range(0, len(files), 64):
            for page in pool.map(render, files[i:i + 64]):
                if not page or len(page[1].split()) < 3 or len(page[2]) < 200:
                    continue
                if page[1] in seen:        # one page per description
                    continue
                seen.add(page[1])
                pages.append(page)
            if len(pages) >= limit:
                break
    return pages[:limit]


def without_name(text):
    """The page without its NAME section (the query is taken from it)."""
    lines = text.split("\n")
    out, skipping = [], False
    for line in lines:
        if line.strip() == "NAME":
            skipping = True
            continue
        if skipping and line and not line[0].isspace():
            skipping = False
        if not skipping:
            out.append(line)
    return "\n".join(out).strip()


def quality(client, collection, pages, doc_ids):
    figures = {}
    for method in METHODS:
        hits5 = 0
        rr = 0.0
        for (name, desc, _), doc in zip(pages, doc_ids):
            r = client.request("POST", "/v1/search", {"query": desc, "method": method,
                                                      "collection_ids": [collection],
                                                      "limit": 50})
            ranked = []
            for d in r["data"]:
                if d["chunk"]["document_id"] not in ranked:
                    ranked.append(d["chunk"]["document_id"])
            if doc in ranked[:5]:
                hits5 += 1
            if doc in ranked[:10]:
                rr += 1.0 / (ranked.index(doc) + 1)
        figures[method] = {"recall@5": hits5 / len(pages), "mrr@10": rr / len(pages)}
    return figures


# ---- main ----

def parse_args():
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--build", default=os.environ.get("LLMGATE_BENCH_BUILD",
                                                      "build-bench-release"))
    ap.add_argument("--sizes", default="10000,100000", help="chunks per collection")
    ap.add_argument("--queries", type=int, default=200, help="searches per method and size")
    ap.add_argument("--pages", type=int, default=1000, help="manual pages for quality")
    ap.add_argument("--workers", default="auto")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--json")
    return ap.parse_args()


def main():
    args = parse_args()
    build = os.path.abspath(args.build)
    binary = os.path.join(build, "core", "llmgate")
    if not os.access(binary, os.X_OK):
        raise BenchError("%s is missing: build %s first" % (binary, build))
    env = {"LLMGATE_PLUGIN_PATH": os.path.join(build, "plugins", "all")}
    rng = random.Random(args.seed)
    results = {"sizes": {}, "quality": {}}
    sys.stderr.write("rag bench: rendering up to %d manual pages\n" % args.pages)
    pages = man_pages(args.pages, args.seed)
    words = vocabulary(p[2] for p in pages)
    pg = PgCluster().start()
    gw = None
    try:
        gw = lgtest.Gateway(config(args.workers), pg=pg, binary=binary, env=env).start()
        client = Client(gw)
        for size in [int(s) for s in args.sizes.split(",")]:
            col = client.request("POST", "/v1/collections", {"name": "gen-%d" % size})["id"]
            sys.stderr.write("rag bench: ingesting %d chunks\n" % size)
            spent = ingest(client, col, rng, words, size)
            row = {"ingest_chunks_per_s": size / spent}
            t0 = time.perf_counter()
            client.request("POST", "/v1/search", {"query": "cold", "collection_ids": [col]})
            row["cold_semantic_ms"] = (time.perf_counter() - t0) * 1000
            for method in METHODS:
                times = latency(client, col, rng, words, method, args.queries)
                row[method] = {"p50_ms": percentile(times, 50), "p99_ms": percentile(times, 99)}
            results["sizes"][size] = row
            # the next size must not share memory with this one
            client.request("DELETE", "/v1/collections/%d" % col)
        sys.stderr.write("rag bench: indexing %d manual pages\n" % len(pages))
        col = client.request("POST", "/v1/collections", {"name": "man"})["id"]
        doc_ids = []
        chunks = 0
        for name, _, text in pages:
            doc_ids.append(upload(client, col, name, text, 2048)["id"])
        chunks = int(pg.psql("SELECT count(*) FROM chunk WHERE collection_id = %d" % col)[0][0])
        results["quality"] = {"pages": len(pages), "chunks": chunks,
                              "methods": quality(client, col, pages, doc_ids)}
    finally:
        if gw:
            gw.close()
        pg.destroy()
    print(table(results, args))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


def table(res, args):
    out = ["| chunks | ingestion (chunks/s) | cold semantic (ms) | " +
           " | ".join("%s p50 / p99 (ms)" % m for m in METHODS) + " |",
           "|---:|---:|---:|" + "---:|" * len(METHODS)]
    for size, row in res["sizes"].items():
        out.append("| %d | %.0f | %.0f | " % (size, row["ingest_chunks_per_s"],
                                             row["cold_semantic_ms"]) +
                   " | ".join("%.1f / %.1f" % (row[m]["p50_ms"], row[m]["p99_ms"])
                              for m in METHODS) + " |")
    q = res["quality"]
    out += ["", "Manual pages: %d pages, %d chunks" % (q["pages"], q["chunks"]), "",
            "| method | recall@5 | MRR@10 |", "|---|---:|---:|"]
    for m in METHODS:
        out.append("| %s | %.3f | %.3f |" % (m, q["methods"][m]["recall@5"],
                                             q["methods"][m]["mrr@10"]))
    return "\n".join(out)


if __name__ == "__main__":
    try:
        main()
    except BenchError as e:
        sys.stderr.write("rag bench: %s\n" % e)
        sys.exit(1)
