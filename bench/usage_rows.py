#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""How many usage rows per second PostgreSQL takes from the ledger.

    bench/usage_rows.py [--build build-bench-release] [--rows 200000] [--batch 2000]

Starts a private PostgreSQL cluster, lets llmgate apply the usage plugin's
migrations (`llmgate migrate`), then sends batches of records in the shape the
usage plugin writes, the way it sends them (one transaction per batch: the
batch's claim, usage_claim_batch(), then COPY FROM STDIN in binary format),
from one connection, as the plugin's flusher does, and prints rows per second. The gateway's own cost per record (building it,
queueing it) is measured by `bench/run.sh --with usage`; this is the
database side: how fast a backlog (a replayed journal) drains.
"""
import argparse
import os
import struct
import subprocess
import sys
import tempfile
import time
import uuid

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests", "lib"))

import lgtest                    # noqa: E402
from pgcluster import PgCluster  # noqa: E402


# The columns of the plugin's COPY (usage_copy_sql in plugins/usage/record.c).
COLUMNS = ("record_id", "request_id", "created", "endpoint", "method", "status", "user_id",
           "key_id", "organization_id", "user_name", "key_name", "model_id", "model_name",
           "provider_id", "provider_type", "provider_model", "prompt_tokens",
           "completion_tokens", "total_tokens", "usage_estimated", "latency_ms", "ttft_ms",
           "cost", "kwh", "kgco2eq", "client_gone", "error")


def record(i):
    """One record as the usage plugin makes it (a chat call with a user)."""
    return {
        "record_id": uuid.uuid4().hex, "request_id": "bench-%d" % i,
        "created": int((time.time() - PG_EPOCH) * 1e6),    # microseconds since 2000
        "endpoint": "/v1/chat/completions", "method": "POST",
        "status": 200, "user_id": 1 + i % 50, "key_id": 1 + i % 100, "organization_id": 1,
        "user_name": "user%d@example.org" % (i % 50), "key_name": "key", "model_id": 1,
        "model_name": "mock-chat", "provider_id": 1, "provider_type": "mock",
        "provider_model": "mock-chat", "prompt_tokens": 12, "completion_tokens": 34,
        "total_tokens": 46, "usage_estimated": False, "latency_ms": 12.5, "ttft_ms": 3.25,
        "cost": 0.000123, "kwh": 1.5e-6, "kgco2eq": 8.9e-7, "client_gone": False,
        "error": None,
    }


# The binary form of the columns that are not text.
BINARY = {"status": ">i", "user_id": ">q", "key_id": ">q", "organization_id": ">q",
          "model_id": ">q", "provider_id": ">q", "prompt_tokens": ">q",
          "completion_tokens": ">q", "total_tokens": ">q", "usage_estimated": ">?",
          "client_gone": ">?", "latency_ms": ">d", "ttft_ms": ">d", "cost": ">d", "kwh": ">d",
          "kgco2eq": ">d", "created": ">q"}
PG_EPOCH = 946684800    # 2000-01-01 in Unix time


def binary_record(rec):
    """@rec as the plugin writes it: a tuple of binary COPY."""
    out = [struct.pack(">h", len(COLUMNS))]
    for c in COLUMNS:
        v = rec[c]
        if v is None:
            out.append(struct.pack(">i", -1))
            continue
        data = struct.pack(BINARY[c], v) if c in BINARY else v.encode()
        out.append(struct.pack(">i", len(data)) + data)
    return b"".join(out)


def batch_sql(records, path):
    """One batch as the plugin sends it: its claim, then its COPY (the data
    written to @path, which psql's \\copy sends as COPY FROM STDIN)."""
    with open(path, "wb") as f:
        f.write(b"PGCOPY\n\xff\r\n\x00" + struct.pack(">ii", 0, 0))
        f.write(b"".join(binary_record(r) for r in records))
        f.write(struct.pack(">h", -1))
    return ("BEGIN;\nSELECT usage_claim_batch('%s', %d, '1s');\n"
            "\\copy usage (%s) FROM '%s' WITH (FORMAT binary)\nCOMMIT;\n"
            % (uuid.uuid4().hex, len(records), ", ".join(COLUMNS), path))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--build", default="build-bench-release")
    ap.add_argument("--rows", type=int, default=200000)
    ap.add_argument("--batch", type=int, default=2000, help="records per statement")
    args = ap.parse_args()
    binary = os.path.abspath(os.path.join(args.build, "core", "llmgate"))
    plugins = os.path.abspath(os.path.join(args.build, "plugins", "all"))
    if not os.access(binary, os.X_OK):
        sys.exit("usage_rows: build %s first (bench/run.sh does)" % args.build)
    os.environ["LLMGATE_BIN"] = binary
    # The batches' files go with the directory.
    with tempfile.TemporaryDirectory(prefix="llmgate-rows-") as work, PgCluster() as pg:
        cfg = {"plugins": {"usage": {"journal_dir": work}},
               "dependencies": {"postgres": {"url": pg.url()}}}
        r = lgtest.run_llmgate(["migrate"], config=cfg, pg=pg,
                               env={"LLMGATE_PLUGIN_PATH": plugins})
        if r.returncode != 0:
            sys.exit("usage_rows: migrate failed:\n" + r.stderr)
        script = os.path.join(work, "batches.sql")
        with open(script, "w") as f:
            for start in range(0, args.rows, args.batch):
                f.write(batch_sql([record(i) for i in
                                   range(start, min(start + args.batch, args.rows))],
                                  os.path.join(work, "batch-%d.bin" % start)))
        env = dict(os.environ, PGPASSWORD=pg.password)
        t0 = time.monotonic()
        subprocess.run(["psql", "-h", "127.0.0.1", "-p", str(pg.port), "-U", "postgres",
                        "-X", "-q", "-v", "ON_ERROR_STOP=1", "-o", os.devnull, "-f", script],
                       env=env, check=True)
        elapsed = time.monotonic() - t0
        stored = int(pg.psql("SELECT count(*) FROM usage")[0][0])
    if stored != args.rows:
        sys.exit("usage_rows: %d rows stored, %d sent" % (stored, args.rows))
    print("usage rows: %d in %.2f s, batches of %d: %.0f rows/s" %
          (args.rows, elapsed, args.batch, args.rows / elapsed))


if __name__ == "__main__":
    main()
