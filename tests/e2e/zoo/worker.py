# SPDX-License-Identifier: Apache-2.0
"""One zoo worker: a process with one user's credentials (or root's) that runs
a seeded random sequence of Engine API calls through random client stacks and
connection patterns, and reports every object it made (with the uid of the
process that sent the create) to the test over a pipe.

Protocol. Worker -> test: JSON lines on `report_fd` (each one write, < 4 KiB,
so children that share the pipe never interleave):
  {"ev": "ready"}                                   pre-agent connections open
  {"ev": "made", "kind", "id", "uid", "stack", "pattern", "op"}
  {"ev": "removed", "kind", "id"}
  {"ev": "op", "op", "stack", "pattern"}            one per operation
  {"ev": "unexpected", "op", "stack", "pattern", "status", "detail"}
  {"ev": "error", "op", "stack", "pattern", "detail"}
  {"ev": "done", "creates"}
Test -> worker: lines on `ctl_fd`: "go", "settled KIND ID" (the test has
judged the object: the worker may remove it), "bye".
"""
import base64
import json
import os
import random
import select
import signal
import threading
import time
import traceback
import urllib.parse

from . import clients, proc, rawhttp
from .clients import ClientError
from .rawhttp import Conn

BASE = "zoo-base:1"
RAW_PATTERNS = ["keepalive", "close", "pipeline", "halfclose", "noeof", "fork-child", "threads", "pre-agent"]
PAD_BYTES = 5000  # a request head longer than the probe's 4096-byte capture prefix


class Unexpected(Exception):
    pass


def enc(resps):
    return [[s, base64.b64encode(b).decode()] for s, b in resps]


def dec(data):
    return [(s, base64.b64decode(b)) for s, b in data]


def padded_ping():
    return ("GET /_ping HTTP/1.1\r\nHost: docker\r\nX-Zoo-Pad: %s\r\n\r\n" % ("p" * PAD_BYTES)).encode()


become = proc.become


class Worker:
    def __init__(self, idx, name, uid, group_gid, sock, seed, report_fd, ctl_fd, quota, home, users,
                 clis, pydocker, n_pre=3, without=()):
        self.idx, self.name, self.uid, self.gid = idx, name, uid, group_gid
        self.sock, self.seed, self.report_fd, self.ctl_fd = sock, seed, report_fd, ctl_fd
        self.quota, self.home, self.users = quota, home, users  # users: {name: uid} the root worker setuids to
        self.rnd = random.Random(seed)
        self.clis = clis            # [(stack name, binary)]
        self.has_pydocker = pydocker
        self.n_pre = n_pre
        self.without = set(without)  # operations left out (op_<name> -> name)
        self.creates = 0
        self.n = 0
        self.ka = None              # the raw keep-alive connection
        self.pre = []               # connections opened before the agent started
        self.hc = None
        self.curl = None
        self.pyd = None
        self.ctl_buf = b""
        self.removable = {}         # id -> kind: judged by the test, ours to remove
        self.containers = []        # our containers that exist (for commit, logs)
        self.images = []            # our images that exist (for tag)
        self.sleeper = None         # our running container (exec, rm without force)
        self.retired = set()        # sleepers to remove once judged
        self.errors = 0
        self.rm_tries = {}

    # -- reporting ---------------------------------------------------------------
    def emit(self, **ev):
        ev["w"] = self.idx
        line = json.dumps(ev)
        if len(line) > 3800:
            ev["detail"] = str(ev.get("detail", ""))[:1000]
            line = json.dumps(ev)
        os.write(self.report_fd, (line + "\n").encode())

    def made(self, kind, oid, stack, pattern, op, uid=None):
        self.emit(ev="made", kind=kind, id=oid, uid=self.uid if uid is None else uid, stack=stack,
                  pattern=pattern, op=op)
        if kind == "container":
            self.containers.append(oid)
        elif kind == "image":
            self.images.append(oid)

    def expect(self, status, codes, op, stack, pattern, body=b""):
        if status == 500 and pattern.endswith("halfclose") and b"context canceled" in body:
            # Go's server cancels a request's context when it reads EOF from
            # the client: dockerd's honest answer to a half-closed request.
            self.emit(ev="canceled", op=op, stack=stack, pattern=pattern)
            return False
        if status not in codes:
            self.emit(ev="unexpected", op=op, stack=stack, pattern=pattern, status=status,
                      detail=body[:300].decode(errors="replace"))
            return False
        return True

    def name_(self, what):
        self.n += 1
        return "zoo-%s-%d-%d" % (what, self.idx, self.n)

    # -- control pipe ----------------------------------------------------------------
    def poll_ctl(self, block=False):
        """Reads what the test sent; returns False on "bye" or EOF."""
        while True:
            r, _, _ = select.select([self.ctl_fd], [], [], None if block else 0)
            if not r:
                return True
            d = os.read(self.ctl_fd, 65536)
            if not d:
                return False
            self.ctl_buf += d
            while b"\n" in self.ctl_buf:
                line, self.ctl_buf = self.ctl_buf.split(b"\n", 1)
                parts = line.decode().split()
                if not parts:
                    continue
                if parts[0] == "bye":
                    return False
                if parts[0] == "settled":
                    self.removable[parts[2]] = parts[1]
            if block:
                return True

    # -- the raw-socket stack with its connection patterns ------------------------------
    def _conn(self):
        return Conn(self.sock)

    def _drop_ka(self):
        if self.ka:
            self.ka.close()
            self.ka = None

    def _seq(self, conn, reqs, close_last=False):
        out = []
        for i, (m, t, body, ctype) in enumerate(reqs):
            conn.send(rawhttp.request(m, t, body, close=close_last and i == len(reqs) - 1, content_type=ctype))
            r = conn.read_response(m)
            out.append((r.status, r.body))
            if r.headers.get("connection", "").lower() == "close":
                break
        return out

    def raw(self, reqs, pattern):
        """reqs: [(method, target, body, content type)] -> [(status, body)]."""
        if pattern == "pre-agent" and not self.pre:
            pattern = "keepalive"
        if pattern == "keepalive":
            if self.ka is None:
                self.ka = self._conn()
            try:
                out = self._seq(self.ka, reqs)
            except (OSError, ConnectionError):
                self._drop_ka()
                raise
            if len(out) < len(reqs) or self.rnd.random() < 0.15:
                self._drop_ka()  # closed after its last reply: nothing left unread
            return out
        if pattern == "pre-agent":
            c = self.pre.pop()
            try:
                return self._seq(c, reqs)
            finally:
                c.close()
        if pattern == "close":
            out = []
            for m, t, body, ctype in reqs:
                c = self._conn()
                try:
                    r = c.call(m, t, body, close=True, content_type=ctype)
                    c.read_stream()
                finally:
                    c.close()
                out.append((r.status, r.body))
            return out
        if pattern in ("pipeline", "halfclose"):
            c = self._conn()
            try:
                data = b"".join(rawhttp.request(m, t, b, close=(i == len(reqs) - 1), content_type=ct)
                                for i, (m, t, b, ct) in enumerate(reqs))
                c.send(data)
                if pattern == "halfclose":
                    c.shut_wr()
                out = []
                for m, _, _, _ in reqs:
                    r = c.read_response(m)
                    out.append((r.status, r.body))
                c.read_stream()
                return out
            finally:
                c.close()
        if pattern == "noeof":
            # Replies read, then closed while dockerd still holds the connection
            # open (no Connection: close) or before reading its EOF.
            c = self._conn()
            try:
                return self._seq(c, reqs, close_last=self.rnd.random() < 0.5)
            finally:
                c.close()
        if pattern == "fork-child":
            c = self._conn()
            try:
                r = c.call("GET", "/_ping")
                if r.status != 200:
                    raise Unexpected("ping %d" % r.status)
                res = self.in_child(lambda: enc(self._seq(c, reqs)))
                if self.rnd.random() < 0.5:
                    c.call("GET", "/version")  # the parent goes on after the child
                return dec(res)
            finally:
                c.close()
        if pattern == "threads":
            c = self._conn()
            lock = threading.Lock()
            out = [None] * len(reqs)
            errs = []

            def run(ixs):
                try:
                    for i in ixs:
                        m, t, b, ct = reqs[i]
                        with lock:
                            c.send(rawhttp.request(m, t, b, content_type=ct))
                            r = c.read_response(m)
                        out[i] = (r.status, r.body)
                except Exception as e:  # noqa: BLE001 - reported by the caller
                    errs.append(e)
            ts = [threading.Thread(target=run, args=(list(range(k, len(reqs), 2)),)) for k in (0, 1)]
            for t in ts:
                t.start()
            for t in ts:
                t.join()
            c.close()
            if errs:
                raise errs[0]
            return out
        raise ValueError(pattern)

    def in_child(self, fn, uid=None):
        """fn() in a forked child (after setuid to uid if given); its JSON result."""
        try:
            return proc.in_child(fn, uid, self.gid)
        except proc.ChildError as e:
            raise ClientError("child: %s" % e)

    # -- the HTTP stacks (raw, http.client, curl) behind one call -------------------------
    def http(self, reqs, stack=None, pattern=None, min_reqs=1):
        """Sends reqs through one HTTP stack. A pattern that wants company
        (pipeline, threads, curl --next) gets a harmless request first.
        Returns (responses for reqs, stack, pattern)."""
        stack = stack or self.rnd.choice(["raw", "raw", "raw", "http.client", "curl"])
        if stack == "raw":
            pattern = pattern or self.rnd.choice(RAW_PATTERNS)
        elif stack == "http.client":
            pattern = pattern or self.rnd.choice(["keepalive", "keepalive", "close"])
        else:
            pattern = pattern or self.rnd.choice(["single", "next"])
        lead = 0
        if len(reqs) == 1 and pattern in ("pipeline", "threads", "next"):
            reqs = [self.rnd.choice([("GET", "/_ping", None, None), ("GET", "/version", None, None),
                                     ("GET", "/containers/json?all=1", None, None)])] + list(reqs)
            lead = 1
        if stack == "raw":
            out = self.raw(reqs, pattern)
        elif stack == "http.client":
            if self.hc is None:
                self.hc = clients.HttpClient(self.sock)
            out = [self.hc.call(m, t, b, keepalive=(pattern == "keepalive"), content_type=ct or "application/json")
                   for m, t, b, ct in reqs]
        else:
            if self.curl is None:
                self.curl = clients.Curl(self.sock, self.home)
            if pattern == "next":
                out, _ = self.curl.run(reqs)
            else:
                out = [self.curl.run([rq])[0][0] for rq in reqs]
        if len(out) < len(reqs):
            raise ClientError("%s/%s: %d of %d replies" % (stack, pattern, len(out), len(reqs)))
        return out[lead:], stack, pattern

    def cli(self):
        name, binary = self.rnd.choice(self.clis)
        return name, clients.DockerCli(binary, self.sock, self.home)

    def pyd_(self):
        if self.pyd is None:
            self.pyd = clients.PyDocker(self.sock, self.home)
        return self.pyd

    def stack_for(self, http=3, cli=2, pyd=1):
        choices = ["http"] * http + (["cli"] * cli if self.clis else []) + (["pydocker"] * pyd if self.has_pydocker else [])
        return self.rnd.choice(choices)

    # -- operations --------------------------------------------------------------------------
    def container_body(self, cmd=None, labels=None):
        b = {"Image": BASE, "Cmd": cmd or ["true"], "HostConfig": {"NetworkMode": "none"}}
        if labels:
            b["Labels"] = labels
        return b

    def op_create(self):
        self.creates += 1
        fam = self.stack_for(http=5, cli=2, pyd=2)
        name = self.name_("c") if self.rnd.random() < 0.5 else None
        labels = {"zoo.w": str(self.idx)}
        if self.rnd.random() < 0.2:
            labels["qman.user"] = self.rnd.choice(list(self.users) or ["alice"])  # a claim, never trusted
        if fam == "http":
            q = "?name=" + name if name else ""
            out, stack, pattern = self.http([("POST", "/containers/create" + q, self.container_body(labels=labels), None)])
            st, body = out[0]
            if self.expect(st, (201,), "create", stack, pattern, body):
                self.made("container", json.loads(body)["Id"], stack, pattern, "create")
        elif fam == "cli":
            stack, cli = self.cli()
            args = ["create", "--network", "none"] + (["--name", name] if name else []) + ["--label", "zoo.w=%d" % self.idx, BASE, "true"]
            rc, out, err = cli.run(*args)
            if self.expect(0 if rc == 0 else 1, (0,), "create", stack, "cli", err.encode()):
                self.made("container", out.splitlines()[-1], stack, "cli", "create")
        else:
            r = self.pyd_().call(op="create", image=BASE, cmd=["true"], name=name, labels=labels)
            if self.expect(200 if r["ok"] else r.get("status"), (200,), "create", "python3-docker", "session",
                           r.get("error", "").encode()):
                self.made("container", r["id"], "python3-docker", "session", "create")

    def op_list_then_create(self):
        """Keep-alive: a long list reply (muted by the agent), then at once a create."""
        self.creates += 1
        stack = self.rnd.choice(["raw", "http.client", "curl"])
        pattern = {"raw": "keepalive", "http.client": "keepalive", "curl": "next"}[stack]
        lst = self.rnd.choice(["/containers/json?all=1", "/images/json", "/images/json?all=1"])
        out, stack, pattern = self.http([("GET", lst, None, None),
                                         ("POST", "/containers/create", self.container_body(), None)],
                                        stack=stack, pattern=pattern)
        pattern = "list+create/" + pattern
        self.expect(out[0][0], (200,), "list", stack, pattern, out[0][1])
        if self.expect(out[1][0], (201,), "create", stack, pattern, out[1][1]):
            self.made("container", json.loads(out[1][1])["Id"], stack, pattern, "create")

    def op_padded_create(self, same=False):
        """A request head longer than the probe's capture prefix in one write,
        then, pipelined, a create in a second write (the pairing slip)."""
        self.creates += 1
        pattern = "padded-same-write" if same else "padded-pipeline"
        c = self._conn()
        try:
            create = rawhttp.request("POST", "/containers/create", self.container_body())
            if same:
                c.send(padded_ping() + create)
            else:
                c.send(padded_ping())
                c.send(create)
            r1 = c.read_response("GET")
            r2 = c.read_response("POST")
        finally:
            c.close()
        self.expect(r1.status, (200,), "padded ping", "raw", pattern, r1.body)
        if self.expect(r2.status, (201,), "create", "raw", pattern, r2.body):
            self.made("container", r2.json()["Id"], "raw", pattern, "create")

    def op_padded_same_write(self):
        """The same, with the create in the same write as the padded head: past
        the probe's capture prefix, so only Docker's reply shows the create."""
        self.op_padded_create(same=True)

    def op_malformed_then_create(self):
        """A malformed request, dockerd's 400 with Connection: close read but not
        its EOF, close, and at once a create on a new connection (likely the same fd)."""
        self.creates += 1
        bad = self.rnd.choice([b"GET /_ping HTTP/1.1\r\nHost: docker\r\nBad Header Line\r\n\r\n",
                               b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03garbage\r\n\r\n",
                               b"GET /_ping HTTP/9.9\r\nHost: docker\r\n\r\n",
                               b"POST /containers/create HTTP/1.1\r\nHost: docker\r\nContent-Length: -5\r\n\r\n"])
        c = self._conn()
        fd1 = c.fileno()
        c.send(bad)
        unread = self.rnd.random() < 0.25  # sometimes closed before dockerd's reply was read at all
        if not unread:
            r = c.read_head()
        c.close()
        if not unread:
            self.expect(r.status, (400, 505), "malformed", "raw", "after-malformed", r.head)
        c = self._conn()
        try:
            same = c.fileno() == fd1
            rr = c.call("POST", "/containers/create", self.container_body(), close=self.rnd.random() < 0.5)
        finally:
            c.close()
        pattern = "after-malformed" + ("/same-fd" if same else "")
        if self.expect(rr.status, (201,), "create", "raw", pattern, rr.body):
            self.made("container", rr.json()["Id"], "raw", pattern, "create")

    def op_big_create(self):
        """A create whose body is far longer than one capture (64 KiB of labels)."""
        self.creates += 1
        labels = {"zoo.big.%d" % i: "x" * 1000 for i in range(64)}
        out, stack, pattern = self.http([("POST", "/containers/create", self.container_body(labels=labels), None)],
                                        stack=self.rnd.choice(["raw", "http.client", "curl"]))
        pattern = "oversized-body/" + pattern
        if self.expect(out[0][0], (201,), "create", stack, pattern, out[0][1]):
            self.made("container", json.loads(out[0][1])["Id"], stack, pattern, "create")

    def op_failed_start(self):
        """A create (which makes a container), then a start Docker refuses (400)."""
        self.creates += 1
        out, stack, pattern = self.http([("POST", "/containers/create", self.container_body(cmd=["/nonexistent"]), None)])
        if not self.expect(out[0][0], (201,), "create", stack, pattern, out[0][1]):
            return
        cid = json.loads(out[0][1])["Id"]
        self.made("container", cid, stack, pattern, "create")
        out, stack2, pattern2 = self.http([("POST", "/containers/%s/start" % cid, None, None)])
        self.expect(out[0][0], (400, 500), "start (bad command)", stack2, pattern2, out[0][1])

    def ensure_sleeper(self):
        if self.sleeper:
            if self.rnd.random() < 0.05:
                self.retired.add(self.sleeper)
                self.sleeper = None
            else:
                return self.sleeper
        self.creates += 1
        name = self.name_("sl")
        fam = self.stack_for(http=3, cli=1, pyd=1)
        if fam == "http":
            out, stack, pattern = self.http([("POST", "/containers/create?name=" + name,
                                              self.container_body(cmd=["sleep", "100000"]), None)])
            if not self.expect(out[0][0], (201,), "create sleeper", stack, pattern, out[0][1]):
                return None
            cid = json.loads(out[0][1])["Id"]
            self.made("container", cid, stack, pattern, "create")
            out, stack, pattern = self.http([("POST", "/containers/%s/start" % cid, None, None)])
            if not self.expect(out[0][0], (204,), "start", stack, pattern, out[0][1]):
                return None
        elif fam == "cli":
            stack, cli = self.cli()
            rc, out, err = cli.run("run", "-d", "--network", "none", "--name", name, BASE, "sleep", "100000")
            if not self.expect(0 if rc == 0 else 1, (0,), "run -d", stack, "cli", err.encode()):
                return None
            cid = out.splitlines()[-1]
            self.made("container", cid, stack, "cli", "create")
        else:
            p = self.pyd_()
            r = p.call(op="create", image=BASE, cmd=["sleep", "100000"], name=name)
            if not self.expect(200 if r["ok"] else r.get("status"), (200,), "create", "python3-docker", "session",
                               r.get("error", "").encode()):
                return None
            cid = r["id"]
            self.made("container", cid, "python3-docker", "session", "create")
            r = p.call(op="start", id=cid)
            if not self.expect(200 if r["ok"] else r.get("status"), (200,), "start", "python3-docker", "session",
                               r.get("error", "").encode()):
                return None
        self.sleeper = cid
        return cid

    def op_exec(self):
        sl = self.ensure_sleeper()
        if not sl:
            return
        fam = self.stack_for(http=3, cli=2, pyd=1)
        if fam == "http":
            out, stack, pattern = self.http([("POST", "/containers/%s/exec" % sl,
                                              {"AttachStdout": True, "AttachStderr": True, "Cmd": ["echo", "zoo-exec"]}, None)])
            if not self.expect(out[0][0], (201,), "exec create", stack, pattern, out[0][1]):
                return
            eid = json.loads(out[0][1])["Id"]
            c = self._conn()
            try:
                hdr = {"Upgrade": "tcp", "Connection": "Upgrade"} if self.rnd.random() < 0.7 else None
                c.send(rawhttp.request("POST", "/exec/%s/start" % eid, {"Detach": False, "Tty": False}, headers=hdr))
                r = c.read_response("POST", stream=True)
                data = c.read_stream() if r.upgraded else r.body
            finally:
                c.close()
            if self.expect(r.status, (101, 200), "exec start (hijacked)", "raw", "hijack", data):
                self.expect(200 if b"zoo-exec" in data else 0, (200,), "exec output", "raw", "hijack", data)
        elif fam == "cli":
            stack, cli = self.cli()
            rc, out, err = cli.run("exec", sl, "echo", "zoo-exec")
            self.expect(200 if rc == 0 and "zoo-exec" in out else 0, (200,), "exec", stack, "cli", err.encode())
        else:
            r = self.pyd_().call(op="exec", id=sl, cmd=["echo", "zoo-exec"])
            self.expect(200 if r["ok"] and "zoo-exec" in r.get("out", "") else 0, (200,), "exec", "python3-docker",
                        "session", json.dumps(r).encode())

    def op_attach_run(self):
        """docker run in the foreground: attach (hijacked), start, read to the exit."""
        self.creates += 1
        fam = self.stack_for(http=3, cli=2, pyd=1)
        if fam == "http":
            out, stack, pattern = self.http([("POST", "/containers/create",
                                              dict(self.container_body(cmd=["echo", "zoo-attach"]), AttachStdout=True,
                                                   AttachStderr=True), None)])
            if not self.expect(out[0][0], (201,), "create", stack, pattern, out[0][1]):
                return
            cid = json.loads(out[0][1])["Id"]
            self.made("container", cid, stack, pattern, "create")
            c = self._conn()
            try:
                hdr = {"Upgrade": "tcp", "Connection": "Upgrade"} if self.rnd.random() < 0.7 else None
                c.send(rawhttp.request("POST", "/containers/%s/attach?stream=1&stdout=1&stderr=1" % cid, headers=hdr))
                r = c.read_response("POST", stream=True)
                if not self.expect(r.status, (101, 200), "attach", "raw", "hijack", r.body):
                    return
                out2, stack2, pattern2 = self.http([("POST", "/containers/%s/start" % cid, None, None)])
                self.expect(out2[0][0], (204,), "start", stack2, pattern2, out2[0][1])
                data = c.read_stream()
            finally:
                c.close()
            self.expect(200 if b"zoo-attach" in data else 0, (200,), "attach output", "raw", "hijack", data)
        elif fam == "cli":
            stack, cli = self.cli()
            cidfile = os.path.join(self.home, "cid-%d-%d" % (os.getpid(), self.n))
            self.n += 1
            rc, out, err = cli.run("run", "--cidfile", cidfile, "--network", "none", BASE, "echo", "zoo-attach")
            try:
                with open(cidfile) as f:
                    cid = f.read().strip()
                os.unlink(cidfile)
            except OSError:
                cid = None
            if cid:
                self.made("container", cid, stack, "cli", "run")
            self.expect(200 if rc == 0 and "zoo-attach" in out else 0, (200,), "run (attached)", stack, "cli",
                        err.encode())
        else:
            r = self.pyd_().call(op="run", image=BASE, cmd=["echo", "zoo-attach"])
            if r.get("id"):
                self.made("container", r["id"], "python3-docker", "session", "run")
            self.expect(200 if r["ok"] and "zoo-attach" in r.get("out", "") else 0, (200,), "run", "python3-docker",
                        "session", json.dumps(r).encode())

    def some_container(self):
        live = [c for c in self.containers if c not in self.retired]
        return self.rnd.choice(live) if live else None

    def op_logs(self):
        cid = self.some_container()
        if not cid:
            return
        fam = self.stack_for(http=3, cli=1, pyd=1)
        if fam == "http":
            out, stack, pattern = self.http([("GET", "/containers/%s/logs?stdout=1&stderr=1" % cid, None, None)])
            self.expect(out[0][0], (200,), "logs", stack, pattern, out[0][1])
        elif fam == "cli":
            stack, cli = self.cli()
            rc, out, err = cli.run("logs", cid)
            self.expect(0 if rc == 0 else 1, (0,), "logs", stack, "cli", err.encode())
        else:
            r = self.pyd_().call(op="logs", id=cid)
            self.expect(200 if r["ok"] else r.get("status"), (200,), "logs", "python3-docker", "session",
                        r.get("error", "").encode())

    def op_rm_running(self):
        """Remove our running container without force: 409, and it stays."""
        sl = self.ensure_sleeper()
        if not sl:
            return
        fam = self.stack_for(http=3, cli=1, pyd=1)
        if fam == "http":
            out, stack, pattern = self.http([("DELETE", "/containers/" + sl, None, None)])
            self.expect(out[0][0], (409,), "rm running", stack, pattern, out[0][1])
        elif fam == "cli":
            stack, cli = self.cli()
            rc, out, err = cli.run("rm", sl)
            self.expect(409 if rc != 0 and "running" in err else rc, (409,), "rm running", stack, "cli", err.encode())
        else:
            r = self.pyd_().call(op="rm", id=sl, force=False)
            self.expect(r.get("status", 200), (409,), "rm running", "python3-docker", "session",
                        r.get("error", "").encode())

    def op_hostile_delete(self):
        """Remove another user's running container without force (409), padded
        or not: the removal must not cost its owner the bill."""
        out, stack, pattern = self.http([("GET", "/containers/json?filters=" + urllib.parse.quote(
            json.dumps({"name": ["zoo-sl-"], "status": ["running"]})), None, None)])
        if not self.expect(out[0][0], (200,), "list running", stack, pattern, out[0][1]):
            return
        mine = "zoo-sl-%d-" % self.idx
        others = [c for c in json.loads(out[0][1]) if not any(n.lstrip("/").startswith(mine) for n in c["Names"])]
        if not others:
            return
        victim = self.rnd.choice(others)["Id"]
        if self.rnd.random() < 0.5:
            c = self._conn()
            try:
                c.send(padded_ping())  # one write, then the removal in the next
                c.send(rawhttp.request("DELETE", "/containers/" + victim))
                r1 = c.read_response("GET")
                r2 = c.read_response("DELETE")
            finally:
                c.close()
            self.expect(r1.status, (200,), "padded ping", "raw", "padded-pipeline", r1.body)
            self.expect(r2.status, (409, 404), "rm other's running", "raw", "padded-pipeline", r2.body)
        else:
            out, stack, pattern = self.http([("DELETE", "/containers/" + victim, None, None)])
            self.expect(out[0][0], (409, 404), "rm other's running", stack, pattern, out[0][1])

    def op_import(self):
        self.creates += 1
        tar = clients.tiny_tar("%d-%d-%f-%d" % (self.idx, self.n, time.time(), self.rnd.getrandbits(64)))
        repo = self.name_("imp")
        fam = self.stack_for(http=3, cli=2, pyd=1)
        if fam == "http":
            out, stack, pattern = self.http([("POST", "/images/create?fromSrc=-&repo=%s&tag=1" % repo, tar,
                                              "application/x-tar")])
            st, body = out[0]
            iid = None
            for line in body.decode(errors="replace").splitlines():
                try:
                    s = json.loads(line).get("status", "")
                except ValueError:
                    continue
                if s.startswith("sha256:"):
                    iid = s
            if self.expect(st if iid else 0, (200,), "import", stack, pattern, body):
                self.made("image", iid, stack, pattern, "import")
        elif fam == "cli":
            stack, cli = self.cli()
            rc, out, err = cli.run("import", "-", repo + ":1", input=tar)
            if self.expect(0 if rc == 0 and out.startswith("sha256:") else 1, (0,), "import", stack, "cli", err.encode()):
                self.made("image", out.splitlines()[-1], stack, "cli", "import")
        else:
            r = self.pyd_().call(op="import", tar=tar, repo=repo, tag="1")
            if self.expect(200 if r["ok"] else r.get("status"), (200,), "import", "python3-docker", "session",
                           r.get("error", "").encode()):
                self.made("image", r["id"], "python3-docker", "session", "import")

    def op_commit(self):
        cid = self.some_container()
        if not cid:
            return
        self.creates += 1
        repo = self.name_("cm")
        fam = self.stack_for(http=3, cli=2, pyd=1)
        if fam == "http":
            out, stack, pattern = self.http([("POST", "/commit?container=%s&repo=%s&tag=1" % (cid, repo), None, None)])
            if self.expect(out[0][0], (201,), "commit", stack, pattern, out[0][1]):
                self.made("image", json.loads(out[0][1])["Id"], stack, pattern, "commit")
        elif fam == "cli":
            stack, cli = self.cli()
            rc, out, err = cli.run("commit", cid, repo + ":1")
            if self.expect(0 if rc == 0 and out.startswith("sha256:") else 1, (0,), "commit", stack, "cli", err.encode()):
                self.made("image", out.splitlines()[-1], stack, "cli", "commit")
        else:
            r = self.pyd_().call(op="commit", id=cid, repo=repo, tag="1")
            if self.expect(200 if r["ok"] else r.get("status"), (200,), "commit", "python3-docker", "session",
                           r.get("error", "").encode()):
                self.made("image", r["id"], "python3-docker", "session", "commit")

    def op_tag(self):
        if not self.images:
            return
        iid = self.rnd.choice(self.images)
        repo = self.name_("tag")
        fam = self.stack_for(http=3, cli=2, pyd=1)
        if fam == "http":
            out, stack, pattern = self.http([("POST", "/images/%s/tag?repo=%s&tag=t" % (iid, repo), None, None)])
            self.expect(out[0][0], (201,), "tag", stack, pattern, out[0][1])
        elif fam == "cli":
            stack, cli = self.cli()
            rc, out, err = cli.run("tag", iid, repo + ":t")
            self.expect(0 if rc == 0 else 1, (0,), "tag", stack, "cli", err.encode())
        else:
            r = self.pyd_().call(op="tag", id=iid, repo=repo, tag="t")
            self.expect(200 if r["ok"] else r.get("status"), (200,), "tag", "python3-docker", "session",
                        r.get("error", "").encode())

    def op_build(self):
        self.creates += 1
        nonce = "%d-%d-%d" % (self.idx, self.n, self.rnd.getrandbits(64))
        tag = self.name_("bld") + ":1"
        fam = self.stack_for(http=3, cli=2, pyd=1)
        if fam == "http":
            out, stack, pattern = self.http([("POST", "/build?rm=1&t=" + urllib.parse.quote(tag),
                                              clients.build_context(nonce, BASE), "application/x-tar")])
            iid = clients.build_image_id(out[0][1])
            if self.expect(out[0][0] if iid else 0, (200,), "build", stack, pattern, out[0][1][-300:]):
                self.made("image", iid, stack, pattern, "build")
        elif fam == "cli":
            stack, cli = self.cli()
            ctx = os.path.join(self.home, "ctx-%d" % self.idx)
            os.makedirs(ctx, exist_ok=True)
            with open(os.path.join(ctx, "Dockerfile"), "w") as f:
                f.write("FROM %s\nLABEL zoo.nonce=%s\n" % (BASE, nonce))
            rc, out, err = cli.run("build", "-q", "-t", tag, ctx)
            iid = out.splitlines()[-1].strip() if out else ""
            if self.expect(0 if rc == 0 and iid.startswith("sha256:") else 1, (0,), "build", stack, "cli",
                           (err + out).encode()):
                self.made("image", iid, stack, "cli", "build")
        else:
            r = self.pyd_().call(op="build", tar=clients.build_context(nonce, BASE), t=tag)
            if self.expect(200 if r["ok"] else r.get("status"), (200,), "build", "python3-docker", "session",
                           r.get("error", "").encode()):
                self.made("image", r["id"], "python3-docker", "session", "build")

    def op_volume(self):
        self.creates += 1
        name = self.name_("vol")
        fam = self.stack_for(http=3, cli=2, pyd=1)
        if fam == "http":
            body = {"Name": name} if self.rnd.random() < 0.8 else {}  # {}: Docker names it
            out, stack, pattern = self.http([("POST", "/volumes/create", body, None)])
            if self.expect(out[0][0], (201,), "volume create", stack, pattern, out[0][1]):
                self.made("volume", json.loads(out[0][1])["Name"], stack, pattern, "volume_create")
        elif fam == "cli":
            stack, cli = self.cli()
            rc, out, err = cli.run("volume", "create", name)
            if self.expect(0 if rc == 0 else 1, (0,), "volume create", stack, "cli", err.encode()):
                self.made("volume", out.splitlines()[-1], stack, "cli", "volume_create")
        else:
            r = self.pyd_().call(op="volume_create", name=name)
            if self.expect(200 if r["ok"] else r.get("status"), (200,), "volume create", "python3-docker", "session",
                           r.get("error", "").encode()):
                self.made("volume", r["id"], "python3-docker", "session", "volume_create")

    def op_read(self):
        """Calls that make nothing: ping, version, info, lists, inspect, events."""
        fam = self.stack_for(http=4, cli=1, pyd=1)
        if fam == "http":
            now = int(time.time())
            own = self.some_container()
            target = self.rnd.choice(["/_ping", "/version", "/info", "/containers/json?all=1", "/images/json",
                                      "/volumes", "/events?since=%d&until=%d" % (now - 5, now),
                                      "/containers/%s/json" % own if own else "/_ping",
                                      "/system/df" if self.rnd.random() < 0.1 else "/_ping"])
            method = "HEAD" if target == "/_ping" and self.rnd.random() < 0.3 else "GET"
            out, stack, pattern = self.http([(method, target, None, None)])
            st, body = out[0]
            if target == "/system/df" and st == 500 and b"already running" in body:
                st = 200  # the agent (or another worker) is measuring: dockerd runs one at a time
            self.expect(st, (200,), "read " + target.split("?")[0][:30], stack, pattern, body)
        elif fam == "cli":
            stack, cli = self.cli()
            args = self.rnd.choice([["version"], ["info"], ["ps", "-a"], ["images"], ["volume", "ls"],
                                    ["inspect", BASE]])
            rc, out, err = cli.run(*args)
            self.expect(0 if rc == 0 else 1, (0,), " ".join(args), stack, "cli", err.encode())
        else:
            op = self.rnd.choice(["ping", "version", "info", "list"])
            r = self.pyd_().call(op=op)
            self.expect(200 if r["ok"] else r.get("status"), (200,), op, "python3-docker", "session",
                        r.get("error", "").encode())

    def op_errors(self):
        """4xx and 5xx answers, and malformed or oversized requests."""
        kind = self.rnd.choice(["inspect404", "badbody500", "noimage404", "route404", "malformed", "oversized",
                                "cli404"])
        if kind == "cli404" and not self.clis:
            kind = "inspect404"
        if kind == "inspect404":
            out, stack, pattern = self.http([("GET", "/containers/%064x/json" % self.rnd.getrandbits(256), None, None)])
            self.expect(out[0][0], (404,), "inspect missing", stack, pattern, out[0][1])
        elif kind == "badbody500":
            out, stack, pattern = self.http([("POST", "/containers/create", b"{not json", None)])
            self.expect(out[0][0], (400, 500), "create bad body", stack, pattern, out[0][1])
        elif kind == "noimage404":
            out, stack, pattern = self.http([("POST", "/containers/create", {"Image": "zoo-missing:%d" % self.n}, None)])
            self.expect(out[0][0], (404,), "create missing image", stack, pattern, out[0][1])
        elif kind == "route404":
            out, stack, pattern = self.http([("GET", "/zoo/nothing/here", None, None)])
            self.expect(out[0][0], (404,), "unknown route", stack, pattern, out[0][1])
        elif kind == "malformed":
            bad = self.rnd.choice([b"GET /_ping HTTP/1.1\r\nHost: docker\r\nNo colon here\r\n\r\n",
                                   b"\x00\x01\x02\x03 binary\r\n\r\n",
                                   b"POST /build HTTP/1.1\r\nHost: d\r\nTransfer-Encoding: chunked\r\n\r\nzzzz\r\n\r\n",
                                   b"GET  HTTP/1.1\r\n\r\n"])
            c = self._conn()
            try:
                c.send(bad)
                r = c.read_head()
                if self.rnd.random() < 0.5:
                    c.read_stream()
            finally:
                c.close()
            self.expect(r.status, (400, 404, 405, 500, 501), "malformed", "raw", "malformed", r.head)
        elif kind == "oversized":
            c = self._conn()
            try:
                try:
                    c.send(b"GET /_ping HTTP/1.1\r\nHost: docker\r\nX-Zoo-Huge: " + b"h" * (4 << 20) + b"\r\n\r\n")
                except (BrokenPipeError, ConnectionResetError):
                    pass  # dockerd answered and closed before it had all of it
                try:
                    r = c.read_head()
                    st = r.status
                except (ConnectionError, OSError):
                    st = -1  # reset before the reply was read: dockerd's 431 was discarded
            finally:
                c.close()
            self.expect(st, (431, 400, -1), "oversized head", "raw", "oversized-head", b"")
        else:
            stack, cli = self.cli()
            rc, out, err = cli.run("inspect", "zoo-missing-%d" % self.n)
            self.expect(404 if rc != 0 else 0, (404,), "inspect missing", stack, "cli", err.encode())

    def op_remove(self):
        """Removes one object the test has judged, through a random stack."""
        ids = [i for i in self.removable if i != self.sleeper]
        if not ids:
            return
        oid = self.rnd.choice(ids)
        kind = self.removable.pop(oid)
        fam = self.stack_for(http=3, cli=1, pyd=1)
        ok = False
        # 404: gone already (a removal whose reply was lost or canceled by a
        # half-close may still have happened).
        if fam == "http":
            target = {"container": "/containers/%s?force=1&v=1", "image": "/images/%s?force=1",
                      "volume": "/volumes/%s"}[kind] % oid
            out, stack, pattern = self.http([("DELETE", target, None, None)])
            ok = self.expect(out[0][0], (200, 204, 404), "rm " + kind, stack, pattern, out[0][1])
        elif fam == "cli":
            stack, cli = self.cli()
            args = {"container": ["rm", "-f", "-v"], "image": ["rmi", "-f"], "volume": ["volume", "rm"]}[kind] + [oid]
            rc, out, err = cli.run(*args)
            ok = self.expect(0 if rc == 0 or "no such" in err.lower() else 1, (0,), "rm " + kind, stack, "cli",
                             err.encode())
        else:
            op = {"container": "rm", "image": "rmi", "volume": "volume_rm"}[kind]
            r = self.pyd_().call(op=op, id=oid, name=oid, force=True)
            ok = self.expect(200 if r["ok"] else r.get("status"), (200, 404), "rm " + kind, "python3-docker",
                             "session", r.get("error", "").encode())
        self.rm_tries[oid] = self.rm_tries.get(oid, 0) + 1
        if not ok and self.rm_tries[oid] < 3:
            self.removable[oid] = kind  # still there: another try later
        else:
            self.emit(ev="removed", kind=kind, id=oid)
            for lst in (self.containers, self.images):
                if oid in lst:
                    lst.remove(oid)
            self.retired.discard(oid)

    # -- root only: credentials that change between and within connections -------------------
    def op_setuid_between(self):
        """Root pings with Connection: close, setuid(user), then creates on a new connection."""
        self.creates += 1
        name, uid = self.rnd.choice(sorted(self.users.items()))
        body = self.container_body()
        read_eof = self.rnd.random() < 0.5

        def child_root():
            c = self._conn()
            r = c.call("GET", "/_ping", close=True)
            if read_eof:
                c.read_stream()
            c.close()
            if r.status != 200:
                raise Unexpected("ping %d" % r.status)
            become(uid, self.gid)
            c = self._conn()
            try:
                r = c.call("POST", "/containers/create", body, close=True)
            finally:
                c.close()
            return enc([(r.status, r.body)])
        (st, b), = dec(self.in_child(child_root))
        if self.expect(st, (201,), "create", "raw", "setuid-between", b):
            self.made("container", json.loads(b)["Id"], "raw", "setuid-between", "create", uid=uid)

    def op_setuid_within(self):
        """Root connects and pings; children that setuid to users each create on
        the shared connection; then root creates on it itself."""
        c = self._conn()
        try:
            r = c.call("GET", "/_ping")
            if not self.expect(r.status, (200,), "ping", "raw", "setuid-within-fork", r.body):
                return
            targets = self.rnd.sample(sorted(self.users.items()), 2)
            for name, uid in targets:
                self.creates += 1
                body = self.container_body()
                res = self.in_child(lambda: enc(self._seq(c, [("POST", "/containers/create", body, None)])), uid=uid)
                (st, b), = dec(res)
                if self.expect(st, (201,), "create", "raw", "setuid-within-fork", b):
                    self.made("container", json.loads(b)["Id"], "raw", "setuid-within-fork", "create", uid=uid)
            self.creates += 1
            r = c.call("POST", "/containers/create", self.container_body())
            if self.expect(r.status, (201,), "create", "raw", "setuid-within-fork", r.body):
                self.made("container", r.json()["Id"], "raw", "setuid-within-fork", "create", uid=0)
        finally:
            c.close()

    def op_setuid_same_conn(self):
        """One process: connect and ping as root, setuid(user), create on the same connection."""
        self.creates += 1
        name, uid = self.rnd.choice(sorted(self.users.items()))
        body = self.container_body()

        def child():
            c = self._conn()
            try:
                r = c.call("GET", "/_ping")
                if r.status != 200:
                    raise Unexpected("ping %d" % r.status)
                become(uid, self.gid)
                r = c.call("POST", "/containers/create", body)
            finally:
                c.close()
            return enc([(r.status, r.body)])
        (st, b), = dec(self.in_child(child))
        if self.expect(st, (201,), "create", "raw", "setuid-same-conn", b):
            self.made("container", json.loads(b)["Id"], "raw", "setuid-same-conn", "create", uid=uid)

    # -- the run ----------------------------------------------------------------------------
    def ops(self):
        table = [(self.op_create, 30), (self.op_list_then_create, 6), (self.op_padded_create, 3),
                 (self.op_padded_same_write, 1),
                 (self.op_malformed_then_create, 4), (self.op_big_create, 1.5), (self.op_failed_start, 1.5),
                 (self.op_attach_run, 3), (self.op_exec, 3), (self.op_logs, 2), (self.op_rm_running, 1),
                 (self.op_hostile_delete, 2), (self.op_import, 4), (self.op_commit, 3), (self.op_tag, 2),
                 (self.op_build, 1.5), (self.op_volume, 6), (self.op_read, 10), (self.op_errors, 5)]
        if self.uid == 0 and self.users:
            table += [(self.op_setuid_between, 8), (self.op_setuid_within, 5), (self.op_setuid_same_conn, 6)]
        return [(f, w) for f, w in table if f.__name__[3:] not in self.without]

    def open_pre_agent(self):
        for i in range(self.n_pre):
            c = self._conn()
            if i % 2:
                r = c.call("GET", "/_ping")  # a used keep-alive connection, idle across the agent's start
                assert r.status == 200, r
            self.pre.append(c)

    def run(self):
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        self.open_pre_agent()
        self.emit(ev="ready")
        # wait for "go"
        while b"\n" not in self.ctl_buf:
            d = os.read(self.ctl_fd, 4096)
            if not d:
                return
            self.ctl_buf += d
        line, self.ctl_buf = self.ctl_buf.split(b"\n", 1)
        table = self.ops()
        fns = [f for f, _ in table]
        weights = [w for _, w in table]
        # The connections opened before the agent started carry the first requests.
        while self.pre:
            self._one(self.op_create_pre)
        while self.creates < self.quota:
            if not self.poll_ctl():
                break
            while self.removable and (len(self.removable) > 3 or self.rnd.random() < 0.3):
                before = len(self.removable)
                self._one(self.op_remove)
                if len(self.removable) >= before:
                    break
            fn = self.rnd.choices(fns, weights)[0]
            self._one(fn)
            if self.errors > 50:
                self.emit(ev="error", op="worker", stack="-", pattern="-", detail="too many errors, stopping")
                break
        if self.sleeper:
            self.retired.add(self.sleeper)
            self.sleeper = None
        self.emit(ev="done", creates=self.creates)
        # Go on removing what the test judges until it says bye.
        while self.poll_ctl(block=True):
            while self.removable:
                self._one(self.op_remove)
        for c in self.pre:
            c.close()
        self._drop_ka()
        if self.pyd:
            self.pyd.close()

    def op_create_pre(self):
        self.creates += 1
        out, stack, pattern = self.http([("POST", "/containers/create", self.container_body(), None)],
                                        stack="raw", pattern="pre-agent")
        if self.expect(out[0][0], (201,), "create", stack, pattern, out[0][1]):
            self.made("container", json.loads(out[0][1])["Id"], stack, pattern, "create")

    def _one(self, fn):
        name = fn.__name__[3:]
        try:
            fn()
            self.emit(ev="op", op=name)
        except Exception as e:  # noqa: BLE001 - reported, the zoo goes on
            self.errors += 1
            self.emit(ev="error", op=name, stack="-", pattern="-",
                      detail="%s: %s | %s" % (type(e).__name__, str(e)[:300],
                                              " / ".join(traceback.format_exc().strip().splitlines()[-7:-1])[-900:]))
