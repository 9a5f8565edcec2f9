#!/usr/bin/env python3
"""Re-makes the captures in this folder from a throwaway dockerd (stdlib + strace).

    tests/tools/dockerd.sh start /tmp/capA
    tests/tools/dockerd.sh image /tmp/capA bb:1
    python3 tests/data/captures/capture.py /tmp/capA tests/data/captures
    tests/tools/dockerd.sh stop /tmp/capA

Each scenario runs one client under `strace -ff -s 4096 -xx` and turns every
read/write (send/recv) the client made on a docker.sock connection into one
chunk. That is the view the BPF probe has: one event per syscall, its first
4096 bytes, and the true byte count. A relay would not do: it sees the kernel's
merges of back-to-back writes, not the client's syscalls.

Output, one file per connection, <scenario>-<n>.json (n in connect order):

    {"client": "docker-cli"|"curl"|"python-http.client", "command": ..., "note": ...,
     "exit_code": ..., "stdout": ..., "stderr": ...,
     "expect": {...},            # learnt from the CLI's output or `docker inspect`,
                                 # never from our parser
     "chunks": [{"dir": "tx"|"rx", "t_us": <since connect>, "len": <bytes moved>,
                 "b64": <first min(len, 4096) bytes>}, ...]}

tx: the client wrote; rx: the client read. len > decoded b64 size is a gap.
"""
import base64
import glob
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import time

kPrefix = 4096  # the probe's copy limit per syscall
# Keeps image tarballs out of git: once a connection has stored this many
# captured bytes, later tx chunks keep only their first kTrimmedPrefix bytes (as
# if the probe's copy limit were smaller). Chunk-size lines still survive: Go and
# python start each write with one.
kKeepFullBytes = 32 * 1024
kTrimmedPrefix = 64

dir_ = os.path.abspath(sys.argv[1])
out = os.path.abspath(sys.argv[2])
sock = os.path.join(dir_, "docker.sock")
work = os.path.join(dir_, "capwork")
shutil.rmtree(work, ignore_errors=True)
os.makedirs(work)
os.makedirs(out, exist_ok=True)
env = dict(os.environ, DOCKER_BUILDKIT="0", DOCKER_CLI_HINTS="false")

kLine = re.compile(r'^(\d+\.\d+) (\w+)\((.*)\) += (-?\d+)(?: .*)? <([\d.]+)>$')
kData = re.compile(r'^(\d+), "((?:\\x[0-9a-f]{2})*)"(\.\.\.)?, (\d+)')
kConnect = re.compile(r'^(\d+), \{sa_family=AF_UNIX, sun_path="((?:\\x[0-9a-f]{2})*)"\}')
kDataCalls = {"read": "rx", "recvfrom": "rx", "write": "tx", "sendto": "tx"}


def unhex(s):
    return bytes(int(h, 16) for h in re.findall(r"\\x([0-9a-f]{2})", s))


def parse_strace(prefix):
    """Connections to docker.sock as lists of chunks, in connect order."""
    events = []
    for f in glob.glob(prefix + ".*"):
        for line in open(f, errors="replace"):
            m = kLine.match(line.rstrip("\n"))
            if not m:
                continue
            t = float(m.group(1)) + float(m.group(5))  # completion time: entry + duration
            events.append((t, m.group(2), m.group(3), int(m.group(4))))
    events.sort(key=lambda e: e[0])
    open_conns, conns = {}, []
    for t, call, args, ret in events:
        if call == "connect":
            m = kConnect.match(args)
            if m and ret == 0 and unhex(m.group(2)).decode() == sock:
                c = {"t0": t, "chunks": [], "stored": 0}
                conns.append(c)
                open_conns[int(m.group(1))] = c
        elif call == "close":
            open_conns.pop(int(args.split(",")[0]), None)
        elif call in kDataCalls and ret > 0:
            m = kData.match(args)
            if not m or int(m.group(1)) not in open_conns:
                continue
            c = open_conns[int(m.group(1))]
            direction = kDataCalls[call]
            data = unhex(m.group(2))[:ret][:kPrefix]
            if direction == "tx" and c["stored"] >= kKeepFullBytes:
                data = data[:kTrimmedPrefix]
            c["stored"] += len(data)
            c["chunks"].append({"dir": direction, "t_us": int((t - c["t0"]) * 1e6), "len": ret,
                                "b64": base64.b64encode(data).decode()})
        elif call in ("readv", "writev", "sendmsg", "recvmsg") and ret > 0:
            fd = int(args.split(",")[0])
            if fd in open_conns:
                raise SystemExit("unsupported syscall %s on a docker.sock connection" % call)
    return [c["chunks"] for c in conns]


def real(*args, check=True):
    """docker CLI on the real socket (setup and checks, not captured)."""
    r = subprocess.run(["docker", "-H", "unix://" + sock, *args], env=env, capture_output=True, text=True)
    if check and r.returncode != 0:
        raise SystemExit("setup failed: docker %s: %s" % (" ".join(args), r.stderr))
    return r.stdout.strip()


def capture(name, client, argv, note, expect_fn=None, stdin=None, shown=None, upload=None):
    raw = os.path.join(work, name)
    os.makedirs(raw)
    prefix = os.path.join(raw, "st")
    strace = ["strace", "-ff", "-ttt", "-T", "-xx", "-s", str(kPrefix), "-o", prefix,
              "-e", "trace=connect,close,read,write,sendto,recvfrom,readv,writev,sendmsg,recvmsg"]
    r = subprocess.run(strace + argv, env=env, capture_output=True, text=True,
                       stdin=open(stdin, "rb") if stdin else subprocess.DEVNULL)
    expect = expect_fn(r) if expect_fn else {}
    if upload:  # the tarball's size: what the parser must count as the request body
        expect["upload_bytes"] = os.path.getsize(upload)
    shown = shown or " ".join(a.replace(sock, "DOCKER_SOCK").replace(work + "/", "") for a in argv)
    conns = parse_strace(prefix)
    for i, chunks in enumerate(conns, 1):
        doc = {"client": client, "command": shown, "note": note, "exit_code": r.returncode,
               "stdout": r.stdout[-2000:], "stderr": r.stderr[-2000:], "expect": expect, "chunks": chunks}
        with open(os.path.join(out, "%s-%d.json" % (name, i)), "w") as fh:
            json.dump(doc, fh, indent=1)
            fh.write("\n")
    print("%-30s rc=%d conns=%d %s" % (name, r.returncode, len(conns), r.stderr.strip()[-100:].replace("\n", " ")))
    return r


def cli(*args):
    return ["docker", "-H", "unix://" + sock, *args]


def curl(*args):
    return ["curl", "-sS", "--unix-socket", sock, *args]


kPyClient = r'''
import http.client, socket, sys, json
class UnixConn(http.client.HTTPConnection):
    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(%r)
c = UnixConn("localhost")
for method, url, body, headers, chunked in json.loads(sys.argv[1]):
    if body is not None and body.startswith("@"):
        body = open(body[1:], "rb")
    c.request(method, url, body=body, headers=headers, encode_chunked=chunked)
    r = c.getresponse()
    print(r.status, r.read().decode(errors="replace"))
c.close()
'''


def py(*requests):
    return [sys.executable, "-c", kPyClient % sock, json.dumps(requests)]


def py_shown(*requests):
    return "python3 http.client over DOCKER_SOCK, one connection: " + json.dumps(
        [[m, u, b.replace(work + "/", "") if b else b, h, c] for m, u, b, h, c in requests])


# --- inputs --------------------------------------------------------------------
def write(path, text):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)


ctx = os.path.join(work, "ctx")
write(os.path.join(ctx, "Dockerfile"), "FROM bb:1\nRUN echo built > /built\nLABEL qman.test=1\n")
badctx = os.path.join(work, "badctx")
write(os.path.join(badctx, "Dockerfile"), "FROM bb:1\nRUN echo failing; exit 3\n")
ctx_tar = os.path.join(work, "ctx.tar")
with tarfile.open(ctx_tar, "w") as t:
    t.add(os.path.join(ctx, "Dockerfile"), arcname="Dockerfile")
rootdir = os.path.join(work, "root")
write(os.path.join(rootdir, "etc", "hello"), "hello\n")
rootfs_tar = os.path.join(work, "rootfs.tar")  # a tiny image root for imports
with tarfile.open(rootfs_tar, "w") as t:
    t.add(rootdir, arcname=".")
big_rootfs_tar = os.path.join(work, "bigroot.tar")  # 2 MB: writes > 4096 bytes, so gaps
with tarfile.open(big_rootfs_tar, "w") as t:
    t.add(rootdir, arcname=".")
    t.add("/bin/busybox", arcname="bin/busybox")
bb_id = real("inspect", "-f", "{{.Id}}", "bb:1")
save_tar = os.path.join(work, "bb.tar")
with open(save_tar, "wb") as f:
    subprocess.run(["docker", "-H", "unix://" + sock, "save", "bb:1"], stdout=f, check=True)
saveid_tar = os.path.join(work, "bbid.tar")
with open(saveid_tar, "wb") as f:
    subprocess.run(["docker", "-H", "unix://" + sock, "save", bb_id], stdout=f, check=True)


def inspect_id(kind, name):
    return lambda r: {"ids": [real(kind, "inspect", "-f", "{{.Id}}", name)]}


def printed_id(r):
    return {"ids": [r.stdout.strip().splitlines()[-1]]}


def rmi_out(r):
    lines = r.stdout.splitlines()
    return {"untagged": [l.split(": ", 1)[1] for l in lines if l.startswith("Untagged: ")],
            "ids": [l.split(": ", 1)[1] for l in lines if l.startswith("Deleted: ")]}


# --- docker CLI ----------------------------------------------------------------
capture("cli-container-create", "docker-cli",
        cli("create", "--name", "web1", "--label", "qman.user=alice", "-v", "/data", "--network", "none",
            "bb:1", "sleep", "1000"),
        "create with name, label and an anonymous volume", inspect_id("container", "web1"))
capture("cli-container-remove", "docker-cli", cli("rm", "web1"), "remove by name")
capture("cli-run", "docker-cli",
        cli("run", "--name", "runner", "--network", "none", "bb:1", "sh", "-c", "echo hello; echo x > /x"),
        "run: create, attach (101 hijack), start, wait", inspect_id("container", "runner"))
capture("cli-image-commit", "docker-cli", cli("commit", "runner", "committed:1"), "commit a container", printed_id)
capture("cli-image-import", "docker-cli", cli("import", rootfs_tar, "imported:1"),
        "import a small tarball (fromSrc=-, chunked upload)", printed_id, upload=rootfs_tar)
capture("cli-image-import-big", "docker-cli", cli("import", big_rootfs_tar, "imported:big"),
        "import a 2 MB tarball: writes > 4096 bytes leave gaps in the chunk data", printed_id, upload=big_rootfs_tar)
capture("cli-image-build", "docker-cli",
        cli("build", "--network", "none", "-t", "built:1", "-t", "built:latest", ctx),
        "classic builder (DOCKER_BUILDKIT=0), two tags", inspect_id("image", "built:1"))
capture("cli-image-build-fail", "docker-cli", cli("build", "--network", "none", "-t", "broken:1", badctx),
        "RUN exits 3: 200 with an errorDetail line")
capture("cli-image-load", "docker-cli", cli("load", "-i", save_tar), "load a tagged image (2 MB upload)",
        lambda r: {"refs": ["bb:1"]}, upload=save_tar)
capture("cli-image-load-id", "docker-cli", cli("load", "-i", saveid_tar), "load an image saved by id",
        lambda r: {"ids": [bb_id]}, upload=saveid_tar)
capture("cli-image-tag", "docker-cli", cli("tag", "bb:1", "registry.local/ns/img:1"), "tag",
        lambda r: {"refs": ["registry.local/ns/img:1"]})
capture("cli-image-tag-slash", "docker-cli", cli("tag", "registry.local/ns/img:1", "other:2"),
        "tag whose source name has slashes; the CLI sends repo=docker.io/library/other",
        lambda r: {"refs": ["docker.io/library/other:2"]})
capture("cli-image-remove-untag", "docker-cli", cli("rmi", "other:2"), "untag only", rmi_out)
capture("cli-image-remove", "docker-cli", cli("rmi", "committed:1"), "untag and delete", rmi_out)
capture("cli-image-remove-missing", "docker-cli", cli("rmi", "nosuch:1"), "404")
capture("cli-volume-create", "docker-cli", cli("volume", "create", "--label", "qman.user=bob", "vol1"),
        "named volume with a label", lambda r: {"ids": ["vol1"]})
capture("cli-volume-remove", "docker-cli", cli("volume", "rm", "vol1"), "remove")
capture("cli-image-pull-fail", "docker-cli", cli("pull", "busybox:1.36"), "no network: 500 before any stream")
real("run", "-d", "--network", "none", "--name", "sleeper", "bb:1", "sleep", "1000")
fake_http = os.path.join(work, "stdin.txt")  # raw stdin that looks like HTTP: must be ignored after the hijack
write(fake_http, 'POST /v1.41/volumes/create HTTP/1.1\r\nHost: x\r\nContent-Length: 15\r\n\r\n{"Name":"evil"}')
capture("cli-exec-stdin", "docker-cli", cli("exec", "-i", "sleeper", "cat"),
        "exec -i: POST /exec/{id}/start upgraded (101); stdin that looks like HTTP follows on the raw stream",
        stdin=fake_http)
real("rm", "-f", "sleeper")

# --- curl ----------------------------------------------------------------------
api = "http://localhost/v1.41"
create_body = json.dumps({"Image": "bb:1", "Cmd": ["sleep", "1000"], "Labels": {"qman.user": "carol"},
                          "Volumes": {"/cache": {}, "/var/lib/x": {}}, "HostConfig": {"NetworkMode": "none"}})
capture("curl-container-create", "curl",
        curl("-X", "POST", "-H", "Content-Type: application/json", "-d", create_body,
             api + "/containers/create?name=cweb"),
        "create with name, label, two anonymous volumes", inspect_id("container", "cweb"))
capture("curl-container-create-404", "curl",
        curl("-X", "POST", "-H", "Content-Type: application/json", "-d", '{"Image":"nosuch:1"}',
             api + "/containers/create?name=bad"), "image missing: 404")
capture("curl-container-remove", "curl", curl("-X", "DELETE", api + "/containers/cweb?v=1"), "remove, 204")
capture("curl-image-import", "curl",
        curl("-X", "POST", "-H", "Content-Type: application/x-tar", "--data-binary", "@" + rootfs_tar,
             api + "/images/create?fromSrc=-&repo=cimported&tag=2"),
        "import", lambda r: {"ids": [real("image", "inspect", "-f", "{{.Id}}", "cimported:2")]}, upload=rootfs_tar)
capture("curl-image-build", "curl",
        curl("-X", "POST", "-H", "Content-Type: application/x-tar", "--data-binary", "@" + ctx_tar,
             api + "/build?t=cbuilt:1&t=cbuilt%3Aextra&networkmode=none&rm=1"),
        "build, two t=, one percent-encoded", inspect_id("image", "cbuilt:1"), upload=ctx_tar)
capture("curl-image-build-chunked", "curl",
        curl("-X", "POST", "-H", "Content-Type: application/x-tar", "-H", "Transfer-Encoding: chunked",
             "--data-binary", "@" + ctx_tar, api + "/build?t=cchunked&networkmode=none&nocache=1"),
        "build with a chunked upload, tag defaulted", inspect_id("image", "cchunked:latest"), upload=ctx_tar)
capture("curl-image-load", "curl",
        curl("-X", "POST", "-H", "Content-Type: application/x-tar", "--data-binary", "@" + save_tar,
             api + "/images/load?quiet=0"),
        "load (2 MB upload, Expect: 100-continue)", lambda r: {"refs": ["bb:1"]}, upload=save_tar)
capture("curl-image-commit", "curl", curl("-X", "POST", api + "/commit?container=runner&repo=ccommitted&tag=3"),
        "commit", lambda r: {"ids": [json.loads(r.stdout)["Id"]]})
capture("curl-image-tag", "curl",
        curl("-X", "POST", api + "/images/registry.local/ns/img:1/tag?repo=registry.local/ns/copy&tag=9"),
        "tag a name with slashes", lambda r: {"refs": ["registry.local/ns/copy:9"]})
capture("curl-image-remove", "curl", curl("-X", "DELETE", api + "/images/ccommitted:3"), "untag and delete",
        lambda r: {"ids": [d["Deleted"] for d in json.loads(r.stdout) if "Deleted" in d]})
capture("curl-volume-create", "curl",
        curl("-X", "POST", "-H", "Content-Type: application/json",
             "-d", json.dumps({"Name": "cvol", "Labels": {"qman.user": "dave"}}), api + "/volumes/create"),
        "volume create", lambda r: {"ids": ["cvol"]})
capture("curl-volume-remove", "curl", curl("-X", "DELETE", api + "/volumes/cvol"), "204")
capture("curl-image-pull-fail", "curl", curl("-X", "POST", api + "/images/create?fromImage=busybox&tag=1.36"),
        "no network")
capture("curl-keepalive", "curl",
        curl("-X", "POST", "-H", "Content-Type: application/json", "-d", '{"Name":"ka1"}', api + "/volumes/create",
             "--next", "--unix-socket", sock, "-X", "DELETE", api + "/volumes/ka1",
             "--next", "--unix-socket", sock, "-X", "POST", api + "/containers/nosuch/start"),
        "three requests on one keep-alive connection", lambda r: {"ids": ["ka1"]})

# --- python http.client ----------------------------------------------------------
kPyBuild = [["POST", "/v1.41/build?t=pybuilt:1&networkmode=none", "@" + ctx_tar,
             {"Content-Type": "application/x-tar"}, True]]
capture("py-build-chunked", "python-http.client", py(*kPyBuild), "build, chunked upload from a file",
        inspect_id("image", "pybuilt:1"), shown=py_shown(*kPyBuild), upload=ctx_tar)
kPyKeepalive = [["GET", "/_ping", None, {}, False],
                ["POST", "/volumes/create", json.dumps({"Name": "pyvol", "Labels": {"qman.user": "erin"}}),
                 {"Content-Type": "application/json"}, False],
                ["DELETE", "/volumes/pyvol", None, {}, False]]
capture("py-keepalive", "python-http.client", py(*kPyKeepalive),
        "ping, volume create, volume remove on one connection, no version prefix", lambda r: {"ids": ["pyvol"]},
        shown=py_shown(*kPyKeepalive))
