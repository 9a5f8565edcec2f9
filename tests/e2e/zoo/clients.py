# SPDX-License-Identifier: Apache-2.0
"""The zoo's client stacks other than raw sockets: Python's http.client, curl,
the docker CLIs and python3-docker (Debian's, run by /usr/bin/python3 in a
child process of the user). Each runs in the calling process, so with its
uid; each returns (status, body) per request, or raises ClientError."""
import http.client
import io
import json
import os
import socket
import subprocess
import tarfile
import time

from . import rawhttp

# Debian's python3-docker is installed for Debian's python3; the test itself
# may run under another interpreter (and /root may be closed to the users).
DEBIAN_PYTHON = "/usr/bin/python3"
HERE = os.path.dirname(os.path.abspath(__file__))


class ClientError(Exception):
    pass


def tiny_tar(marker):
    """A tar with one small file: an image import that costs dockerd little and
    never equals another (equal tars would be one layer)."""
    bio = io.BytesIO()
    with tarfile.open(fileobj=bio, mode="w") as t:
        data = marker.encode()
        ti = tarfile.TarInfo("zoo-marker")
        ti.size = len(data)
        ti.mtime = int(time.time())
        t.addfile(ti, io.BytesIO(data))
    return bio.getvalue()


def build_context(nonce, base):
    """A build context: FROM the shared base, a label that makes the image new."""
    bio = io.BytesIO()
    with tarfile.open(fileobj=bio, mode="w") as t:
        data = ("FROM %s\nLABEL zoo.nonce=%s\n" % (base, nonce)).encode()
        ti = tarfile.TarInfo("Dockerfile")
        ti.size = len(data)
        ti.mtime = int(time.time())
        t.addfile(ti, io.BytesIO(data))
    return bio.getvalue()


def build_image_id(body):
    """The image id in a legacy /build JSON stream (aux.ID), or None; an
    "error" entry makes it None."""
    iid = None
    for line in body.decode(errors="replace").splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            m = json.loads(line)
        except ValueError:
            continue
        if m.get("error") or m.get("errorDetail"):
            return None
        aux = m.get("aux") or {}
        if isinstance(aux, dict) and aux.get("ID"):
            iid = aux["ID"]
    return iid


# -- Python http.client ------------------------------------------------------

class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path, timeout=60):
        super().__init__("docker", timeout=timeout)
        self.unix_path = path

    def connect(self):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(self.timeout)
        s.connect(self.unix_path)
        self.sock = s


class HttpClient:
    """http.client, keep-alive (one connection reused) or one per request."""

    def __init__(self, path):
        self.path = path
        self.conn = None

    def call(self, method, target, body=None, keepalive=True, content_type="application/json"):
        if body is not None and not isinstance(body, (bytes, bytearray)):
            body = json.dumps(body).encode()
        headers = {}
        if body is not None:
            headers["Content-Type"] = content_type
        if not keepalive:
            headers["Connection"] = "close"
        for attempt in (0, 1):
            c = self.conn if keepalive and self.conn else UnixHTTPConnection(self.path)
            reused = c is self.conn
            try:
                c.request(method, rawhttp.API + target, body=body, headers=headers)
                r = c.getresponse()
                data = r.read()
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                c.close()
                self.conn = None
                if reused and attempt == 0 and method in ("GET", "HEAD"):
                    continue  # a kept connection the server had closed: once more, only for reads
                raise
            if keepalive and not r.will_close:
                self.conn = c
            else:
                c.close()
                if c is self.conn:
                    self.conn = None
            return r.status, data
        raise ClientError("unreachable")

    def close(self):
        if self.conn:
            self.conn.close()
            self.conn = None


# -- curl ----------------------------------------------------------------------

class Curl:
    """curl --unix-socket: one transfer per process, or several on one
    connection with --next. Bodies and outputs go through files in `tmp`."""

    def __init__(self, path, tmp):
        self.path = path
        self.tmp = tmp
        self.n = 0

    def _file(self, data=None):
        self.n += 1
        p = os.path.join(self.tmp, "curl-%d-%d" % (os.getpid(), self.n))
        if data is not None:
            with open(p, "wb") as f:
                f.write(data)
        return p

    def run(self, reqs):
        """reqs: [(method, target, body, content_type)]; returns [(status, body)],
        and the number of connections curl opened."""
        argv = ["curl", "-sS"]
        outs, files = [], []
        for i, (method, target, body, ctype) in enumerate(reqs):
            if i:
                argv.append("--next")
            out = self._file()
            outs.append(out)
            argv += ["--unix-socket", self.path, "-X", method, "-o", out,
                     "-w", "%{http_code} %{num_connects}\\n"]
            if body is not None:
                if not isinstance(body, (bytes, bytearray)):
                    body = json.dumps(body).encode()
                bf = self._file(body)
                files.append(bf)
                argv += ["-H", "Content-Type: " + (ctype or "application/json"), "--data-binary", "@" + bf]
            argv.append("http://docker" + rawhttp.API + target)
        try:
            p = subprocess.run(argv, capture_output=True, timeout=120)
        except subprocess.TimeoutExpired:
            raise ClientError("curl timed out")
        lines = p.stdout.decode().split()
        results = []
        connects = 0
        for i, out in enumerate(outs):
            try:
                with open(out, "rb") as f:
                    data = f.read()
            except OSError:
                data = b""
            status = int(lines[2 * i]) if len(lines) > 2 * i else 0
            connects += int(lines[2 * i + 1]) if len(lines) > 2 * i + 1 else 0
            results.append((status, data))
        for f in outs + files:
            try:
                os.unlink(f)
            except OSError:
                pass
        if p.returncode != 0 and not any(s for s, _ in results):
            raise ClientError("curl failed (%d): %s" % (p.returncode, p.stderr.decode(errors="replace")[:300]))
        return results, connects


# -- docker CLI ------------------------------------------------------------------

class DockerCli:
    def __init__(self, binary, path, home):
        self.binary = binary
        self.env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": home, "DOCKER_HOST": "unix://" + path,
                    "DOCKER_BUILDKIT": "0", "DOCKER_CLI_HINTS": "false"}

    def run(self, *args, input=None, timeout=180):
        try:
            p = subprocess.run([self.binary] + list(args), input=input, capture_output=True, env=self.env, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise ClientError("%s %s timed out" % (self.binary, args[0]))
        return p.returncode, p.stdout.decode(errors="replace").strip(), p.stderr.decode(errors="replace").strip()


# -- python3-docker ----------------------------------------------------------------

PYDOCKER_CHILD = r'''
import base64, io, json, sys
import docker
from docker.errors import APIError, NotFound
api = docker.APIClient(base_url=sys.argv[1], version="1.41", timeout=120)
def hc():
    return api.create_host_config(network_mode="none")
def do(m):
    op = m["op"]
    if op == "ping": return {"ok": api.ping()}
    if op == "version": return {"ok": True, "v": api.version()["ApiVersion"]}
    if op == "info": return {"ok": True, "n": api.info()["Containers"]}
    if op == "list": return {"ok": True, "n": len(api.containers(all=True)) + len(api.images())}
    if op == "create":
        r = api.create_container(m["image"], m["cmd"], name=m.get("name"), host_config=hc(), labels=m.get("labels"))
        return {"ok": True, "id": r["Id"]}
    if op == "start":
        api.start(m["id"]); return {"ok": True}
    if op == "run":
        r = api.create_container(m["image"], m["cmd"], host_config=hc())
        api.start(r["Id"])
        code = api.wait(r["Id"])["StatusCode"]
        out = api.logs(r["Id"], stdout=True, stderr=True)
        return {"ok": True, "id": r["Id"], "code": code, "out": out.decode(errors="replace")}
    if op == "exec":
        e = api.exec_create(m["id"], m["cmd"])
        out = api.exec_start(e["Id"])
        return {"ok": True, "out": out.decode(errors="replace")}
    if op == "logs":
        return {"ok": True, "out": api.logs(m["id"], stdout=True, stderr=True).decode(errors="replace")}
    if op == "inspect":
        return {"ok": True, "id": api.inspect_container(m["id"])["Id"]}
    if op == "rm":
        api.remove_container(m["id"], force=m.get("force", True), v=True); return {"ok": True}
    if op == "import":
        out = api.import_image_from_data(base64.b64decode(m["tar"]), repository=m["repo"], tag=m["tag"])
        return {"ok": True, "id": json.loads(out.strip().splitlines()[-1])["status"]}
    if op == "commit":
        return {"ok": True, "id": api.commit(m["id"], repository=m["repo"], tag=m["tag"])["Id"]}
    if op == "tag":
        return {"ok": api.tag(m["id"], m["repo"], m["tag"])}
    if op == "rmi":
        api.remove_image(m["id"], force=True); return {"ok": True}
    if op == "build":
        iid = None
        for ev in api.build(fileobj=io.BytesIO(base64.b64decode(m["tar"])), custom_context=True, tag=m["t"],
                            rm=True, decode=True):
            if ev.get("error"): return {"ok": False, "status": 0, "error": ev["error"]}
            if isinstance(ev.get("aux"), dict) and ev["aux"].get("ID"): iid = ev["aux"]["ID"]
        return {"ok": iid is not None, "id": iid, "status": 0, "error": "no image id"}
    if op == "volume_create":
        return {"ok": True, "id": api.create_volume(m["name"])["Name"]}
    if op == "volume_rm":
        api.remove_volume(m["name"]); return {"ok": True}
    return {"ok": False, "status": 0, "error": "unknown op " + op}
for line in sys.stdin:
    m = json.loads(line)
    try:
        r = do(m)
    except APIError as e:
        r = {"ok": False, "status": e.status_code or 0, "error": str(e)[:300]}
    except Exception as e:
        r = {"ok": False, "status": 0, "error": "%s: %s" % (type(e).__name__, str(e)[:300])}
    sys.stdout.write(json.dumps(r) + "\n")
    sys.stdout.flush()
'''


def pydocker_available():
    return os.path.exists(DEBIAN_PYTHON) and subprocess.run(
        [DEBIAN_PYTHON, "-c", "import docker"], capture_output=True).returncode == 0


class PyDocker:
    """One long-lived python3-docker client (requests' keep-alive pool) in a
    child process of the calling user; ops as JSON lines."""

    def __init__(self, path, home):
        self.p = subprocess.Popen([DEBIAN_PYTHON, "-c", PYDOCKER_CHILD, "unix://" + path],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  env={"PATH": "/usr/bin:/bin", "HOME": home})

    def call(self, **m):
        if "tar" in m:
            import base64
            m["tar"] = base64.b64encode(m["tar"]).decode()
        try:
            self.p.stdin.write((json.dumps(m) + "\n").encode())
            self.p.stdin.flush()
            line = self.p.stdout.readline()
        except (BrokenPipeError, OSError) as e:
            raise ClientError("python3-docker child died: %s" % e)
        if not line:
            raise ClientError("python3-docker child exited (%s)" % self.p.poll())
        return json.loads(line)

    def close(self):
        try:
            self.p.stdin.close()
            self.p.wait(timeout=10)
        except Exception:
            self.p.kill()
