#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""The Debian packages as an administrator meets them.

Builds llmgate, llmgate-dev and llmgate-plugin-rag from a copy of the tree
(packaging/debian/build-debs.sh), runs lintian (no error allowed), installs
them into this machine, then, without systemd, runs the unit's ExecStart as
the packaged user with the unit's environment file against a throwaway
PostgreSQL: /health, a chat call to mock-chat with the generated MASTER_KEY.
It builds examples/hello from llmgate-dev's copy with the installed SDK
alone (pkg-config llmgate-plugin-1), installs it into the plugin directory
and calls its route in a second run. Last, `remove` keeps the user, the
state and the configuration, and `purge` takes everything away.

Needs root (it installs packages and runs as another user): exit 77
(skipped) otherwise. Whatever happens, the packages, the example plugin,
the database and the temporary files are removed at the end."""
import glob
import grp
import os
import pwd
import re
import shlex
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "lib"))
import lgtest  # noqa: E402
from pgcluster import PgCluster  # noqa: E402

SOURCE_ROOT = os.environ.get("LLMGATE_SOURCE_ROOT") or os.path.join(HERE, "..", "..")
PACKAGES = ["llmgate", "llmgate-dev", "llmgate-plugin-rag"]
USER = "llmgate"
STATE_DIR = "/var/lib/llmgate"
CONF_DIR = "/etc/llmgate"
CONFIG = CONF_DIR + "/config.yml"
ENV_FILE = CONF_DIR + "/environment"
TOOLS = ["dpkg-buildpackage", "dh", "lintian", "apt-get", "make", "cc", "pkg-config",
         "setpriv"]
START_TIMEOUT = 60
APT_ENV = dict(os.environ, DEBIAN_FRONTEND="noninteractive")


class Interrupted(Exception):
    """SIGTERM (meson's timeout): unwind so that the clean-up still runs."""


def on_sigterm(signum, frame):
    raise Interrupted("terminated")


def run(cmd, **kw):
    """Runs @cmd; its output, and an AssertionError with it when it fails."""
    kw.setdefault("stdout", subprocess.PIPE)
    kw.setdefault("stderr", subprocess.STDOUT)
    r = subprocess.run(cmd, text=True, **kw)
    if r.returncode != 0:
        raise AssertionError("%s: exit %d\n%s" % (" ".join(cmd), r.returncode,
                                                  (r.stdout or "")[-6000:]))
    return r.stdout


def package_status(name):
    """"installed", "config-files", ... or "not-installed"."""
    r = subprocess.run(["dpkg-query", "-W", "-f=${db:Status-Status}", name],
                       stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    return r.stdout.strip() if r.returncode == 0 and r.stdout.strip() else "not-installed"


def user_exists(name):
    try:
        pwd.getpwnam(name)
        return True
    except KeyError:
        return False


def group_exists(name):
    try:
        grp.getgrnam(name)
        return True
    except KeyError:
        return False


def read_env_file(path):
    """The variables of a systemd EnvironmentFile (KEY=VALUE lines, # and ;
    comments, optional quotes)."""
    env = {}
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line or line[0] in "#;":
                continue
            key, sep, value = line.partition("=")
            if not sep:
                continue
            value = value.strip()
            if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
                value = value[1:-1]
            env[key.strip()] = value
    return env


def read_unit(path):
    """The [Service] section of a unit file: {key: [values]}."""
    service = {}
    section = None
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line or line[0] in "#;":
                continue
            if line.startswith("["):
                section = line
                continue
            if section == "[Service]" and "=" in line:
                key, _, value = line.partition("=")
                service.setdefault(key.strip(), []).append(value.strip())
    return service


class PackagedService:
    """The unit's ExecStart run the way systemd would: as its User and Group,
    with its EnvironmentFile and Environment, in its working directory."""

    def __init__(self, unit_path, logdir):
        self.unit = read_unit(unit_path)
        self.logdir = logdir
        self.port = None
        self.proc = None
        self.runs = 0
        self.log_path = None
        exec_start = self.unit.get("ExecStart", [""])[-1].lstrip("-@:+!")
        if not exec_start or "$" in exec_start:
            raise AssertionError("unexpected ExecStart in %s: %r" % (unit_path, exec_start))
        self.argv = shlex.split(exec_start)

    def environment(self):
        user = pwd.getpwnam(self.unit.get("User", ["root"])[-1])
        env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
               "LANG": "C.UTF-8", "HOME": user.pw_dir, "USER": user.pw_name,
               "LOGNAME": user.pw_name, "SHELL": user.pw_shell}
        for state in self.unit.get("StateDirectory", []):
            env["STATE_DIRECTORY"] = ":".join("/var/lib/" + d for d in state.split())
        for line in self.unit.get("Environment", []):
            for item in shlex.split(line):
                key, _, value = item.partition("=")
                env[key] = value
        for path in self.unit.get("EnvironmentFile", []):
            optional = path.startswith("-")
            path = path.lstrip("-")
            if optional and not os.path.exists(path):
                continue
            env.update(read_env_file(path))
        return env

    def command(self, extra=()):
        user = self.unit.get("User", ["root"])[-1]
        group = self.unit.get("Group", [user])[-1]
        cmd = ["setpriv", "--reuid=" + user, "--regid=" + group, "--init-groups"]
        if self.unit.get("NoNewPrivileges", ["no"])[-1] in ("yes", "true", "1", "on"):
            cmd.append("--no-new-privs")
        return cmd + ["--"] + self.argv + list(extra)

    def cwd(self):
        return self.unit.get("WorkingDirectory", ["/"])[-1].lstrip("-")

    def umask(self):
        return int(self.unit.get("UMask", ["0022"])[-1], 8)

    def run_once(self, *args):
        """A one-shot command (migrate status ...) as the service user."""
        return run(self.command(args), env=self.environment(), cwd=self.cwd(),
                   umask=self.umask(), stdin=subprocess.DEVNULL, timeout=120)

    def start(self):
        self.runs += 1
        self.log_path = os.path.join(self.logdir, "llmgate-%d.log" % self.runs)
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(self.command(), env=self.environment(), cwd=self.cwd(),
                                         umask=self.umask(), stdin=subprocess.DEVNULL,
                                         stdout=log, stderr=log)
        self.port = self.wait_listening()
        self.wait_for("/health")
        self.wait_for("/ready")

    def log(self, tail=6000):
        """The server's output (its last @tail characters; None: all)."""
        with open(self.log_path, errors="replace") as f:
            text = f.read()
        return text if tail is None else text[-tail:]

    def wait_listening(self):
        """The port llmgate announces (it listens on port 0, which the kernel picks)."""
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            m = lgtest.LISTEN_RE.search(self.log(tail=None))
            if m:
                return int(m.group(2))
            if self.proc.poll() is not None:
                raise AssertionError("llmgate exited with %d before listening\n%s" %
                                     (self.proc.returncode, self.log()))
            time.sleep(0.1)
        raise AssertionError("llmgate did not listen within %d s\n%s" %
                             (START_TIMEOUT, self.log()))

    def wait_for(self, path):
        deadline = time.monotonic() + START_TIMEOUT
        last = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError("llmgate exited with %d before %s answered\n%s" %
                                     (self.proc.returncode, path, self.log()))
            try:
                r = self.request("GET", path, timeout=2)
                if r.status == 200:
                    return r
                last = r
            except OSError as e:
                last = e
            time.sleep(0.2)
        raise AssertionError("GET %s: no 200 within %d s (last: %r)\n%s" %
                             (path, START_TIMEOUT, last, self.log()))

    def request(self, method, path, body=None, headers=None, timeout=10):
        return lgtest.http_request("127.0.0.1", self.port, method, path, body, headers,
                                   timeout=timeout)

    def stop(self):
        """SIGTERM, as systemctl stop sends; the exit status."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError("llmgate did not stop within 60 s of SIGTERM\n" + self.log())


class DebianPackages(unittest.TestCase):
    def setUp(self):
        missing = [t for t in TOOLS if shutil.which(t) is None]
        self.assertEqual(missing, [], "missing tools: run scripts/install-deps.sh")
        present = [p for p in PACKAGES if package_status(p) != "not-installed"]
        self.assertEqual(present, [], "llmgate packages are already on this machine; this test "
                         "installs and purges them: `apt-get purge %s` first" % " ".join(PACKAGES))
        self.assertFalse(user_exists(USER), "a user %r exists and purge would delete it" % USER)
        self.tmp = tempfile.mkdtemp(prefix="llmgate-pkgtest-")
        self.pg = None
        self.service = None
        self.extra_plugin = None
        self.installed_files = []
        signal.signal(signal.SIGTERM, on_sigterm)

    def tearDown(self):
        """Leaves the machine as it was, whatever failed."""
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        try:
            if self.service is not None:
                try:
                    self.service.stop()
                except AssertionError as e:
                    sys.stderr.write("%s\n" % e)
            if self.extra_plugin and os.path.exists(self.extra_plugin):
                os.unlink(self.extra_plugin)
            left = [p for p in PACKAGES if package_status(p) != "not-installed"]
            if left:
                subprocess.run(["dpkg", "--purge"] + left, env=APT_ENV, stdout=subprocess.DEVNULL)
            # The postrm removes them; this is for a postinst that failed half way.
            if user_exists(USER):
                subprocess.run(["userdel", USER])
            if group_exists(USER):
                subprocess.run(["groupdel", USER])
            shutil.rmtree(STATE_DIR, ignore_errors=True)
            if self.pg is not None:
                self.pg.destroy()
        finally:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            shutil.rmtree(self.tmp, ignore_errors=True)

    # ---- steps ----

    def build(self):
        out = os.path.join(self.tmp, "debs")
        log = os.path.join(self.tmp, "build.log")
        env = dict(os.environ, DEB_BUILD_OPTIONS="nocheck", TMPDIR=self.tmp)
        started = time.monotonic()
        with open(log, "w") as f:
            r = subprocess.run([os.path.join(SOURCE_ROOT, "packaging", "debian", "build-debs.sh"),
                                out], env=env, stdout=f, stderr=subprocess.STDOUT)
        if r.returncode != 0:
            with open(log, errors="replace") as f:
                self.fail("the package build failed:\n" + f.read()[-8000:])
        print("built the packages in %.0f s" % (time.monotonic() - started), flush=True)
        debs = {}
        for p in PACKAGES:
            found = glob.glob(os.path.join(out, "%s_*.deb" % p))
            self.assertEqual(len(found), 1, (p, os.listdir(out)))
            debs[p] = found[0]
        changes = glob.glob(os.path.join(out, "*.changes"))
        self.assertEqual(len(changes), 1, os.listdir(out))
        return debs, changes[0]

    def lintian(self, changes):
        r = subprocess.run(["lintian", "--display-info", changes], stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True)
        print("lintian:\n" + r.stdout, flush=True)
        errors = [line for line in r.stdout.splitlines() if line.startswith("E:")]
        self.assertEqual(errors, [], "lintian reports errors")
        self.assertEqual(r.returncode, 0, r.stdout)

    def check_control(self, debs):
        def field(p, name):
            return run(["dpkg-deb", "-f", debs[p], name]).strip()

        depends = field("llmgate", "Depends")
        for lib in ("libxml2", "poppler", "glib"):
            self.assertNotIn(lib, depends, "llmgate must not pull in the RAG parsers")
        self.assertIn("adduser", depends)
        self.assertRegex(field("llmgate", "Provides"), r"\bllmgate-abi-1 \(= 1\.\d+\)")
        rag = field("llmgate-plugin-rag", "Depends")
        self.assertIn("libxml2", rag)
        self.assertIn("libpoppler-glib", rag)
        self.assertIn("llmgate (= %s)" % field("llmgate", "Version"), rag)

        def files(p):
            return [line.split()[-1] for line in run(["dpkg-deb", "-c", debs[p]]).splitlines()]

        # The service's life across upgrade and remove, as the maintainer
        # scripts will run it under systemd (not running here).
        scripts = os.path.join(self.tmp, "control")
        run(["dpkg-deb", "-e", debs["llmgate"], scripts])

        def script(name):
            path = os.path.join(scripts, name)
            return open(path).read() if os.path.exists(path) else ""
        self.assertIn("try-restart", script("postinst"), "a running service restarts on upgrade")
        self.assertNotIn("deb-systemd-invoke stop", script("preinst"),
                         "an upgrade must not stop the service before it")
        self.assertRegex(script("prerm"), r'"\$1" = remove.*\n.*deb-systemd-invoke stop llmgate',
                         "remove stops the service")
        self.assertIn("deb-systemd-helper", script("postinst"), "the unit is enabled")

        core = files("llmgate")
        for path in ("./usr/bin/llmgate", "./etc/llmgate/config.yml",
                     "./lib/systemd/system/llmgate.service",
                     "./usr/share/man/man8/llmgate.8.gz", "./usr/share/man/man5/llmgate.yml.5.gz"):
            self.assertIn(path, core)
        plugins = sorted(os.path.basename(f) for f in core if "/llmgate-1/plugins/" in f
                         and f.endswith(".so"))
        self.assertEqual(plugins, ["albert.so", "auth.so", "mistral.so", "mock.so", "openai.so",
                                   "tei.so", "usage.so", "vllm.so"])
        self.assertEqual([os.path.basename(f) for f in files("llmgate-plugin-rag")
                          if f.endswith(".so")], ["rag.so"])
        dev = files("llmgate-dev")
        for path in ("./usr/bin/llmgate-sql2c", "./usr/include/llmgate-1/llmgate/host.h",
                     "./usr/share/doc/llmgate-dev/examples/hello/Makefile"):
            self.assertIn(path, dev)
        self.assertTrue(any(f.endswith("/pkgconfig/llmgate-plugin-1.pc") for f in dev), dev)

    def install(self, debs):
        run(["apt-get", "install", "-y", "--no-install-recommends"] +
            [debs[p] for p in PACKAGES], env=APT_ENV)
        for p in PACKAGES:
            self.assertEqual(package_status(p), "installed", p)
            self.installed_files += [f for f in run(["dpkg-query", "-L", p]).splitlines()
                                     if os.path.isfile(f)]

    def check_installed(self):
        user = pwd.getpwnam(USER)
        self.assertEqual(user.pw_dir, STATE_DIR)
        self.assertIn(user.pw_shell, ("/usr/sbin/nologin", "/bin/false"))
        self.assertLess(user.pw_uid, 1000, "a system user")
        gid = grp.getgrnam(USER).gr_gid
        self.assertEqual(user.pw_gid, gid)

        conffiles = run(["dpkg-query", "-W", "-f=${Conffiles}", "llmgate"])
        self.assertIn(" %s " % CONFIG, conffiles)
        self.assertNotIn(ENV_FILE, conffiles, "generated, not a conffile")

        st = os.stat(ENV_FILE)
        self.assertEqual((stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid), (0o640, 0, gid))
        secrets = read_env_file(ENV_FILE)
        self.assertRegex(secrets.get("MASTER_KEY", ""), r"^[0-9a-f]{64}$")
        self.assertRegex(secrets.get("SECRET_KEY", ""), r"^[0-9a-f]{64}$")
        self.assertRegex(secrets.get("LLMGATE_ADMIN_PASSWORD", ""), r"^[0-9a-f]{32}$")
        self.assertNotEqual(secrets["MASTER_KEY"], secrets["SECRET_KEY"])

        st = os.stat(STATE_DIR)
        self.assertEqual((st.st_uid, st.st_gid), (user.pw_uid, gid))
        self.assertEqual(stat.S_IMODE(st.st_mode) & 0o007, 0, "not readable by others")
        return secrets

    def configure(self):
        """What an administrator does: a database for the llmgate role, and
        its URL in /etc/llmgate/environment; here also a port the kernel picks
        instead of the default 8080, which something else may be using."""
        with open(CONFIG) as f:
            self.assertIn("127.0.0.1:8080", f.read(), "the documented default address")
        self.pg = PgCluster()
        self.pg.start()
        self.pg.psql("CREATE ROLE llmgate LOGIN PASSWORD 'packaged-secret'")
        self.pg.psql("CREATE DATABASE llmgate OWNER llmgate")
        with open(ENV_FILE, "a") as f:
            f.write("LLMGATE_DATABASE_URL=postgresql://llmgate:packaged-secret@127.0.0.1:%d/"
                    "llmgate\n" % self.pg.port)
            f.write("LLMGATE_LISTEN=127.0.0.1:0\n")

    def enable_hello(self):
        with open(CONFIG) as f:
            lines = f.read().splitlines(True)
        at = next(i for i, line in enumerate(lines) if re.match(r"^plugins:\s*(#.*)?$", line))
        nxt = next(line for line in lines[at + 1:] if line.strip() and
                   not line.lstrip().startswith("#"))
        indent = nxt[:len(nxt) - len(nxt.lstrip())]
        self.assertTrue(indent, "plugins: is a block mapping")
        lines.insert(at + 1, indent + "hello: {greeting: Bonjour}\n")
        with open(CONFIG, "w") as f:
            f.writelines(lines)

    def unit_path(self):
        units = [f for f in self.installed_files if f.endswith("/llmgate.service")]
        self.assertEqual(len(units), 1, units)
        return units[0]

    def serve_chat(self, secrets):
        svc = self.service
        master_key = secrets["MASTER_KEY"]
        svc.start()
        r = svc.request("GET", "/health")
        self.assertEqual(r.status, 200, r)
        chat = {"model": "mock-chat", "messages": [{"role": "user", "content": "Hello"}]}
        r = svc.request("POST", "/v1/chat/completions", chat,
                        headers={"Authorization": "Bearer " + master_key})
        self.assertEqual(r.status, 200, r)
        content = r.json()["choices"][0]["message"]["content"]
        self.assertTrue(isinstance(content, str) and content, r)
        r = svc.request("POST", "/v1/chat/completions", chat,
                        headers={"Authorization": "Bearer not-the-master-key"})
        self.assertEqual(r.status, 401, r)
        # The bootstrap administrator has the generated password, not the default.
        r = svc.request("POST", "/v1/auth/login",
                        {"email": "admin", "password": secrets["LLMGATE_ADMIN_PASSWORD"]})
        self.assertEqual(r.status, 200, r)
        r = svc.request("POST", "/v1/auth/login", {"email": "admin", "password": "changeme"})
        self.assertEqual(r.status, 401, r)
        journal = os.stat(os.path.join(STATE_DIR, "journal"))
        self.assertEqual(journal.st_uid, pwd.getpwnam(USER).pw_uid)
        self.assertEqual(svc.stop(), 0, svc.log())

    def build_hello(self):
        """examples/hello from llmgate-dev, with the installed SDK alone."""
        src = os.path.join(self.tmp, "hello")
        shutil.copytree("/usr/share/doc/llmgate-dev/examples/hello", src)
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("PKG_CONFIG", "LLMGATE_", "CFLAGS", "LDFLAGS"))}
        plugindir = run(["pkg-config", "--variable=plugindir", "llmgate-plugin-1"],
                        env=env, stderr=subprocess.PIPE).strip()
        self.assertRegex(plugindir, r"^/usr/lib/[^/]+/llmgate-1/plugins$")
        self.extra_plugin = os.path.join(plugindir, "hello.so")
        run(["make", "-C", src, "install"], env=env)
        self.assertTrue(os.path.isfile(self.extra_plugin))

    def serve_hello(self):
        svc = self.service
        svc.start()
        r = svc.request("GET", "/hello/world")
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.json(), {"greeting": "Bonjour", "name": "world", "visits": 1})
        self.assertEqual(svc.stop(), 0, svc.log())
        status = svc.run_once("migrate", "status")
        self.assertRegex(status, r"(?m)^hello 0001 hello_visit applied ", status)

    def reinstall(self, debs):
        """An upgrade's path through the maintainer scripts (configure with the
        old version): the generated secrets and the edited conffile stay."""
        with open(ENV_FILE) as f:
            secrets = f.read()
        with open(CONFIG) as f:
            config = f.read()
        run(["dpkg", "-i", debs["llmgate"]], env=APT_ENV)
        with open(ENV_FILE) as f:
            self.assertEqual(f.read(), secrets)
        with open(CONFIG) as f:
            self.assertEqual(f.read(), config)

    def remove_then_purge(self):
        os.unlink(self.extra_plugin)
        run(["apt-get", "remove", "-y"] + PACKAGES, env=APT_ENV)
        self.assertEqual(package_status("llmgate"), "config-files")
        self.assertFalse(os.path.exists("/usr/bin/llmgate"))
        for path in (CONFIG, ENV_FILE, STATE_DIR):
            self.assertTrue(os.path.exists(path), "remove keeps " + path)
        self.assertTrue(user_exists(USER), "remove keeps the user")

        # Only llmgate keeps its conffiles after remove: apt no longer knows
        # the others, dpkg purges what is left.
        run(["dpkg", "--purge"] + PACKAGES, env=APT_ENV)
        for p in PACKAGES:
            self.assertEqual(package_status(p), "not-installed", p)
        self.assertFalse(user_exists(USER), "purge removes the user")
        self.assertFalse(group_exists(USER), "purge removes the group")
        for path in (STATE_DIR, CONF_DIR):
            self.assertFalse(os.path.exists(path), "purge removes " + path)
        left = [f for f in self.installed_files if os.path.lexists(f)]
        self.assertEqual(left, [], "files left after purge")

    # ---- the test ----

    def test_build_install_run_purge(self):
        started = time.monotonic()
        debs, changes = self.build()
        self.lintian(changes)
        self.check_control(debs)
        self.install(debs)
        secrets = self.check_installed()
        self.configure()
        self.service = PackagedService(self.unit_path(), self.tmp)
        self.serve_chat(secrets)
        self.build_hello()
        self.enable_hello()
        self.serve_hello()
        self.service = None
        self.reinstall(debs)
        self.remove_then_purge()
        print("packaging test: %.0f s" % (time.monotonic() - started), flush=True)


if __name__ == "__main__":
    if os.geteuid() != 0:
        print("skipped: the packaging test installs packages and runs llmgate as its system "
              "user, so it needs root (CI runs as root)")
        sys.exit(77)
    lgtest.main()
