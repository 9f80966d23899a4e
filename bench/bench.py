#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""llmgate's benchmark driver (bench/run.sh builds, then runs this).

In one run, on one machine, wrk measures the same requests sent to:
  upstream   the C mock upstream called directly (the floor),
  nginx      nginx as a bare reverse proxy in front of it (the reference
             for one C proxy hop),
  llmgate    llmgate with the plugins of the embedded default (auth, mock)
             plus the openai provider forwarding to the same mock upstream,
  and one more llmgate row per --without PLUGIN / --with PLUGIN.
Workloads: chat (POST /v1/chat/completions, ~300-byte body), stream (the
same with "stream": true and the usage chunk; a few events, no delay) and
embeddings (POST /v1/embeddings). Each gets a warm-up, a run at a fixed
concurrency for throughput and tail latency, then a run on one connection
for the median latency; --repeat N makes the targets take turns N times and
shows medians. It prints markdown tables: the figures, the ratios against
nginx, peak RSS (VmHWM), the targets met or missed, and on request the
instructions per request of each llmgate row under callgrind
(--instructions) and a perf profile (--perf WORKLOAD).

Every process it starts (PostgreSQL cluster, mock upstream, nginx, llmgate)
is stopped when it ends, also on Ctrl-C or an error."""
import argparse
import datetime
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, "tests", "lib"))

import lgtest                          # noqa: E402  (the server harness)
from mock import MockUpstream          # noqa: E402
from pgcluster import PgCluster, free_port   # noqa: E402

MASTER_KEY = "sk-bench-master-key-0d6c2a9e41b7f358"
CHAT_MODEL = "mock-chat"               # the same name on every target, so
EMBED_MODEL = "mock-embed"             # every target gets the same bytes
DEFAULT_PLUGINS = {"auth": {"master_key": MASTER_KEY}, "mock": {}, "openai": {}}
# What --without auth puts in auth's place: key routes need some AUTH hook.
AUTH_STUB = "bench_anyone"

TARGETS_DOC = {
    "rps": "llmgate >= 0.5x nginx rps at %d connections (aim 0.8x)",
    "p50": "llmgate's p50 added latency at 1 connection within 100 us of nginx's",
    "rss": "llmgate RSS after the load < 50 MB",
    "usage": "the usage ledger (+usage) costs at most 10%% of the default row's rps at %d "
             "connections, median of the rounds",
}
RPS_TARGET, RPS_AIM, P50_SLACK_US, RSS_TARGET_KB = 0.5, 0.8, 100, 50 * 1024
USAGE_LOSS_MAX = 10.0   # per cent


def chat_body(stream):
    body = {
        "model": CHAT_MODEL,
        "messages": [
            {"role": "system", "content": "You are a helpful assistant. Answer briefly."},
            {"role": "user", "content": "Summarise the main benefits of running one small "
                                        "gateway in front of several language model servers."},
        ],
        "temperature": 0.2,
        "max_tokens": 64,
    }
    if stream:
        # A few events: role, four words, finish, usage, [DONE].
        body.update(max_tokens=4, stream=True, stream_options={"include_usage": True})
    else:
        body["user"] = "bench-client-0001"
    return json.dumps(body, separators=(",", ":"))


EMBED_BODY = json.dumps({
    "model": EMBED_MODEL,
    "input": "Running one small gateway in front of several language model servers gives "
             "a team one key, one bill and one place to watch usage, limits and errors. "
             "It must add little latency and little memory to each request.",
    "encoding_format": "float",
}, separators=(",", ":"))

WORKLOADS = {
    "chat": ("/v1/chat/completions", chat_body(False)),
    "stream": ("/v1/chat/completions", chat_body(True)),
    "embeddings": ("/v1/embeddings", EMBED_BODY),
}

WRK_SCRIPT = r"""
wrk.method = "POST"
wrk.path = "%(path)s"
wrk.body = [==[%(body)s]==]
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer %(key)s"

done = function(summary, latency, requests)
	local e = summary.errors
	io.write(string.format(
		"BENCH_JSON {\"requests\":%%d,\"duration_us\":%%d,\"bytes\":%%d," ..
		"\"connect\":%%d,\"read\":%%d,\"write\":%%d,\"status\":%%d,\"timeout\":%%d," ..
		"\"p50\":%%d,\"p90\":%%d,\"p99\":%%d,\"mean\":%%.1f,\"max\":%%d}\n",
		summary.requests, summary.duration, summary.bytes,
		e.connect, e.read, e.write, e.status, e.timeout,
		latency:percentile(50), latency:percentile(90), latency:percentile(99),
		latency.mean, latency.max))
end
"""

NGINX_CONF = """
worker_processes %(workers)d;
daemon off;
master_process on;
pid %(prefix)s/nginx.pid;
error_log %(prefix)s/error.log warn;
worker_rlimit_nofile 8192;
events { worker_connections 4096; }
http {
	%(access_log)s
	client_body_temp_path %(prefix)s/tmp/body;
	proxy_temp_path %(prefix)s/tmp/proxy;
	fastcgi_temp_path %(prefix)s/tmp/fastcgi;
	uwsgi_temp_path %(prefix)s/tmp/uwsgi;
	scgi_temp_path %(prefix)s/tmp/scgi;
	# Like llmgate: never close a busy keep-alive connection by count.
	keepalive_requests 1000000;
	upstream mock {
		server %(upstream)s;
		keepalive 64;
		keepalive_requests 1000000;
	}
	server {
		listen 127.0.0.1:%(port)d;
		location / {
			proxy_pass http://mock;
			proxy_http_version 1.1;
			proxy_set_header Connection "";
			# Streams are relayed event by event, as llmgate does.
			proxy_buffering off;
		}
	}
}
"""


class BenchError(RuntimeError):
    pass


# ---------------------------------------------------------------------------
# /proc

def proc_status_kb(pid, field):
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def proc_cpu_ticks(pid):
    """(utime, stime) of @pid, in clock ticks."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return int(fields[11]), int(fields[12])
    except (OSError, IndexError, ValueError):
        return 0, 0


def cpu_ticks(pids):
    user = system = 0
    for p in pids:
        u, s = proc_cpu_ticks(p)
        user, system = user + u, system + s
    return user, system


def cluster_cpu_ticks(data_dir):
    """CPU ticks a PostgreSQL cluster has spent: its postmaster, the children
    it runs (backends, writers) and those it has reaped (cutime, cstime)."""
    try:
        with open(os.path.join(data_dir, "postmaster.pid")) as f:
            postmaster = int(f.readline())
        with open("/proc/%d/stat" % postmaster) as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError, ValueError):
        return 0
    user, system = cpu_ticks(children(postmaster))
    return sum(int(x) for x in fields[11:15]) + user + system


def children(pid):
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % entry) as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        if ppid == pid:
            found.append(int(entry))
    return found


# ---------------------------------------------------------------------------
# The processes under test

class Nginx:
    """Debian's nginx as a bare reverse proxy, run from a private prefix."""

    def __init__(self, upstream, workers, access_log):
        self.binary = shutil.which("nginx") or "/usr/sbin/nginx"
        self.prefix = tempfile.mkdtemp(prefix="llmgate-bench-nginx-")
        self.port = free_port()
        self.upstream = upstream
        self.workers = workers
        self.access_log = access_log
        self.proc = None

    def start(self):
        os.makedirs(os.path.join(self.prefix, "tmp"))
        # Workers run as nobody when started as root: they must reach the prefix.
        os.chmod(self.prefix, 0o755)
        conf = os.path.join(self.prefix, "nginx.conf")
        with open(conf, "w") as f:
            f.write(NGINX_CONF % {
                "workers": self.workers, "prefix": self.prefix, "port": self.port,
                "upstream": self.upstream,
                "access_log": ("access_log %s/access.log;" % self.prefix) if self.access_log
                else "access_log off;",
            })
        err = os.path.join(self.prefix, "error.log")
        self.proc = subprocess.Popen([self.binary, "-p", self.prefix, "-c", conf, "-e", err],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise BenchError("nginx exited with status %d:\n%s" %
                                 (self.proc.returncode, self.error_log()))
            if len(children(self.proc.pid)) >= self.workers:
                try:
                    lgtest.http_request("127.0.0.1", self.port, "GET", "/health", timeout=2)
                    return self
                except OSError:
                    pass
            time.sleep(0.05)
        raise BenchError("nginx did not answer within 10 s:\n" + self.error_log())

    def error_log(self):
        try:
            with open(os.path.join(self.prefix, "error.log"), errors="replace") as f:
                return f.read()[-4000:]
        except OSError:
            return ""

    def pids(self):
        return [self.proc.pid] + children(self.proc.pid)

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.prefix, ignore_errors=True)


class Target:
    """One row of the table: a name, a base URL and the processes to measure."""

    def __init__(self, name, host, port, pids_fn, kind):
        self.name = name
        self.host = host
        self.port = port
        self.pids = pids_fn
        self.kind = kind            # "upstream", "nginx" or "llmgate"
        self.peak_rss_kb = 0
        self.end_rss_kb = 0

    @property
    def url(self):
        return "http://%s:%d" % (self.host, self.port)

    def sample_rss(self):
        self.peak_rss_kb = max(self.peak_rss_kb,
                               sum(proc_status_kb(p, "VmHWM") for p in self.pids()))
        self.end_rss_kb = sum(proc_status_kb(p, "VmRSS") for p in self.pids())


def llmgate_config(upstream_url, plugins, access_log):
    return {
        "server": {"workers": "auto", "log_level": "info" if access_log else "warn"},
        "plugins": plugins,
        "models": [
            {"name": CHAT_MODEL, "type": "text-generation",
             "providers": [{"type": "openai", "url": upstream_url, "model_name": CHAT_MODEL}]},
            {"name": EMBED_MODEL, "type": "text-embeddings-inference",
             "providers": [{"type": "openai", "url": upstream_url, "model_name": EMBED_MODEL}]},
        ],
    }


# Settings a plugin cannot run without, for --with PLUGIN.
def with_settings(name, workdir):
    if name == "usage":
        return {"journal_dir": tempfile.mkdtemp(prefix="journal-", dir=workdir)}
    return {}


def user_key(gw):
    """A key of an ordinary user whose role has (high) limits on both models,
    made through the admin API with the master key: the requests then take
    the whole path of a real caller (key cache, role, rate limits)."""
    def call(method, path, body=None):
        return lgtest.admin(gw, MASTER_KEY, method, path, body)

    routers = call("GET", "/v1/admin/routers?limit=100")["data"]
    limits = [{"router_id": m["id"], "type": t, "value": 10 ** 12}
              for m in routers for t in ("rpm", "rpd", "tpm", "tpd")]
    role = call("POST", "/v1/admin/roles", {"name": "bench", "permissions": [],
                                            "limits": limits})
    user = call("POST", "/v1/admin/users", {"email": "bench@example.org",
                                            "password": "bench-password-123",
                                            "role_id": role["id"]})
    return call("POST", "/v1/admin/keys", {"name": "bench", "user": user["id"]})["value"]


def variants(args):
    """(label, plugins) of each llmgate row: the default first."""
    rows = [("llmgate", dict(DEFAULT_PLUGINS))]
    for name in args.without:
        if name not in DEFAULT_PLUGINS:
            raise BenchError("--without %s: not a plugin of the default (%s)" %
                             (name, ", ".join(DEFAULT_PLUGINS)))
        if name == "openai":
            raise BenchError("--without openai: the openai provider does the forwarding")
        plugins = {k: v for k, v in DEFAULT_PLUGINS.items() if k != name}
        if name == "auth":
            plugins[AUTH_STUB] = {}
        rows.append(("llmgate -" + name, plugins))
    for name in args.with_:
        if not re.fullmatch(r"[a-z][a-z0-9_]*", name):
            raise BenchError("--with %s: not a plugin name" % name)
        rows.append(("llmgate +" + name, dict(DEFAULT_PLUGINS, **{name: with_settings(
            name, args.workdir)})))
    return rows


# ---------------------------------------------------------------------------
# Checks and measurements

def preflight(target, workload, dim, key):
    """One request of @workload through @target, checked, so that wrk only
    ever measures real answers."""
    path, body = WORKLOADS[workload]
    r = lgtest.http_request(target.host, target.port, "POST", path, body,
                            {"Content-Type": "application/json",
                             "Authorization": "Bearer " + key}, timeout=10)
    what = "%s, %s" % (target.name, workload)
    if r.status != 200:
        raise BenchError("%s: status %d: %s" % (what, r.status, r.text[:500]))
    if workload == "chat":
        content = r.json()["choices"][0]["message"]["content"]
        ok = content.startswith("Mock reply to: Summarise")
    elif workload == "stream":
        events = [e.get("data") for e in r.events()]
        ok = events[-1:] == ["[DONE]"] and any('"usage":{' in (e or "") for e in events)
        ok = ok and len(events) >= 5
    else:
        ok = len(r.json()["data"][0]["embedding"]) == dim
    if not ok:
        raise BenchError("%s: unexpected answer: %s" % (what, r.text[:500]))


def run_wrk(target, script, connections, threads, seconds):
    cmd = ["wrk", "-t%d" % min(threads, connections), "-c%d" % connections,
           "-d%ds" % seconds, "--timeout", "5s", "-s", script, target.url]
    try:
        p = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True, timeout=seconds + 60)
    except subprocess.TimeoutExpired:
        raise BenchError("wrk did not finish: %s" % " ".join(cmd))
    m = re.search(r"^BENCH_JSON (\{.*\})$", p.stdout, re.M)
    if p.returncode != 0 or not m:
        raise BenchError("wrk failed (exit %d): %s\n%s" % (p.returncode, " ".join(cmd),
                                                          p.stdout[-2000:]))
    res = json.loads(m.group(1))
    res["rps"] = res["requests"] / (res["duration_us"] / 1e6)
    res["errors"] = sum(res[k] for k in ("connect", "read", "write", "status", "timeout"))
    return res


def measure(target, script, connections, threads, seconds, pg_data):
    """A wrk run, with the CPU time the target's processes and PostgreSQL
    (cluster @pg_data, shared by every row) spent on it."""
    u0, s0 = cpu_ticks(target.pids())
    pg0 = cluster_cpu_ticks(pg_data)
    res = run_wrk(target, script, connections, threads, seconds)
    u1, s1 = cpu_ticks(target.pids())
    pg1 = cluster_cpu_ticks(pg_data)
    hz = os.sysconf("SC_CLK_TCK")
    n = max(res["requests"], 1)
    res["cpu_s"] = (u1 - u0 + s1 - s0) / hz
    res["cpu_us_per_req"] = res["cpu_s"] * 1e6 / n
    res["user_us_per_req"] = (u1 - u0) / hz * 1e6 / n
    res["pg_cpu_us_per_req"] = (pg1 - pg0) / hz * 1e6 / n
    target.sample_rss()
    return res


def ledger_backlog(target):
    """Records @target's usage ledger holds and has not stored (in memory,
    or bytes in its journal), from its /metrics; None for a row without
    the ledger."""
    r = lgtest.http_request(target.host, target.port, "GET", "/metrics", None,
                            {"Authorization": "Bearer " + MASTER_KEY}, timeout=10)
    if r.status != 200:
        return None
    values = dict(line.rsplit(" ", 1) for line in r.text.splitlines()
                  if line.startswith(("llmgate_usage_queue_depth ",
                                      "llmgate_usage_journal_bytes ")))
    if not values:
        return None
    return (int(float(values.get("llmgate_usage_queue_depth", 0))),
            int(float(values.get("llmgate_usage_journal_bytes", 0))))


def backlog_text(backlog):
    if backlog is None:
        return ""
    return ", ledger backlog %d records + %d journal bytes" % backlog


def settle_ledger(target, timeout=120):
    """The ledger's backlog when a run ended, then a wait until it is
    stored: work a run leaves behind must not fall on the next row."""
    first = ledger_backlog(target)
    deadline = time.monotonic() + timeout
    now = first
    while now and now != (0, 0) and time.monotonic() < deadline:
        time.sleep(0.1)
        now = ledger_backlog(target)
    if now and now != (0, 0):
        raise BenchError("%s: the usage ledger still holds %d records and %d journal bytes "
                         "after %d s" % (target.name, now[0], now[1], timeout))
    return first


def paired_loss(base_runs, variant_runs):
    """Per round, how many per cent fewer requests per second the variant
    served than the default row (targets take turns, so the two of a round
    share the machine's state): the median, the least and the most."""
    loss = [100 * (1 - v["rps"] / b["rps"]) for b, v in zip(base_runs, variant_runs) if b["rps"]]
    if not loss:
        return 0.0, 0.0, 0.0
    return statistics.median(loss), min(loss), max(loss)


def median_run(runs):
    """The median of each figure over repeated runs, and the spread of rps."""
    agg = {key: statistics.median(r[key] for r in runs)
           for key in runs[0] if isinstance(runs[0][key], (int, float))}
    agg["errors"] = sum(r["errors"] for r in runs)
    agg["rps_min"] = min(r["rps"] for r in runs)
    agg["rps_max"] = max(r["rps"] for r in runs)
    return agg


def profile(target, script, args, workdir):
    """perf record on the llmgate process during one more loaded run; returns
    the report of self time by symbol."""
    if not shutil.which("perf"):
        raise BenchError("--perf needs perf (Debian: linux-perf)")
    data = os.path.join(workdir, "perf.data")
    pid = target.pids()[0]
    rec = subprocess.Popen(["perf", "record", "-F", "999", "-g", "-p", str(pid), "-o", data,
                            "--", "sleep", str(args.duration)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    time.sleep(0.3)
    res = run_wrk(target, script, args.connections, args.threads, args.duration)
    _, err = rec.communicate(timeout=args.duration + 60)
    if rec.returncode != 0:
        raise BenchError("perf record failed: " + err[-2000:])
    text = []
    for sort, limit, most in (("dso", "0.5", 12), ("dso,symbol", "0.6", 40)):
        rep = subprocess.run(["perf", "report", "-i", data, "--stdio", "--no-children",
                              "-g", "none", "--sort", sort, "--percent-limit", limit],
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        lines = [re.sub(r"(\s+-)+\s*$", "", line).rstrip() for line in rep.stdout.splitlines()
                 if line.strip() and not line.startswith("#")]
        text.append("\n".join(lines[:most]))
    return res, "\n\n".join(text)


# Instructions per request: deterministic where wall-clock figures are not,
# so that a plugin's cost of a few microseconds shows on a busy machine.
CALLGRIND_WRAPPER = """#!/bin/sh
exec valgrind --tool=callgrind --separate-threads=no --callgrind-out-file=%(dir)s/cg.%%p \\
	%(bin)s "$@"
"""
CG_CONNECTIONS, CG_SECONDS = 4, 6


def callgrind_objects(path):
    """Self instructions of a callgrind dump by shared object (basename)."""
    names, costs = {}, {}
    ob, in_call = "?", False
    with open(path, errors="replace") as f:
        for line in f:
            # Objects are numbered where first named, in ob= or cob= lines.
            m = re.match(r"(c?)ob=\((\d+)\)(?: (.*))?", line.rstrip("\n"))
            if m:
                if m.group(3):
                    names[m.group(2)] = os.path.basename(m.group(3))
                if not m.group(1):
                    ob = names.get(m.group(2), "?")
                continue
            if line.startswith("calls="):
                in_call = True
                continue
            m = re.match(r"^(?:[+-]?\d+|\*) (\d+)$", line.rstrip("\n"))
            if m:
                if in_call:
                    in_call = False     # the inclusive cost of a call: not self
                    continue
                costs[ob] = costs.get(ob, 0) + int(m.group(1))
    return costs


def count_instructions(args, rows, up, pg, scripts, llmgate_bin, plugin_path, workdir):
    """Runs each llmgate variant under callgrind; returns
    {workload: {variant: {"total": Ir per request, "by_object": {...}, "requests": n}}}."""
    for tool in ("valgrind", "callgrind_control"):
        if not shutil.which(tool):
            raise BenchError("--instructions needs %s (Debian: valgrind)" % tool)
    out = {w: {} for w in args.workloads}
    for label, plugins in rows:
        cgdir = tempfile.mkdtemp(prefix="cg-", dir=workdir)
        wrapper = os.path.join(cgdir, "llmgate-callgrind")
        with open(wrapper, "w") as f:
            f.write(CALLGRIND_WRAPPER % {"dir": cgdir, "bin": llmgate_bin})
        os.chmod(wrapper, 0o755)
        gw = lgtest.Gateway(llmgate_config(up.url, plugins, args.access_log), pg=pg,
                            binary=wrapper, env={"LLMGATE_PLUGIN_PATH": plugin_path},
                            start_timeout=300)
        try:
            gw.start()
            pid = str(gw.proc.pid)     # valgrind exec'ed by the wrapper
            t = Target(label, gw.host, gw.port, lambda: [], "llmgate")
            for w in args.workloads:
                sys.stderr.write("bench: instructions %-10s %s\n" % (w, label))
                run_wrk(t, scripts[w], CG_CONNECTIONS, 1, 2)
                subprocess.run(["callgrind_control", "--zero", pid], check=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                res = run_wrk(t, scripts[w], CG_CONNECTIONS, 1, CG_SECONDS)
                before = set(os.listdir(cgdir))
                subprocess.run(["callgrind_control", "--dump=" + w, pid], check=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                dump = wait_new_file(cgdir, before)
                if args.callgrind_dir:
                    os.makedirs(args.callgrind_dir, exist_ok=True)
                    shutil.copy(dump, os.path.join(args.callgrind_dir, "callgrind.%s.%s" % (
                        w, re.sub(r"[^A-Za-z0-9]+", "_", label).strip("_"))))
                by_obj = callgrind_objects(dump)
                n = max(res["requests"], 1)
                out[w][label] = {"requests": res["requests"],
                                 "total": sum(by_obj.values()) / n,
                                 "by_object": {k: v / n for k, v in by_obj.items()}}
        finally:
            gw.close()
    return out


def wait_new_file(directory, before, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        new = [f for f in os.listdir(directory) if f not in before and f.startswith("cg.")]
        if new:
            path = os.path.join(directory, sorted(new)[-1])
            time.sleep(0.5)         # written in one go, but let it finish
            return path
        time.sleep(0.1)
    raise BenchError("callgrind wrote no dump within %d s" % timeout)


def instructions_report(args, instr, results):
    out = ["Instructions per request (callgrind, %d connections, %d s, self cost by object; "
           "the us column converts at the default row's own rate, its user CPU per "
           "request under load):" % (CG_CONNECTIONS, CG_SECONDS), "",
           "| workload | target | requests | instructions | llmgate | libcurl | libc | "
           "libevent | plugins | vs default | ~us |",
           "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for w in args.workloads:
        base = instr[w].get("llmgate")
        user_us = results[w]["llmgate"]["load"].get("user_us_per_req", 0)
        rate = base["total"] / user_us if base and user_us else 0
        for label, r in instr[w].items():
            obj = r["by_object"]

            def part(prefix):
                return sum(v for k, v in obj.items() if k.startswith(prefix))
            plugins = sum(v for k, v in obj.items() if k.endswith(".so") and
                          not k.startswith("lib"))
            delta = r["total"] - base["total"] if base else 0
            out.append("| %s | %s | %d | %d | %d | %d | %d | %d | %d | %+d | %s |" % (
                w, label, r["requests"], r["total"], part("llmgate"), part("libcurl"),
                part("libc."), part("libevent"), plugins, delta,
                "%+.1f" % (delta / rate) if rate and label != "llmgate" else ""))
    return "\n".join(out)


# ---------------------------------------------------------------------------
# Output

def us(v):
    return "%d" % round(v)


def fmt_rps(v):
    return "%d" % round(v)


def machine():
    model = ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem = proc_meminfo_gb()
    return "%d CPUs (%s), %.1f GB RAM, Linux %s" % (os.cpu_count(), model, mem,
                                                  platform.release())


def proc_meminfo_gb():
    try:
        with open("/proc/meminfo") as f:
            return int(f.readline().split()[1]) / 1024 / 1024
    except (OSError, ValueError, IndexError):
        return 0.0


def command_line():
    """bench/run.sh and the options given to it (not those run.sh adds)."""
    argv, shown = sys.argv[1:], []
    while argv:
        arg = argv.pop(0)
        if arg in ("--build", "--stub-dir"):
            argv = argv[1:]
        elif not arg.startswith(("--build=", "--stub-dir=")):
            shown.append(arg)
    return " ".join(["bench/run.sh"] + shown)


def source_revision():
    """The commit measured, and whether the working tree differed from it
    (read-only git commands: no index refresh)."""
    def git(*argv):
        try:
            p = subprocess.run(["git", "--no-optional-locks", "-C", ROOT] + list(argv),
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                               timeout=20)
            return p.stdout.strip() if p.returncode == 0 else None
        except (OSError, subprocess.TimeoutExpired):
            return None
    head = git("rev-parse", "--short", "HEAD")
    if not head:
        return "unknown (not a git checkout)"
    changed = git("status", "--porcelain", "--untracked-files=no")
    return head + (" with uncommitted changes" if changed else "")


def tool_versions(llmgate_bin):
    def first_line(cmd):
        try:
            p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, timeout=10)
            return p.stdout.strip().splitlines()[0] if p.stdout.strip() else "?"
        except (OSError, subprocess.TimeoutExpired):
            return "?"
    return {
        "llmgate": first_line([llmgate_bin, "--version"]),
        "nginx": first_line([shutil.which("nginx") or "/usr/sbin/nginx", "-v"]),
        "wrk": first_line(["wrk", "-v"]),
    }


def report(args, targets, results, extra):
    out = []
    conns = args.connections
    out.append("| workload | target | rps @%d | rps range | p50 @%d (us) | p99 @%d (us) | "
               "rps @1 | p50 @1 (us) | p99 @1 (us) | target CPU per request (us) | errors |" %
               (conns, conns, conns))
    out.append("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for w in args.workloads:
        for t in targets:
            hi, one = results[w][t.name]["load"], results[w][t.name]["one"]
            out.append("| %s | %s | %s | %s-%s | %s | %s | %s | %s | %s | %.1f | %d |" % (
                w, t.name, fmt_rps(hi["rps"]), fmt_rps(hi["rps_min"]), fmt_rps(hi["rps_max"]),
                us(hi["p50"]), us(hi["p99"]), fmt_rps(one["rps"]), us(one["p50"]),
                us(one["p99"]), hi["cpu_us_per_req"], hi["errors"] + one["errors"]))
    out.append("")
    out.append("Against nginx (added p50 = p50 at 1 connection minus the upstream's own):")
    out.append("")
    out.append("| workload | target | rps vs nginx @%d | added p50 @1 (us) | nginx's added p50 @1 "
               "(us) | difference (us) |" % conns)
    out.append("|---|---|---:|---:|---:|---:|")
    verdicts = []
    for w in args.workloads:
        row = results[w]
        direct = row["upstream"]["one"]["p50"]
        ng_rps = row["nginx"]["load"]["rps"]
        ng_add = row["nginx"]["one"]["p50"] - direct
        for t in targets:
            if t.kind != "llmgate":
                continue
            ratio = row[t.name]["load"]["rps"] / ng_rps if ng_rps else 0
            add = row[t.name]["one"]["p50"] - direct
            out.append("| %s | %s | %.2fx | %s | %s | %+d |" % (
                w, t.name, ratio, us(add), us(ng_add), round(add - ng_add)))
            if t.name == "llmgate":
                verdicts.append(("rps", w, ratio >= RPS_TARGET, "%.2fx" % ratio))
                verdicts.append(("p50", w, add - ng_add <= P50_SLACK_US,
                                 "%+d us" % round(add - ng_add)))
    out.append("")
    out.append("RSS (nginx: master and workers added up). The peak (VmHWM) of a gateway "
               "with the auth plugin includes Argon2id's 64 MiB working memory while it "
               "hashed the bench user's password, given back at once; the target is judged "
               "on the RSS after the load (VmRSS):")
    out.append("")
    out.append("| process | peak RSS (MB) | RSS after the load (MB) |")
    out.append("|---|---:|---:|")
    for t in targets:
        out.append("| %s | %.1f | %.1f |" % (t.name, t.peak_rss_kb / 1024, t.end_rss_kb / 1024))
        if t.name == "llmgate":
            verdicts.append(("rss", "all", t.end_rss_kb < RSS_TARGET_KB,
                             "%.1f MB" % (t.end_rss_kb / 1024)))
    base = "llmgate"
    others = [t for t in targets if t.kind == "llmgate" and t.name != base]
    if others:
        out.append("")
        ledger_notes = []
        out.append("Plugin costs (the default llmgate row minus the variant; PostgreSQL's CPU is "
                   "that of its whole cluster during the run):")
        out.append("")
        out.append("| workload | variant | rps change @%d | variant's rps loss, round by round: "
                   "median (range) | p50 @1 change (us) | CPU per request change (us) | "
                   "PostgreSQL's CPU per request: variant (default) (us) |" % conns)
        out.append("|---|---|---:|---:|---:|---:|---:|")
        for w in args.workloads:
            b = results[w][base]
            for t in others:
                v = results[w][t.name]
                d_rps = (b["load"]["rps"] / v["load"]["rps"] - 1) * 100 if v["load"]["rps"] else 0
                loss = paired_loss(b["runs"]["load"], v["runs"]["load"])
                out.append("| %s | %s | %+.1f%% | %.1f%% (%.1f to %.1f) | %+d | %+.1f | "
                           "%.1f (%.1f) |" % (
                               w, t.name, d_rps, loss[0], loss[1], loss[2],
                               round(b["one"]["p50"] - v["one"]["p50"]),
                               b["load"]["cpu_us_per_req"] - v["load"]["cpu_us_per_req"],
                               v["load"]["pg_cpu_us_per_req"], b["load"]["pg_cpu_us_per_req"]))
                backlogs = [r["ledger_backlog"] for r in v["runs"]["load"]
                            if r.get("ledger_backlog")]
                if backlogs:
                    ledger_notes.append("%s, %s: at most %d records in memory and %d journal "
                                        "bytes" % (w, t.name, max(x[0] for x in backlogs),
                                                   max(x[1] for x in backlogs)))
                if t.name == "llmgate +usage":
                    verdicts.append(("usage", w, loss[0] <= USAGE_LOSS_MAX,
                                     "%.1f%%" % loss[0]))
        if ledger_notes:
            out.append("")
            out.append("The ledger's backlog when each run ended (rows not yet in PostgreSQL, "
                       "stored before the next run starts, so the run did not pay for them): "
                       + "; ".join(ledger_notes) + ".")
        out.append("")
        out.append("(A negative rps change is that many percent fewer requests with the default "
                   "plugins than in the variant. The rps loss compares each round's variant "
                   "with the default row measured just before it, on the same state of the "
                   "machine; medians of each row taken apart mix the rounds.)")
    out.append("")
    out.append("Targets:")
    out.append("")
    for key, w, ok, value in verdicts:
        doc = TARGETS_DOC[key] % conns if "%d" in TARGETS_DOC[key] else TARGETS_DOC[key]
        aim = ""
        if key == "rps":
            aim = " (aim 0.8x: %s)" % ("met" if float(value[:-1]) >= RPS_AIM else "not met")
        out.append("- %s [%s]: %s, %s%s" % (doc, w, value, "MET" if ok else "MISSED", aim))
    for text in extra:
        out.append("")
        out.append(text)
    return "\n".join(out)


# ---------------------------------------------------------------------------

def parse_args():
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--build", required=True, help="the release build directory")
    ap.add_argument("--stub-dir", required=True, help="where bench_anyone.so is")
    ap.add_argument("--without", action="append", default=[], metavar="PLUGIN",
                    help="also measure llmgate without this plugin of the default "
                         "(auth is replaced by an accept-anyone stub)")
    ap.add_argument("--with", dest="with_", action="append", default=[], metavar="PLUGIN",
                    help="also measure llmgate with this plugin added (empty settings)")
    ap.add_argument("--duration", type=int, default=10, help="seconds per measured run")
    ap.add_argument("--warmup", type=int, default=2, help="seconds of warm-up per target")
    ap.add_argument("--repeat", type=int, default=1,
                    help="runs per target and workload, taking turns; the tables show "
                         "medians (and the rps range)")
    ap.add_argument("--connections", type=int, default=50)
    ap.add_argument("--threads", type=int, default=2, help="wrk threads")
    ap.add_argument("--workloads", default="chat,stream,embeddings")
    ap.add_argument("--dim", type=int, default=256, help="length of the embedding vectors")
    ap.add_argument("--no-access-log", dest="access_log", action="store_false",
                    help="neither nginx nor llmgate write an access log line per request")
    ap.add_argument("--perf", metavar="WORKLOAD",
                    help="after the measurements, perf record llmgate under this workload")
    ap.add_argument("--perf-target", metavar="NAME", default="llmgate",
                    help="the row --perf records: llmgate (default), 'llmgate +usage', ...")
    ap.add_argument("--instructions", action="store_true",
                    help="after the measurements, count instructions per request of each "
                         "llmgate row under callgrind (valgrind): a plugin's cost that "
                         "wall-clock noise hides")
    ap.add_argument("--callgrind-dir", metavar="DIR",
                    help="with --instructions, keep each row's callgrind dump in DIR "
                         "(for callgrind_annotate)")
    ap.add_argument("--json", metavar="FILE", help="also write every figure to FILE")
    args = ap.parse_args()
    args.workloads = [w for w in args.workloads.split(",") if w]
    if args.repeat < 1 or args.duration < 1 or args.connections < 1 or args.threads < 1:
        ap.error("--repeat, --duration, --connections and --threads must be >= 1")
    for w in args.workloads + ([args.perf] if args.perf else []):
        if w not in WORKLOADS:
            ap.error("unknown workload %s (chat, stream, embeddings)" % w)
    return args


def main():
    args = parse_args()
    args.build = os.path.abspath(args.build)
    llmgate_bin = os.path.join(args.build, "core", "llmgate")
    plugin_path = os.path.abspath(args.stub_dir) + ":" + \
        os.path.abspath(os.path.join(args.build, "plugins", "all"))
    mock_bin = os.path.join(args.build, "tests", "mock_upstream", "mock-upstream")
    for path in (llmgate_bin, mock_bin):
        if not os.access(path, os.X_OK):
            raise BenchError("%s is missing: build %s first (bench/run.sh does)" %
                             (path, args.build))
    workdir = args.workdir = tempfile.mkdtemp(prefix="llmgate-bench-")
    rows = variants(args)
    started = datetime.datetime.now(datetime.timezone.utc)
    load_before = " ".join("%.2f" % x for x in os.getloadavg())
    pg = up = ng = None
    gateways = []
    try:
        sys.stderr.write("bench: starting PostgreSQL, the mock upstream, nginx and %d llmgate "
                         "instance(s)\n" % len(rows))
        pg = PgCluster().start()
        up = MockUpstream(models=[CHAT_MODEL, EMBED_MODEL], dim=args.dim,
                          binary=mock_bin).start()
        workers = os.cpu_count() or 2
        ng = Nginx("%s:%d" % (up.host, up.port), workers, args.access_log).start()
        targets = [Target("upstream", up.host, up.port, lambda: [up.proc.pid], "upstream"),
                   Target("nginx", "127.0.0.1", ng.port, ng.pids, "nginx")]
        for label, plugins in rows:
            gw = lgtest.Gateway(llmgate_config(up.url, plugins, args.access_log), pg=pg,
                                binary=llmgate_bin, env={"LLMGATE_PLUGIN_PATH": plugin_path})
            gw.start()
            gateways.append(gw)
            targets.append(Target(label, gw.host, gw.port,
                                  lambda gw=gw: [gw.proc.pid], "llmgate"))
        # Every row shares the database, so one user's key serves them all
        # (the accept-anyone stub of -auth takes any key).
        key = user_key(next(gw for gw, (_, p) in zip(gateways, rows) if "auth" in p))

        scripts = {}
        for w, (path, body) in WORKLOADS.items():
            scripts[w] = os.path.join(workdir, w + ".lua")
            with open(scripts[w], "w") as f:
                f.write(WRK_SCRIPT % {"path": path, "body": body, "key": key})
        for w in args.workloads:
            for t in targets:
                preflight(t, w, args.dim, key)

        results = {}
        for w in args.workloads:
            runs = {t.name: {"load": [], "one": []} for t in targets}
            # Targets take turns, so that a change in the machine's load
            # during the run falls on all of them alike.
            for rep in range(args.repeat):
                for t in targets:
                    sys.stderr.write("bench: %-10s %-16s %d/%d" % (w, t.name, rep + 1,
                                                                  args.repeat))
                    sys.stderr.flush()
                    if rep == 0 and args.warmup > 0:
                        run_wrk(t, scripts[w], args.connections, args.threads, args.warmup)
                        if t.kind == "llmgate":
                            settle_ledger(t)
                    load = measure(t, scripts[w], args.connections, args.threads,
                                   args.duration, pg.data)
                    load["ledger_backlog"] = settle_ledger(t) if t.kind == "llmgate" else None
                    one = measure(t, scripts[w], 1, 1, args.duration, pg.data)
                    if t.kind == "llmgate":
                        settle_ledger(t)
                    runs[t.name]["load"].append(load)
                    runs[t.name]["one"].append(one)
                    sys.stderr.write(" %8.0f rps, p50 @1 %5d us, PostgreSQL %5.1f us/request%s\n"
                                     % (load["rps"], one["p50"], load["pg_cpu_us_per_req"],
                                        backlog_text(load["ledger_backlog"])))
            results[w] = {name: {"load": median_run(r["load"]), "one": median_run(r["one"]),
                                 "runs": r} for name, r in runs.items()}
        for t in targets:
            t.sample_rss()

        extra = []
        instr = None
        if args.instructions:
            instr = count_instructions(args, rows, up, pg, scripts, llmgate_bin, plugin_path,
                                       workdir)
            extra.append(instructions_report(args, instr, results))
        if args.perf:
            sys.stderr.write("bench: perf record of llmgate under %s\n" % args.perf)
            target = next((t for t in targets if t.name == args.perf_target), None)
            if target is None:
                raise BenchError("--perf-target: no row named %r" % args.perf_target)
            res, text = profile(target, scripts[args.perf], args, workdir)
            extra.append("perf (" + target.name + ", %s, %d connections, %.0f rps while recorded), self "
                         "time by shared object and symbol:\n\n```\n%s\n```" %
                         (args.perf, args.connections, res["rps"], text))

        versions = tool_versions(llmgate_bin)
        head = [
            "Date: %s" % started.strftime("%Y-%m-%d %H:%M UTC"),
            "Command: %s" % command_line(),
            "Machine: %s" % machine(),
            "Source: %s" % source_revision(),
            "Versions: %s; %s; %s" % (versions["llmgate"], versions["nginx"], versions["wrk"]),
            "Load: wrk %d threads, %d connections, %d s after %d s of warm-up; then 1 "
            "connection for %d s; %d run(s) of each, targets taking turns, medians shown. "
            "Access logs: %s. Embedding vectors: %d floats." %
            (args.threads, args.connections, args.duration, args.warmup, args.duration,
             args.repeat, "on (nginx and llmgate)" if args.access_log else "off", args.dim),
            "Load average before the run: %s" % load_before,
            "",
        ]
        text = "\n".join(head) + report(args, targets, results, extra)
        print(text)
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"date": started.isoformat(), "machine": machine(),
                           "versions": versions, "args": {k: v for k, v in vars(args).items()},
                           "peak_rss_kb": {t.name: t.peak_rss_kb for t in targets},
                           "end_rss_kb": {t.name: t.end_rss_kb for t in targets},
                           "results": results, "instructions": instr}, f, indent=1)
        for gw in gateways:
            if not gw.running():
                raise BenchError("llmgate exited during the run:\n" + gw.log()[-4000:])
        return 0
    finally:
        for gw in gateways:
            gw.close()
        if ng:
            ng.stop()
        if up:
            up.close()
        if pg:
            pg.destroy()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as e:
        sys.stderr.write("bench: %s\n" % e)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.stderr.write("bench: interrupted\n")
        sys.exit(130)
