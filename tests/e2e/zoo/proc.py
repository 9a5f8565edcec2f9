# SPDX-License-Identifier: Apache-2.0
"""Processes with other credentials: fork, optionally setuid to a user of the
docker group, run a function, hand its JSON result back over a pipe."""
import grp
import json
import os

GROUP = "dqdocker"  # harness.GROUP


class ChildError(Exception):
    pass


def become(uid, group_gid=None):
    """setgroups([docker group]), setgid, setuid: what login would give the
    user (each user's own group has the user's id, harness.ensure_users)."""
    if uid == 0:
        return
    if group_gid is None:
        group_gid = grp.getgrnam(GROUP).gr_gid
    os.setgroups([group_gid])
    os.setgid(uid)
    os.setuid(uid)


def in_child(fn, uid=None, group_gid=None):
    """fn() in a forked child (after become(uid) when uid is given); returns
    its JSON-able result, or raises ChildError with the child's exception."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(r)
            if uid is not None:
                become(uid, group_gid)
            res = {"ok": fn()}
        except BaseException as e:  # noqa: BLE001 - handed to the parent
            res = {"error": "%s: %s" % (type(e).__name__, e)}
        try:
            data = json.dumps(res).encode()
            while data:
                data = data[os.write(w, data):]
        finally:
            os._exit(0)
    os.close(w)
    chunks = []
    while True:
        d = os.read(r, 65536)
        if not d:
            break
        chunks.append(d)
    os.close(r)
    os.waitpid(pid, 0)
    res = json.loads(b"".join(chunks) or b'{"error": "the child wrote nothing"}')
    if "error" in res:
        raise ChildError(res["error"])
    return res["ok"]
