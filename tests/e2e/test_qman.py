#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""The qman slave surface end to end: a real dockerd, alice/bob/carol, the real
agent. Usage accounting must add up exactly against Docker's own figures
measured independently (GET /system/df, what `docker system df -v` prints):

  sum(users' block_current) + unattributed_usage == used
      == sum(SizeRw) + LayersSize + sum(volume sizes)

with alice's imported image and bob's build FROM it sharing the base layer
(counted once, alice's), containers that wrote known amounts with dd, a
volume with known bytes, and objects made before the agent ran (unattributed).
Also: the quota PUT round trip, bad input leaving limits unchanged, the Docker
pages with real objects, inspect, and /metrics."""
import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from harness import USERS  # noqa: E402

failures = []
MiB = 1024 * 1024


check = harness.checker(failures)


def docker_df(env):
    """Docker's own figures, straight from the daemon (not through the agent)."""
    out = subprocess.run(["curl", "-sS", "--unix-socket", env.sock, "http://d/system/df"], capture_output=True,
                         check=True).stdout
    return json.loads(out)


def docker_total(df):
    containers = sum(c.get("SizeRw") or 0 for c in df.get("Containers") or [])
    volumes = sum(max((v.get("UsageData") or {}).get("Size", 0), 0) for v in df.get("Volumes") or [])
    return containers + df["LayersSize"] + volumes, containers, df["LayersSize"], volumes


def image_size(env, ref):
    return int(env.docker("root", "image", "inspect", "-f", "{{.Size}}", ref))



def quotas(env):
    status, body = env.http("/remote-api/quotas")
    assert status == 200, (status, body)
    return body


def settle(env, want_containers, timeout=60):
    """Waits until a measurement taken after the last change is served: the
    device's `used` equals Docker's total twice in a row, and every container is listed."""
    deadline = time.time() + timeout
    last = None
    while time.time() < deadline:
        dev = quotas(env)[0]
        total = docker_total(docker_df(env))[0]
        status, cs = env.http("/remote-api/docker/containers")
        listed = {c["name"] for c in cs.get("containers", [])} if status == 200 else set()
        if dev["usage"]["used"] == total and want_containers <= listed:
            if last == total:
                return dev
            last = total
        time.sleep(1)
    return quotas(env)[0]


def run(env):
    a, b, c = USERS["alice"], USERS["bob"], USERS["carol"]
    env.start_dockerd()
    # Before the agent: root's image and a container that wrote 1 MiB -> unattributed.
    env.run_as("root", ["docker", "import", "-", "pre:1"], input=harness.busybox_rootfs_tar(marker="pre"))
    env.docker("root", "run", "--network", "none", "--name", "pre-dd", "pre:1",
               "dd", "if=/dev/zero", "of=/fill", "bs=1048576", "count=1")

    env.start_agent(usage_interval_s=5, default_apply_interval_s=10)

    # alice imports an image; bob builds FROM it, adding 3 MiB (shared base layer).
    env.docker("alice", "import", "-", "alice-base:1", input=harness.busybox_rootfs_tar(marker="alice"))
    ctx = os.path.join(env.homes["bob"], "ctx")
    os.makedirs(ctx)
    with open(os.path.join(ctx, "Dockerfile"), "w") as f:
        f.write("FROM alice-base:1\nCOPY blob /blob\n")
    with open(os.path.join(ctx, "blob"), "wb") as f:
        f.write(os.urandom(3 * MiB))
    os.system("chown -R %d:%d %s" % (b, b, ctx))
    docker_cli = "/usr/bin/docker" if os.path.exists("/usr/bin/docker") else "docker"
    env.run_as("bob", [docker_cli, "build", "-q", "-t", "bob-built:1", ctx], env_extra={"DOCKER_BUILDKIT": "0"})

    # Containers that write known amounts; a volume with known bytes.
    env.docker("alice", "run", "--network", "none", "--name", "alice-dd", "alice-base:1",
               "dd", "if=/dev/zero", "of=/fill", "bs=1048576", "count=5")
    env.docker("bob", "run", "--network", "none", "--name", "bob-dd", "bob-built:1",
               "dd", "if=/dev/zero", "of=/fill", "bs=1048576", "count=7")
    env.docker("bob", "volume", "create", "bobvol")
    env.docker("bob", "run", "--network", "none", "--name", "bob-vol", "-v", "bobvol:/data", "alice-base:1",
               "dd", "if=/dev/zero", "of=/data/fill", "bs=1048576", "count=2")

    t0 = time.time()
    dev = settle(env, {"pre-dd", "alice-dd", "bob-dd", "bob-vol"})
    df = docker_df(env)
    total, cont_total, layers_total, vol_total = docker_total(df)
    t = time.time()
    cli = subprocess.run(["docker", "-H", "unix://" + env.sock, "system", "df", "-v"], capture_output=True, text=True)
    df_secs = time.time() - t
    print("docker system df -v took %.0f ms:\n%s" % (df_secs * 1000, cli.stdout))
    print("agent device: %s (settled after %.1f s)" % (json.dumps(dev["usage"]), time.time() - t0))

    users = {u["uid"]: u for u in dev["user_quotas"]}
    sum_users = sum(u["block_current"] for u in users.values())
    unattributed = dev.get("unattributed_usage", 0)
    check(sum_users + unattributed == total,
          "sum of users (%d) + unattributed (%d) == Docker's total (%d = SizeRw %d + LayersSize %d + volumes %d)" % (
              sum_users, unattributed, total, cont_total, layers_total, vol_total))
    check(dev["usage"]["used"] == total, "usage.used == Docker's total (%d)" % total)
    check(dev["usage"]["free"] == max(0, dev["usage"]["total"] - total), "free == max(0, total - used)")
    for u in users.values():
        check(u["block_current"] == u["docker_container_bytes"] + u["docker_image_layer_bytes"] + u["docker_volume_bytes"],
              "%s: block_current is the sum of the breakdown" % u["name"])

    size_rw = {c["Names"][0].lstrip("/"): c.get("SizeRw") or 0 for c in df["Containers"]}
    vol = {v["Name"]: v["UsageData"]["Size"] for v in df["Volumes"]}
    alice, bob = users.get(a), users.get(b)
    check(alice is not None and bob is not None, "alice and bob are listed")
    if alice and bob:
        check(alice["docker_container_bytes"] == size_rw["alice-dd"] and size_rw["alice-dd"] >= 5 * MiB,
              "alice's container bytes == SizeRw of alice-dd (%d)" % size_rw["alice-dd"])
        check(bob["docker_container_bytes"] == size_rw["bob-dd"] + size_rw["bob-vol"] and size_rw["bob-dd"] >= 7 * MiB,
              "bob's container bytes == SizeRw of bob-dd + bob-vol (%d)" % (size_rw["bob-dd"] + size_rw["bob-vol"]))
        check(bob["docker_volume_bytes"] == vol["bobvol"] and vol["bobvol"] >= 2 * MiB,
              "bob's volume bytes == bobvol's size (%d)" % vol["bobvol"])
        base, built = image_size(env, "alice-base:1"), image_size(env, "bob-built:1")
        check(alice["docker_image_layer_bytes"] == base, "alice owns her image's layer (%d)" % base)
        check(bob["docker_image_layer_bytes"] == built - base and built - base >= 3 * MiB,
              "bob owns only his build layer, not the shared base (%d)" % (built - base))
    pre = image_size(env, "pre:1")
    check(unattributed == pre + size_rw["pre-dd"],
          "unattributed == pre:1 image + pre-dd's writes (%d)" % (pre + size_rw["pre-dd"]))

    # Docker pages with the real objects.
    status, cs = env.http("/remote-api/docker/containers")
    byname = {x["name"]: x for x in cs["containers"]}
    check(byname["alice-dd"]["uid"] == a and byname["alice-dd"]["host_user_name"] == "alice", "containers: alice-dd is alice's")
    check(byname["pre-dd"]["uid"] is None, "containers: pre-dd is unattributed")
    check(cs["total_bytes"] == cont_total, "containers: total_bytes == sum of SizeRw")
    status, im = env.http("/remote-api/docker/images")
    check(im["total_layer_bytes"] == layers_total, "images: total_layer_bytes == LayersSize (%d)" % layers_total)
    check(im["layers_by_user"].get(str(b)) == built - base, "images: layers_by_user[bob] == his layer")
    status, vs = env.http("/remote-api/docker/volumes")
    bv = [v for v in vs["volumes"] if v["volume_name"] == "bobvol"]
    check(len(bv) == 1 and bv[0]["uid"] == b and bv[0]["size_bytes"] == vol["bobvol"], "volumes: bobvol is bob's")
    status, ins = env.http("/remote-api/docker/inspect?kind=container&id=alice-dd")
    check(status == 200 and ins["inspect"]["Name"] == "/alice-dd", "inspect: raw Docker inspect (%d)" % status)
    status, ins = env.http("/remote-api/docker/inspect?kind=image&id=nope:404")
    check(status == 404 and "msg" in ins, "inspect: unknown image is 404 JSON")

    # Quotas: PUT round trip in KiB; bad input changes nothing.
    status, body = env.http_json("PUT", "/remote-api/quotas/users/%d?device=docker" % c,
                                 {"block_hard_limit": 1048576, "block_soft_limit": 1048576,
                                  "inode_hard_limit": 0, "inode_soft_limit": 0})
    check(status == 200 and body["block_hard_limit"] == 1048576 and body["name"] == "carol", "PUT carol 1 GiB (KiB units)")
    for bad in ({}, {"block_hard_limit": -1}, {"block_hard_limit": 1.5}, {"block_hard_limit": "1"}):
        status, body = env.http_json("PUT", "/remote-api/quotas/users/%d?device=docker" % c, bad)
        check(400 <= status < 500 and "msg" in body, "PUT %s -> %d %s" % (json.dumps(bad), status, body.get("msg")))
    status, body = env.http_json("PUT", "/remote-api/quotas/users/%d" % c, {"block_hard_limit": 5})
    check(status == 400 and body == {"msg": "device query parameter required"}, "PUT without device -> 400")
    status, mine = env.http("/remote-api/quotas/users/by-name/carol")
    check(status == 200 and mine[0]["user_quotas"][0]["block_hard_limit"] == 1048576, "carol's limit unchanged by bad input")
    status, body = env.http("/remote-api/nope")
    check(status == 404 and body == {"msg": "not found"}, "404 is JSON")

    # Defaults: applied by the periodic job (every 10 s here) to users without a limit.
    status, body = env.http_json("PUT", "/remote-api/quotas/defaults?device=docker", {"block_hard_limit": 2097152})
    check(status == 200 and body["block_hard_limit"] == 2097152, "PUT default 2 GiB")
    deadline = time.time() + 30
    while time.time() < deadline:
        users = {u["uid"]: u for u in quotas(env)[0]["user_quotas"]}
        if users.get(a, {}).get("block_hard_limit") == 2097152:
            break
        time.sleep(1)
    check(users.get(a, {}).get("block_hard_limit") == 2097152, "the periodic job gave alice the default")
    check(users.get(c, {}).get("block_hard_limit") == 1048576, "carol keeps her own limit")

    status, text = env.http_text("/metrics")
    check(status == 200 and ('dockquota_user_usage_bytes{uid="%d",user="alice",kind="container"}' % a) in text,
          "/metrics has per-user usage")
    check('dockquota_probe_counter{name="docker_sock_kernel_counters_ringbuf_full"}' in text or
          "dockquota_probe_counter" in text, "/metrics has probe counters")


if __name__ == "__main__":
    harness.main(run, failures)
