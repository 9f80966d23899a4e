# SPDX-License-Identifier: Apache-2.0
"""A throwaway PostgreSQL cluster for one test: initdb into a temporary
directory, start it on a free loopback port, remove it afterwards.

As root (CI, a fresh machine) the server runs as the `postgres` system user,
since PostgreSQL refuses to run as root."""
import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time


def _bindir():
    env = os.environ.get("LG_PG_BINDIR")
    if env:
        return env
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
    if not found:
        raise RuntimeError("PostgreSQL server binaries not found (apt-get install postgresql)")
    return os.path.dirname(found[-1])


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PgCluster:
    def __init__(self, password="pgtest-secret"):
        self.bindir = _bindir()
        self.password = password
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="llmgate-pg-")
        self.data = os.path.join(self.dir, "data")
        self.log = os.path.join(self.dir, "postgres.log")
        self.as_root = os.geteuid() == 0
        if self.as_root:
            shutil.chown(self.dir, "postgres", "postgres")
            os.chmod(self.dir, 0o755)

    # -- running server binaries as the right user --
    def _run(self, args, **kw):
        cmd = [os.path.join(self.bindir, args[0])] + args[1:]
        if self.as_root:
            cmd = ["runuser", "-u", "postgres", "--"] + cmd
        return subprocess.run(cmd, check=True, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, **kw)

    def start(self):
        pwfile = os.path.join(self.dir, "pw")
        with open(pwfile, "w") as f:
            f.write(self.password + "\n")
        if self.as_root:
            shutil.chown(pwfile, "postgres", "postgres")
        self._run(["initdb", "-D", self.data, "-U", "postgres", "--auth=scram-sha-256",
                   "--pwfile=" + pwfile, "-E", "UTF8", "--no-sync"])
        os.unlink(pwfile)
        with open(os.path.join(self.data, "postgresql.conf"), "a") as f:
            f.write("listen_addresses = '127.0.0.1'\nport = %d\n" % self.port)
            f.write("unix_socket_directories = '%s'\n" % self.dir)
            f.write("fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n")
            f.write("log_min_error_statement = error\n")
        self.pg_ctl_start()
        return self

    def pg_ctl_start(self):
        self._run(["pg_ctl", "-D", self.data, "-l", self.log, "-w", "-t", "30", "start"])

    def stop(self, mode="fast"):
        self._run(["pg_ctl", "-D", self.data, "-m", mode, "-w", "stop"])

    def running(self):
        r = subprocess.run([os.path.join(self.bindir, "pg_isready"), "-h", "127.0.0.1",
                            "-p", str(self.port)], stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
        return r.returncode == 0

    def url(self, dbname="postgres", scheme="postgresql"):
        return "%s://postgres:%s@127.0.0.1:%d/%s" % (scheme, self.password, self.port, dbname)

    def psql(self, sql, dbname="postgres"):
        """Runs SQL with psql; returns the rows as lists of strings."""
        env = dict(os.environ, PGPASSWORD=self.password)
        out = subprocess.run(["psql", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres",
                              "-d", dbname, "-X", "-q", "-A", "-t", "-F", "\t",
                              "-v", "ON_ERROR_STOP=1", "-c", sql],
                             check=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             env=env, text=True)
        return [line.split("\t") for line in out.stdout.splitlines() if line != ""]

    def server_log(self):
        try:
            with open(self.log, errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def destroy(self):
        try:
            if os.path.exists(os.path.join(self.data, "postmaster.pid")):
                self.stop("immediate")
        except subprocess.CalledProcessError:
            pass
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.destroy()
        return False
