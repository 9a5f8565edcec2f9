#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""The containerd runtime against a real containerd (Debian's 1.6), started
here with its own root, state and socket under the test's temp dir (no CRI
plugin), and the real agent with `runtime: containerd` and the module
(dockquota-containerd.so). Through the agent's API:

- every `ctr -n k8s.io run -d` is seen (container and task create) with the
  container's upper dir: the file the container wrote is in it;
- `ctr task kill` / `ctr task rm` / `ctr c rm` are seen (exit, task delete,
  container delete) and the container leaves the live set;
- a container on the native snapshotter is kept without an upper dir, said
  loudly (upper_error, the unsupported_snapshotter counter);
- the agent restarted: its reconcile finds the running ones (hooks called);
- containerd stopped: /healthz degraded after the grace, failed connects
  counted; started again: the agent reconnects (counters moved) and its set
  equals `ctr c ls`;
- the enforcement calls of ContainerdRuntime: writable bytes, stop, remove;
- the quota stage on this host's filesystem (no project quotas): nothing
  tagged, /healthz degraded naming it, the degraded counter;
- a missing module: the agent runs, /healthz degraded naming the path.

Prerequisites missing (root, containerd, ctr, runc, busybox-static, the
module): SKIP, or FAIL with CI=true."""
import hashlib
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

NS = "k8s.io"
IMAGE = "docker.io/library/dq-busybox:1"
failures = []
check = harness.checker(failures)


def module_path(agent_bin):
    return os.environ.get("DOCKQUOTA_CONTAINERD_MODULE") or os.path.join(
        os.path.dirname(os.path.abspath(agent_bin)), "dockquota-containerd.so")


def require(agent_bin):
    missing = [t for t in ("containerd", "ctr", "runc") if not shutil.which(t)]
    if os.geteuid() != 0:
        missing.append("root")
    if not os.path.exists("/bin/busybox"):
        missing.append("/bin/busybox (busybox-static)")
    if not os.path.exists(module_path(agent_bin)):
        missing.append("the module " + module_path(agent_bin))
    if missing:
        harness.skip_or_fail("containerd test prerequisites missing: " + ", ".join(missing))


# --- a private containerd ---------------------------------------------------------

class Containerd:
    def __init__(self, root):
        self.dir = root
        os.makedirs(root, exist_ok=True)
        self.sock = os.path.join(root, "containerd.sock")
        self.log = os.path.join(root, "containerd.log")
        self.proc = None
        cfg = """version = 2
root = "{d}/root"
state = "{d}/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "{d}/containerd.sock"
[ttrpc]
  address = "{d}/containerd.sock.ttrpc"
[debug]
  address = "{d}/debug.sock"
[plugins."io.containerd.internal.v1.opt"]
  path = "{d}/opt"
""".format(d=root)
        self.cfg = os.path.join(root, "containerd.toml")
        with open(self.cfg, "w") as f:
            f.write(cfg)

    def start(self):
        log = open(self.log, "a")
        self.proc = subprocess.Popen(["containerd", "--config", self.cfg], stdout=log, stderr=log,
                                     start_new_session=True)
        deadline = time.time() + 30
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError("containerd exited: " + open(self.log).read()[-2000:])
            if os.path.exists(self.sock) and self.ctr("version", check=False).returncode == 0:
                return
            time.sleep(0.1)
        raise AssertionError("containerd did not start: " + open(self.log).read()[-2000:])

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=30)
        self.proc = None

    def ctr(self, *args, check=True, ns=NS):
        p = subprocess.run(["ctr", "--address", self.sock, "-n", ns] + list(args), capture_output=True, text=True,
                           timeout=60)
        if check and p.returncode != 0:
            raise AssertionError("ctr %s: %s" % (" ".join(args), p.stderr.strip()))
        return p

    def containers(self):
        out = self.ctr("c", "ls", "-q").stdout.split()
        return set(out)

    def cleanup(self):
        # Tasks first: their shims outlive containerd otherwise.
        if self.proc and self.proc.poll() is None:
            for cid in self.containers():
                self.ctr("task", "kill", "-s", "SIGKILL", cid, check=False)
                time.sleep(0.2)
                self.ctr("task", "rm", "-f", cid, check=False)
                self.ctr("c", "rm", cid, check=False)
        self.stop()
        subprocess.run(["sh", "-c", "grep ' %s/' /proc/mounts | cut -d' ' -f2 | xargs -r -n1 umount -l" % self.dir],
                       check=False)


def oci_image_tar(path):
    """An OCI image layout tar of busybox (the harness's rootfs), for `ctr image import`."""
    blobs = {}

    def blob(data):
        d = hashlib.sha256(data).hexdigest()
        blobs[d] = data
        return {"digest": "sha256:" + d, "size": len(data)}

    layer = harness.busybox_rootfs_tar(marker="containerd")
    diff_id = "sha256:" + hashlib.sha256(layer).hexdigest()
    config = json.dumps({"architecture": "amd64", "os": "linux",
                         "config": {"Cmd": ["sh"], "Env": ["PATH=/bin"]},
                         "rootfs": {"type": "layers", "diff_ids": [diff_id]}}).encode()
    manifest = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                           "config": dict(blob(config), mediaType="application/vnd.oci.image.config.v1+json"),
                           "layers": [dict(blob(layer), mediaType="application/vnd.oci.image.layer.v1.tar")]}).encode()
    m = dict(blob(manifest), mediaType="application/vnd.oci.image.manifest.v1+json",
             annotations={"io.containerd.image.name": IMAGE, "org.opencontainers.image.ref.name": "1"},
             platform={"architecture": "amd64", "os": "linux"})
    index = json.dumps({"schemaVersion": 2, "manifests": [m]}).encode()
    with tarfile.open(path, "w") as t:
        def add(name, data):
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            t.addfile(ti, io.BytesIO(data))
        add("oci-layout", b'{"imageLayoutVersion": "1.0.0"}')
        add("index.json", index)
        for d, data in blobs.items():
            add("blobs/sha256/" + d, data)


# --- the agent ----------------------------------------------------------------------

def start_agent(env, ctrd, **extra):
    # The host has no project quotas: the quota stage would (rightly) degrade
    # /healthz, which the watch's checks read. vm_containerd_quotas tests it.
    extra.setdefault("containerd_quotas", False)
    cfg = env.write_config(runtime="containerd", containerd_address=ctrd.sock, containerd_namespaces=[NS],
                           containerd_module=module_path(env.agent_bin), **extra)
    log = open(env.agent_log, "a")
    env.agent = subprocess.Popen([env.agent_bin, "--config", cfg], stdout=log, stderr=log)
    h = harness.wait_for("agent connected to containerd", lambda: connected(env), timeout=30)
    if not h:
        raise AssertionError("agent did not connect to containerd; log:\n" + env.tail_log())
    return h


def connected(env):
    if env.agent.poll() is not None:
        raise AssertionError("agent exited with %s; log:\n%s" % (env.agent.returncode, env.tail_log()))
    try:
        h = env.health()
    except OSError:
        return None
    c = h.get("runtimes", {}).get("containerd", {})
    return h if c.get("connected") else None


def ctrd_health(env):
    return env.health()["runtimes"]["containerd"]


def live(env):
    status, body = env.http("/api/v1/containerd/containers")
    assert status == 200, (status, body)
    return body


def listed(env):
    return {c["id"]: c for c in live(env)["containers"]}


def seen(env, kind, cid):
    return any(e["kind"] == kind and e["id"] == cid for e in live(env)["recent_events"])


def metric(env, name, labels=""):
    status, text = env.http_text("/metrics")
    assert status == 200, status
    m = re.search(r"^%s%s (\S+)$" % (re.escape(name), re.escape("{%s}" % labels if labels else "")), text, re.M)
    return float(m.group(1)) if m else None


# --- scenarios ---------------------------------------------------------------------

def run_container(ctrd, cid, script, *opts):
    ctrd.ctr("run", "-d", *opts, IMAGE, cid, "sh", "-c", script)


def created_and_seen(env, ctrd):
    run_container(ctrd, "c1", "echo hello-c1 > /written-c1; sleep 1000")
    run_container(ctrd, "c2", "dd if=/dev/zero of=/blob bs=1024 count=2048 2>/dev/null; echo hello-c2 > /written-c2; "
                              "sleep 1000")
    for cid in ("c1", "c2"):
        c = harness.wait_for(cid + " listed running", lambda: (lambda x: x if x and x["state"] == "running" else None)(
            listed(env).get(cid)), timeout=15)
        check(c is not None, "%s listed, running (%s)" % (cid, c and c["state"]))
        if not c:
            continue
        check(seen(env, "container_create", cid) and seen(env, "task_create", cid) and seen(env, "task_start", cid),
              cid + ": container create, task create and task start seen")
        upper = c["upper_dir"]
        check(upper.startswith(ctrd.dir + "/root/io.containerd.snapshotter.v1.overlayfs/snapshots/") and
              upper.endswith("/fs"), cid + ": upper dir in the overlayfs snapshotter: " + upper)
        path = os.path.join(upper, "written-" + cid)
        ok = harness.wait_for(cid + " file", lambda: os.path.exists(path) and open(path).read() == "hello-%s\n" % cid,
                              timeout=10)
        check(ok, cid + ": the file the container wrote is in its upper dir")
        check(c["snapshotter"] == "overlayfs" and c["snapshot_key"] == cid and c["image"] == IMAGE,
              cid + ": snapshotter, snapshot key, image")
    # ctr exec: a file written later lands in the same upper dir.
    ctrd.ctr("task", "exec", "--exec-id", "e1", "c1", "sh", "-c", "echo from-exec > /exec-file")
    up = listed(env)["c1"]["upper_dir"]
    check(open(os.path.join(up, "exec-file")).read() == "from-exec\n", "c1: ctr task exec's file in the upper dir")


def deleted_and_seen(env, ctrd):
    ctrd.ctr("task", "kill", "-s", "SIGKILL", "c1")
    ok = harness.wait_for("c1 stopped", lambda: listed(env).get("c1", {}).get("state") == "stopped", timeout=10)
    check(ok and seen(env, "task_exit", "c1"), "c1: task exit seen, state stopped")
    ctrd.ctr("task", "rm", "c1")
    ok = harness.wait_for("c1 task gone", lambda: listed(env).get("c1", {}).get("state") == "no_task", timeout=10)
    check(ok and seen(env, "task_delete", "c1"), "c1: task delete seen")
    ctrd.ctr("c", "rm", "c1")
    ok = harness.wait_for("c1 gone", lambda: "c1" not in listed(env), timeout=10)
    check(ok and seen(env, "container_delete", "c1"), "c1: container delete seen, gone from the live set")


def unsupported_snapshotter(env, ctrd):
    before = metric(env, "dockquota_containerd_upper_dir_unresolved_total", 'reason="unsupported_snapshotter"') or 0
    run_container(ctrd, "n1", "sleep 1000", "--snapshotter", "native")
    c = harness.wait_for("n1 listed", lambda: listed(env).get("n1"), timeout=20)
    check(c is not None and c["upper_dir"] == "" and "unsupported snapshotter native" in c["upper_error"],
          "native snapshotter: no upper dir, said why (%s)" % (c and c["upper_error"]))
    after = metric(env, "dockquota_containerd_upper_dir_unresolved_total", 'reason="unsupported_snapshotter"')
    check(after is not None and after >= before + 1, "unsupported_snapshotter counter moved (%s -> %s)" % (before, after))
    check("unsupported snapshotter native" in open(env.agent_log).read(), "the agent's log says so")


def enforcement_calls(env, ctrd):
    status, body = env.http("/api/v1/containerd/containers/%s/c2" % NS)
    check(status == 200 and body.get("writable_bytes", 0) >= 2 << 20,
          "c2: writable bytes (Snapshots.Usage) >= the 2 MiB it wrote: %s" % body.get("writable_bytes"))
    status, body = env.http("/api/v1/containerd/containers/%s/c2/stop?timeout=1" % NS, method="POST")
    check(status == 200, "c2: stop through ContainerdRuntime: %s %s" % (status, body))
    tasks = ctrd.ctr("task", "ls").stdout
    check(re.search(r"^c2\s+\d+\s+STOPPED", tasks, re.M) is not None, "c2: STOPPED in ctr task ls")
    status, body = env.http("/api/v1/containerd/containers/%s/c2/remove" % NS, method="POST")
    check(status == 200, "c2: remove through ContainerdRuntime: %s %s" % (status, body))
    check("c2" not in ctrd.containers(), "c2: gone from ctr c ls")
    snaps = ctrd.ctr("snapshot", "ls").stdout.split()
    check("c2" not in snaps, "c2: its rootfs snapshot removed too")
    ok = harness.wait_for("c2 gone", lambda: "c2" not in listed(env), timeout=10)
    check(ok, "c2: the delete event took it out of the live set")
    status, body = env.http("/api/v1/containerd/containers/%s/c2/stop" % NS, method="POST")
    check(status == 404, "stop of a removed container: 404 (%s)" % status)


def agent_restart(env, ctrd):
    run_container(ctrd, "r1", "sleep 1000")
    run_container(ctrd, "r2", "echo r2 > /r2; sleep 1000")
    harness.wait_for("r1 r2", lambda: {"r1", "r2"} <= set(listed(env)), timeout=15)
    env.stop_agent()
    ctrd.ctr("task", "kill", "-s", "SIGKILL", "r1")
    time.sleep(0.5)
    ctrd.ctr("task", "rm", "r1")
    ctrd.ctr("c", "rm", "r1")  # while the agent is down
    start_agent(env, ctrd)
    got = listed(env)
    check(set(got) == ctrd.containers(), "after an agent restart: the live set is ctr c ls (%s vs %s)" %
          (sorted(got), sorted(ctrd.containers())))
    check("r2" in got and got["r2"]["state"] == "running" and os.path.exists(os.path.join(got["r2"]["upper_dir"], "r2")),
          "r2: found running by the reconcile, with its upper dir")
    w = ctrd_health(env)["watch"]
    running = sum(1 for c in got.values() if c["state"] != "no_task")
    check(w["hook_calls"].get("rootfs_at_reconcile", 0) == running,
          "the reconcile announced each task to the hooks once (%s of %d)" % (w["hook_calls"], running))
    check(w["reconcile_adds"] == len(got), "reconcile_adds = containers listed (%s)" % w["reconcile_adds"])


def containerd_restart(env, ctrd):
    c0 = ctrd_health(env)["counters"]
    ctrd.stop()
    ok = harness.wait_for("disconnected", lambda: not ctrd_health(env)["connected"], timeout=10)
    check(ok, "containerd stopped: not connected")
    time.sleep(7)  # past the 5 s grace
    h = env.health()
    check(h["status"] == "degraded" and any("not connected to " + ctrd.sock in r for r in h["degraded"]),
          "down past the grace: /healthz degraded (%s)" % h["degraded"])
    ctrd.start()
    ok = harness.wait_for("reconnected", lambda: connected(env), timeout=40)
    check(bool(ok), "containerd back: the agent reconnected")
    c1 = ctrd_health(env)["counters"]
    check(c1["reconnects"] >= c0["reconnects"] + 1 and c1["stream_breaks"] >= c0["stream_breaks"] + 1 and
          c1["connect_failures"] > c0["connect_failures"] and c1["reconciles"] > c0["reconciles"],
          "reconnects, stream_breaks, connect_failures, reconciles moved: %s -> %s" % (c0, c1))
    check(metric(env, "dockquota_containerd_reconnects_total") == c1["reconnects"],
          "/metrics dockquota_containerd_reconnects_total = %s" % c1["reconnects"])
    check(set(listed(env)) == ctrd.containers(), "after the containerd restart: live set = ctr c ls")
    h = env.health()
    check(not any("containerd" in r for r in h["degraded"]), "no containerd reason left: %s" % h["degraded"])
    # A create right after the reconnect is seen.
    run_container(ctrd, "a1", "echo a1 > /a1; sleep 1000")
    c = harness.wait_for("a1", lambda: listed(env).get("a1", {}).get("upper_dir"), timeout=15)
    check(bool(c) and os.path.exists(os.path.join(c, "a1")) if c else False, "a create after the reconnect: seen")


def cycles(env, ctrd, n=20):
    """n containers run, killed, their tasks and containers removed: each create
    and delete seen; the latency samples for the figures."""
    ev0 = ctrd_health(env)["watch"]["events"]
    for i in range(n):
        cid = "cy%d" % i
        run_container(ctrd, cid, "echo %s > /f; sleep 1000" % cid)
    ok = harness.wait_for("cycles listed", lambda: all(listed(env).get("cy%d" % i, {}).get("upper_dir")
                                                       for i in range(n)), timeout=30)
    check(ok, "%d containers: each listed with its upper dir" % n)
    got = listed(env)
    check(all(os.path.exists(os.path.join(got["cy%d" % i]["upper_dir"], "f")) for i in range(n) if "cy%d" % i in got),
          "%d containers: each one's file in its own upper dir" % n)
    for i in range(n):
        cid = "cy%d" % i
        ctrd.ctr("task", "kill", "-s", "SIGKILL", cid)
    for i in range(n):
        cid = "cy%d" % i
        harness.wait_for(cid + " stopped", lambda: ctrd.ctr("task", "ls").stdout.count(cid + " ") == 0 or
                         re.search(r"^%s\s+\d+\s+STOPPED" % cid, ctrd.ctr("task", "ls").stdout, re.M), timeout=10)
        ctrd.ctr("task", "rm", cid)
        ctrd.ctr("c", "rm", cid)
    ok = harness.wait_for("cycles gone", lambda: not any(k.startswith("cy") for k in listed(env)), timeout=20)
    check(ok, "%d containers deleted: none left in the live set" % n)
    kinds = ("container_create", "task_create", "task_start", "task_exit", "task_delete", "container_delete")
    ev1 = ctrd_health(env)["watch"]["events"]
    delta = {k: ev1.get(k, 0) - ev0.get(k, 0) for k in kinds}
    check(all(delta[k] == n for k in kinds), "%d containers: each event kind counted %d times: %s" % (n, n, delta))
    if n * len(kinds) <= 512:  # the API's recent-events window
        check(all(seen(env, k, "cy%d" % i) for i in range(n) for k in kinds),
              "%d containers: every event of each in recent_events" % n)
    check(set(listed(env)) == ctrd.containers(), "live set = ctr c ls after the cycles")


def any_bytes(type_url, value):
    """A protobuf google.protobuf.Any, encoded by hand (fields 1 and 2, length-delimited)."""
    def field(n, b):
        out, ln = bytes([n << 3 | 2]), len(b)
        while ln >= 0x80:
            out += bytes([ln & 0x7f | 0x80])
            ln >>= 7
        return out + bytes([ln]) + b
    return field(1, type_url.encode()) + field(2, value)


def undecodable_event(env, ctrd):
    """An event containerd forwards but whose payload does not parse (published
    with `containerd publish`, as v1 shims do): counted as lost, the stream is
    restarted and re-listed, and /healthz recovers."""
    c0 = ctrd_health(env)["counters"]
    bad = any_bytes("containerd.events.TaskCreate", b"\x0a\xff\xff")  # a string field longer than the payload
    p = subprocess.run(["containerd", "--address", ctrd.sock, "publish", "--namespace", NS, "--topic", "/tasks/create"],
                       input=bad, capture_output=True, timeout=30)
    check(p.returncode == 0, "containerd publish of a bad /tasks/create: %s" % p.stderr.decode().strip())
    ok = harness.wait_for("decode error", lambda: ctrd_health(env)["counters"]["decode_errors"] > c0["decode_errors"],
                          timeout=10)
    check(bool(ok), "decode_errors moved")
    ok = harness.wait_for("recovered", lambda: (lambda c: c["connected"] and c["counters"]["reconciles"] >
                                                c0["reconciles"])(ctrd_health(env)), timeout=20)
    check(bool(ok), "the stream was restarted and re-listed")
    h = env.health()
    check(not any("containerd" in r for r in h["degraded"]), "recovered: no containerd reason (%s)" % h["degraded"])
    check((metric(env, "dockquota_containerd_decode_errors_total") or 0) >= 1, "dockquota_containerd_decode_errors_total")
    check(set(listed(env)) == ctrd.containers(), "live set = ctr c ls after the lost event")


def metrics_and_latency(env):
    h = ctrd_health(env)
    ev = h["watch"]["events"]
    for kind in ("container_create", "task_create", "task_start", "task_exit", "task_delete", "container_delete",
                 "reconcile_begin", "reconcile_item", "reconcile_end"):
        v = metric(env, "dockquota_containerd_events_total", 'kind="%s"' % kind)
        check(v is not None and v > 0 and v == ev.get(kind), "dockquota_containerd_events_total{kind=%s} = %s" % (kind, v))
    for name in ("connects", "reconnects", "stream_breaks", "connect_failures", "events_received", "events_delivered",
                 "events_ignored", "decode_errors", "reconciles", "rpc_errors", "upper_dir_resolved"):
        v = metric(env, "dockquota_containerd_%s_total" % name)
        check(v is not None and v > 0, "dockquota_containerd_%s_total = %s" % (name, v))
    check((metric(env, "dockquota_containerd_hook_calls_total", 'hook="container_delete"') or 0) > 0,
          "hook_calls_total{hook=container_delete} moved")
    check(metric(env, "dockquota_containerd_connected") == 1, "dockquota_containerd_connected 1")
    lat = h["watch"]["task_create_to_upper_dir_ms"]
    print("task create -> upper dir resolved: %d samples, p50 %.1f ms, p99 %.1f ms" %
          (lat["samples"], lat["p50"], lat["p99"]))
    check(lat["samples"] > 0, "latency samples taken")
    # The rootfs is resolved and hooked at the container's create, before
    # the task (vm_containerd_quotas times the tag against the task start:
    # the host has no project quotas, so no quota stage here).
    w = h["watch"]
    check(w["hook_calls"].get("rootfs_at_container_create", 0) > 0 and not w["hook_calls"].get("rootfs_at_task_create"),
          "every live container's rootfs hooked at its container create: %s" % w["hook_calls"])
    check(w["tasks_started_before_hook"] == 0 and w["hook_done_before_task_start_ms"]["samples"] == 0,
          "no quota stage: no hook to time (%s)" % w["hook_done_before_task_start_ms"])


def missing_module(env, ctrd):
    env.stop_agent()
    cfg = env.write_config(runtime="containerd", containerd_address=ctrd.sock,
                           containerd_module=os.path.join(env.dir, "no-such-module.so"))
    log = open(env.agent_log, "a")
    env.agent = subprocess.Popen([env.agent_bin, "--config", cfg], stdout=log, stderr=log)
    h = harness.wait_for("health", lambda: safe_health(env) if env.agent.poll() is None else None, timeout=30)
    check(h is not None and h["status"] == "degraded" and
          any("cannot load " + os.path.join(env.dir, "no-such-module.so") in r for r in h["degraded"]),
          "a missing module: the agent runs, /healthz degraded naming it")
    env.stop_agent()


def quotas_degraded(env, ctrd):
    """The quota stage on a filesystem without project quotas (this host's):
    nothing tagged, said loudly (/healthz, the degraded counter, /metrics)."""
    env.stop_agent()
    start_agent(env, ctrd, containerd_quotas=True, containerd_quota_default_mib=16)
    run_container(ctrd, "q1", "sleep 1000")
    ok = harness.wait_for("q1 counted", lambda: ctrd_health(env).get("quotas", {}).get("counters", {}).get(
        "degraded", 0) >= 1, timeout=15)
    q = ctrd_health(env).get("quotas", {})
    h = env.health()
    check(ok and q["counters"]["tagged"] == 0 and q["filesystems"] and not q["filesystems"][0]["usable"],
          "quotas on a filesystem without them: nothing tagged, degraded counted (%s)" % q)
    check(any(r.startswith("containerd quotas: ") for r in h["degraded"]),
          "/healthz degraded naming the filesystem: %s" % h["degraded"])
    check(ctw_metric_ok(env, q["counters"]["degraded"]), "/metrics dockquota_containerd_quota_degraded_total")
    c = listed(env).get("q1", {})
    check("project_id" in c and c["project_id"] is None, "q1 listed without a project: %s" % c.get("project_id", "?"))
    status, body = env.http("/api/v1/containerd/tenants")
    check(status == 200 and body == {"tenants": []}, "GET /api/v1/containerd/tenants: %s %s" % (status, body))


class SlowHandshake:
    """A unix-socket proxy in front of containerd that holds containerd's
    first bytes (its HTTP/2 SETTINGS frame) for `delay` s on every
    connection: a loaded node's containerd."""

    def __init__(self, target, path, delay):
        import socket
        import threading
        self.target, self.path, self.delay = target, path, delay
        self.srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.srv.bind(path)
        self.srv.listen(64)
        self.stop = False
        threading.Thread(target=self.accept, daemon=True).start()

    def accept(self):
        import socket
        import threading
        while not self.stop:
            try:
                c, _ = self.srv.accept()
            except OSError:
                return
            u = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            u.connect(self.target)
            threading.Thread(target=self.pipe, args=(c, u, 0), daemon=True).start()
            threading.Thread(target=self.pipe, args=(u, c, self.delay), daemon=True).start()

    @staticmethod
    def pipe(src, dst, delay):
        first = True
        try:
            while True:
                b = src.recv(65536)
                if not b:
                    break
                if first and delay:
                    time.sleep(delay)
                first = False
                dst.sendall(b)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.shutdown(2)
            except OSError:
                pass

    def close(self):
        self.stop = True
        self.srv.close()


def slow_handshake(env, ctrd):
    """containerd answers its handshake 0.5 s late (a loaded node): the agent
    must still connect, at its first attempt. gRPC gives an attempt only
    GRPC_ARG_MIN_RECONNECT_BACKOFF_MS to finish it; at 100 ms it never did."""
    env.stop_agent()
    proxy = SlowHandshake(ctrd.sock, os.path.join(env.dir, "slow.sock"), 0.5)
    try:
        cfg = env.write_config(runtime="containerd", containerd_address=proxy.path, containerd_namespaces=[NS],
                               containerd_module=module_path(env.agent_bin), containerd_quotas=False)
        log = open(env.agent_log, "a")
        env.agent = subprocess.Popen([env.agent_bin, "--config", cfg], stdout=log, stderr=log)
        t0 = time.time()
        up = harness.wait_for("connected through the slow proxy", lambda: connected(env), timeout=30)
        took = time.time() - t0
        c = ctrd_health(env)
        check(bool(up) and c["counters"]["connect_failures"] == 0,
              "connected to a containerd 0.5 s slow to handshake in %.1f s, %d failed attempts (%s)" % (
                  took, c["counters"]["connect_failures"], c.get("last_error")))
    finally:
        env.stop_agent()
        proxy.close()
    start_agent(env, ctrd)


def ctw_metric_ok(env, want):
    return metric(env, "dockquota_containerd_quota_degraded_total") == want


def safe_health(env):
    try:
        return env.health()
    except OSError:
        return None


def containerd_only(env):
    """runtime: containerd (no Docker on a Kubernetes node): Docker's side is
    off, so nothing of it degrades /healthz or fills the log."""
    h = env.health()
    docker_side = [r for r in h.get("degraded", []) if any(w in r.lower() for w in (
        "docker", "project quotas", "growth"))]
    check(h["docker"]["enabled"] is False and not docker_side,
          "runtime containerd: Docker's side is off and degrades nothing: %s" % docker_side)
    check(h["project_quotas"]["state"] == "off", "no project quotas on Docker's data root: %s" % h["project_quotas"])
    with open(env.agent_log, errors="replace") as f:
        noise = [ln.strip() for ln in f if " warning " in ln and ("docker:" in ln or "usage:" in ln or "prjquota:" in ln)]
    check(not noise, "no Docker warnings in the agent's log: %s" % noise[:3])


def run(env):
    ctrd = Containerd(os.path.join(env.dir, "ctrd"))
    try:
        ctrd.start()
        tar = os.path.join(env.dir, "busybox-oci.tar")
        oci_image_tar(tar)
        ctrd.ctr("image", "import", tar)
        check(IMAGE in ctrd.ctr("image", "ls", "-q").stdout, "image imported with ctr image import")
        start_agent(env, ctrd)
        containerd_only(env)
        for step in (created_and_seen, deleted_and_seen, unsupported_snapshotter, enforcement_calls, agent_restart,
                     containerd_restart):
            try:
                step(env, ctrd)
            except AssertionError as e:
                check(False, "%s raised: %s" % (step.__name__, e))
        cycles(env, ctrd, harness.ARGS.cycles)
        undecodable_event(env, ctrd)
        metrics_and_latency(env)
        slow_handshake(env, ctrd)  # after the counters' checks: it restarts the agent
        quotas_degraded(env, ctrd)
        missing_module(env, ctrd)
    finally:
        ctrd.cleanup()


if __name__ == "__main__":
    import argparse
    ap = argparse.ArgumentParser()
    ap.add_argument("--agent", required=True)
    args, _ = ap.parse_known_args()
    require(args.agent)
    # --cycles N: create/delete cycles (20 in CI; more for the latency figures).
    harness.main(run, failures, add_args=lambda p: p.add_argument("--cycles", type=int, default=20))
