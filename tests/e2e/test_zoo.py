#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""The randomized client zoo: a real dockerd, the real agent, and
five worker processes (alice, bob, carol, dave and root) running seeded random
sequences of Engine API calls through several client stacks (raw sockets,
Python http.client, curl, the docker CLIs, python3-docker) over random
connection patterns (keep-alive, Connection: close, pipelining, half-close,
closing before EOF, an fd used by a forked child, threads sharing a
connection, connections opened before the agent started, and root processes
that setuid between and within connections).

The test knows who made every object: the uid of the process that sent the
create (import, commit, build, volume create). Each object must be listed by
the agent billed to exactly that uid: `wrong` counts another owner, `lost` an
object never attributed within --lost-after seconds, or one the agent stopped
listing while Docker still had it. Objects are judged as they appear and then
removed by their maker, so dockerd stays small.

    test_zoo.py --agent build/dockquotad [--seed N] [--creates N]

The seed is printed at the start and with the verdict; the same seed gives
every worker the same sequence of calls (their interleaving is the machine's).
"""
import collections
import json
import os
import random
import select
import signal
import sys
import threading
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import harness  # noqa: E402
from harness import USERS  # noqa: E402
from zoo import clients, rawhttp  # noqa: E402
from zoo.worker import Worker  # noqa: E402

failures = []
check = harness.checker(failures)
ZOO_USERS = ["alice", "bob", "carol", "dave"]
KIND_ROUTE = {"container": "containers", "image": "images", "volume": "volumes"}


def add_args(ap):
    ap.add_argument("--seed", type=int, default=None, help="random seed (default: random, printed)")
    ap.add_argument("--creates", type=int, default=1000, help="objects to create in total across workers")
    ap.add_argument("--lost-after", type=float, default=10.0,
                    help="seconds an object may stay unattributed before it counts as lost")
    ap.add_argument("--without", default="",
                    help="operations to leave out, comma-separated (e.g. padded_same_write); the run says so")
    ap.add_argument("--agent-log-level", default="debug", help="the agent's log_level (long runs: info)")
    ap.add_argument("--ledger", default=None, help="write every object and its verdict to this file (JSON lines)")
    ap.add_argument("--max-seconds", type=float, default=480.0,
                    help="stop the workers after this long (the run then fails for too few creates)")


class Rec:
    __slots__ = ("kind", "id", "uid", "stack", "pattern", "op", "w", "t", "state", "seen", "note", "removed")

    def __init__(self, ev):
        self.kind, self.id, self.uid = ev["kind"], ev["id"], ev["uid"]
        self.stack, self.pattern, self.op, self.w = ev["stack"], ev["pattern"], ev["op"], ev["w"]
        self.t = time.time()
        self.state = "pending"  # -> ok | wrong | lost
        self.seen = None        # (uid, billed_uid, source) when first listed with an owner
        self.note = ""
        self.removed = False


class Zoo:
    def __init__(self, env, seed, creates, lost_after, max_seconds, ledger_file=None, without=()):
        self.ledger_file = ledger_file
        self.without = [w for w in without if w]
        self.env = env
        self.seed = seed
        self.creates = creates
        self.lost_after = lost_after
        self.max_seconds = max_seconds
        self.lock = threading.Lock()
        self.ledger = {}
        self.dups = []
        self.ops = collections.Counter()
        self.unexpected = collections.Counter()
        self.unexpected_examples = []
        self.errors = []
        self.done = set()
        self.ready = set()
        self.workers = []  # (pid, name, report read fd, ctl write fd)
        self.exited = {}   # pid -> wait status
        self.stop = threading.Event()
        self.checker_error = None

    # -- workers -------------------------------------------------------------------
    def spawn(self):
        clis = [(n, b) for n, b in (("cli-local", "/usr/local/bin/docker"), ("cli-debian", "/usr/bin/docker"))
                if os.path.exists(b)]
        pyd = clients.pydocker_available()
        names = ZOO_USERS + ["root"]
        per = -(-self.creates // len(names))
        gid = __import__("grp").getgrnam(harness.GROUP).gr_gid
        root_home = os.path.join(self.env.dir, "home-root")
        os.makedirs(root_home, exist_ok=True)
        pipes = [(os.pipe(), os.pipe()) for _ in names]
        for i, name in enumerate(names):
            uid = 0 if name == "root" else USERS[name]
            home = root_home if name == "root" else self.env.homes[name]
            pid = os.fork()
            if pid == 0:
                code = 0
                try:
                    (rr, rw), (cr, cw) = pipes[i]
                    for j, ((a, b), (c, d)) in enumerate(pipes):
                        for fd in (a, d) if j == i else (a, b, c, d):
                            try:
                                os.close(fd)
                            except OSError:
                                pass  # the parent's end of an earlier worker, closed before this fork
                    if uid:
                        os.setgroups([gid])
                        os.setgid(uid)
                        os.setuid(uid)
                    os.environ["HOME"] = home
                    os.chdir(home)
                    w = Worker(i, name, uid, gid, self.env.sock, self.seed * 1000 + i, rw, cr, per, home,
                               {n: USERS[n] for n in ZOO_USERS} if uid == 0 else {}, clis, pyd,
                               without=self.without)
                    w.run()
                except BaseException:  # noqa: BLE001
                    traceback.print_exc()
                    code = 1
                finally:
                    os._exit(code)
            (rr, rw), (cr, cw) = pipes[i]
            os.close(rw)
            os.close(cr)
            self.workers.append((pid, name, rr, cw))
        return clis, pyd

    def tell(self, w, line):
        try:
            os.write(self.workers[w][3], (line + "\n").encode())
        except OSError:
            pass

    def read_reports(self, until_ready=False):
        bufs = {rr: b"" for _, _, rr, _ in self.workers}
        open_fds = set(bufs)
        while open_fds:
            if until_ready and len(self.ready) == len(self.workers):
                return
            r, _, _ = select.select(list(open_fds), [], [], 1.0)
            for fd in r:
                d = os.read(fd, 65536)
                if not d:
                    open_fds.discard(fd)
                    continue
                bufs[fd] += d
                while b"\n" in bufs[fd]:
                    line, bufs[fd] = bufs[fd].split(b"\n", 1)
                    self.on_report(json.loads(line))
            if until_ready and len(self.ready) == len(self.workers):
                return

    def on_report(self, ev):
        kind = ev["ev"]
        with self.lock:
            if kind == "ready":
                self.ready.add(ev["w"])
            elif kind == "made":
                if ev["id"] in self.ledger:
                    self.dups.append(ev)
                else:
                    self.ledger[ev["id"]] = Rec(ev)
            elif kind == "removed":
                rec = self.ledger.get(ev["id"])
                if rec:
                    rec.removed = True
            elif kind == "op":
                self.ops[ev["op"]] += 1
            elif kind == "unexpected":
                self.unexpected[(ev["op"], ev["stack"], ev["pattern"], ev["status"])] += 1
                if len(self.unexpected_examples) < 10:
                    self.unexpected_examples.append(ev)
            elif kind == "error":
                self.errors.append(ev)
            elif kind == "canceled":
                self.ops["(canceled by half-close)"] += 1
            elif kind == "done":
                self.done.add(ev["w"])

    # -- judging -----------------------------------------------------------------------
    def docker_has(self, rec):
        path = {"container": "/containers/%s/json", "image": "/images/%s/json", "volume": "/volumes/%s"}[rec.kind] % rec.id
        return rawhttp.once(self.env.sock, "GET", path).status == 200

    def listings(self, kinds):
        out = {}
        for k in kinds:
            out[k] = self.env.listing(KIND_ROUTE[k])
        return out

    def judge_once(self):
        with self.lock:
            pending = [r for r in self.ledger.values() if r.state == "pending"]
            watch = [r for r in self.ledger.values() if r.state in ("ok", "wrong") and not r.removed]
        kinds = {r.kind for r in pending + watch}
        if not kinds:
            return
        lists = self.listings(kinds)
        now = time.time()
        settled = []
        for r in pending:
            o = lists[r.kind].get(r.id)
            if o is not None and o.get("uid") is not None:
                r.seen = (o["uid"], o.get("billed_uid"), o.get("source"))
                good = o["uid"] == r.uid and o.get("source") == "bpf" and (r.uid == 0 or o.get("billed_uid") == r.uid)
                r.state = "ok" if good else "wrong"
                if not good:
                    r.note = "listed uid %s billed %s source %s" % r.seen
                settled.append(r)
            elif now - r.t > self.lost_after:
                if r.removed:
                    r.note = "removed by its maker before it was listed with an owner"
                elif o is not None:
                    r.note = "listed unattributed after %.0f s" % (now - r.t)
                else:
                    r.note = "not listed after %.0f s (%s in Docker)" % (
                        now - r.t, "present" if self.docker_has(r) else "absent")
                r.state = "lost"
                settled.append(r)
        for r in watch:
            o = lists[r.kind].get(r.id)
            if o is not None and o.get("uid") == r.seen[0]:
                continue
            # Gone from the list, or another owner: does Docker still have it?
            if r.removed or not self.docker_has(r):
                continue
            with self.lock:
                if r.removed:
                    continue
                if o is None:
                    r.state, r.note = "lost", "dropped from the list while Docker still has it (was uid %s)" % r.seen[0]
                else:
                    r.state, r.note = "wrong", "owner changed from uid %s to %s" % (r.seen[0], o.get("uid"))
        for r in settled:
            self.tell(r.w, "settled %s %s" % (r.kind, r.id))

    def judge_loop(self):
        try:
            while not self.stop.is_set():
                self.judge_once()
                self.stop.wait(0.3)
        except Exception:  # noqa: BLE001
            self.checker_error = traceback.format_exc()

    # -- the run -------------------------------------------------------------------------
    def run(self):
        env = self.env
        env.start_dockerd()
        r = rawhttp.once(env.sock, "POST", "/images/create?fromSrc=-&repo=zoo-base&tag=1",
                         harness.busybox_rootfs_tar(marker="zoo"), content_type="application/x-tar")
        assert r.status == 200, r
        clis, pyd = self.spawn()
        print("zoo: stacks raw, http.client, curl, %s%s; %d workers; %d creates" % (
            ", ".join(n + "=" + b for n, b in clis), ", python3-docker (%s)" % clients.DEBIAN_PYTHON if pyd else "",
            len(self.workers), self.creates), flush=True)
        if self.without:
            print("zoo: LEFT OUT by --without: " + ", ".join(self.without), flush=True)
        self.read_reports(until_ready=True)  # every worker has its pre-agent connections open
        assert len(self.ready) == len(self.workers), "only %d of %d workers started" % (len(self.ready), len(self.workers))
        env.start_agent(log_level=harness.ARGS.agent_log_level)
        t0 = time.time()
        reader = threading.Thread(target=self.read_reports, daemon=True)
        reader.start()
        judge = threading.Thread(target=self.judge_loop, daemon=True)
        judge.start()
        for i in range(len(self.workers)):
            self.tell(i, "go")
        last = 0
        while len(self.done) < len(self.workers) and time.time() - t0 < self.max_seconds:
            self.poll_exits()
            if len(self.exited) == len(self.workers):
                break
            time.sleep(0.5)
            if time.time() - last > 30:
                last = time.time()
                with self.lock:
                    st = collections.Counter(r.state for r in self.ledger.values())
                print("zoo: %3.0f s: %d made, %s, %d errors" % (time.time() - t0, len(self.ledger),
                                                                  dict(st), len(self.errors)), flush=True)
            if self.checker_error:
                break
        self.elapsed = time.time() - t0
        timed_out = len(self.done) < len(self.workers)
        # Everything made is judged (or lost) within lost_after.
        deadline = time.time() + self.lost_after + 5
        while time.time() < deadline:
            with self.lock:
                if not any(r.state == "pending" for r in self.ledger.values()):
                    break
            time.sleep(0.3)
        time.sleep(1.0)
        self.stop.set()
        judge.join(timeout=30)
        self.judge_once()  # one last look at everything still there
        for i in range(len(self.workers)):
            self.tell(i, "bye")
        for pid, name, _, _ in self.workers:
            self.reap(pid, name)
        reader.join(timeout=10)
        return timed_out

    def poll_exits(self):
        for pid, _, _, _ in self.workers:
            if pid not in self.exited:
                p, status = os.waitpid(pid, os.WNOHANG)
                if p:
                    self.exited[pid] = status

    def reap(self, pid, name):
        deadline = time.time() + 60
        while pid not in self.exited and time.time() < deadline:
            self.poll_exits()
            time.sleep(0.2)
        if pid not in self.exited:
            os.kill(pid, signal.SIGKILL)
            self.exited[pid] = os.waitpid(pid, 0)[1]
            self.errors.append({"op": "worker exit", "stack": name, "pattern": "-", "detail": "killed after bye"})
        elif self.exited[pid]:
            self.errors.append({"op": "worker exit", "stack": name, "pattern": "-",
                                "detail": "worker %s exited with status %d" % (name, self.exited[pid])})

    def kill_all(self):
        for pid, _, _, _ in self.workers:
            if pid in self.exited:
                continue
            try:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
            except OSError:
                pass

    # -- the verdict -----------------------------------------------------------------------
    def report(self, timed_out):
        recs = list(self.ledger.values())
        by_stack = collections.defaultdict(collections.Counter)
        by_pattern = collections.defaultdict(collections.Counter)
        for r in recs:
            for table, key in ((by_stack, r.stack), (by_pattern, r.pattern)):
                table[key]["made"] += 1
                table[key][r.state] += 1
        kinds = collections.Counter(r.kind for r in recs)
        wrong = [r for r in recs if r.state == "wrong"]
        lost = [r for r in recs if r.state == "lost"]
        print("\nzoo: seed %d: %d objects made (%s) in %.0f s; wrong %d, lost %d%s" % (
            self.seed, len(recs), ", ".join("%d %ss" % (n, k) for k, n in sorted(kinds.items())), self.elapsed,
            len(wrong), len(lost), "; LEFT OUT: " + ", ".join(self.without) if self.without else ""))
        for title, table in (("client stack", by_stack), ("connection pattern", by_pattern)):
            print("  %-34s %6s %6s %6s %6s" % (title, "made", "ok", "wrong", "lost"))
            for k in sorted(table):
                c = table[k]
                print("  %-34s %6d %6d %6d %6d" % (k, c["made"], c["ok"], c["wrong"], c["lost"]))
        shown = collections.Counter()
        for r in wrong + lost:  # up to 3 of each kind of fault
            key = (r.state, r.stack, r.pattern, r.note.split(" after ")[0][:30])
            shown[key] += 1
            if shown[key] <= 3:
                print("  %-5s %-9s %s uid %d via %s/%s (%s, worker %d): %s" % (
                    r.state, r.kind, r.id[:19], r.uid, r.stack, r.pattern, r.op, r.w, r.note))
        if sum(shown.values()) > sum(min(n, 3) for n in shown.values()):
            print("  ... and %d more like these" % (sum(shown.values()) - sum(min(n, 3) for n in shown.values())))
        if self.ledger_file:
            with open(self.ledger_file, "w") as f:
                for r in recs:
                    f.write(json.dumps({k: getattr(r, k) for k in Rec.__slots__}) + "\n")
            print("  every object and its verdict: " + self.ledger_file)
        print("  operations: " + ", ".join("%s %d" % kv for kv in sorted(self.ops.items())))
        if self.unexpected:
            print("  unexpected answers from Docker (a zoo or dockerd fault, not the agent's):")
            for (op, stack, pattern, status), n in self.unexpected.most_common(15):
                print("    %4d x %s via %s/%s: %s" % (n, op, stack, pattern, status))
            for ev in self.unexpected_examples[:5]:
                print("    e.g. %s %s/%s %s: %s" % (ev["op"], ev["stack"], ev["pattern"], ev["status"], ev["detail"][:200]))
        for ev in self.errors[:8]:
            print("  client error: %s (%s): %s" % (ev["op"], ev.get("stack"), ev["detail"][:600]))
        h = self.env.health()
        print("  agent: stream %s; kernel %s" % (json.dumps(h.get("stream")),
                                                 json.dumps(h["probes"]["docker_sock"].get("kernel_counters"))))

        check(self.checker_error is None, "the judge ran to the end%s" % (
            "" if not self.checker_error else ": " + self.checker_error))
        made_enough = len(recs) >= self.creates * 0.95
        check(not timed_out and made_enough,
              "the workers made %d objects (%d creates asked) within %.0f s" % (
                  len(recs), self.creates, self.max_seconds))
        check(not self.dups, "no object id reported twice (%d: %s)" % (len(self.dups), self.dups[:3]))
        check(not self.errors, "no client errors (%d)" % len(self.errors))
        check(not self.unexpected, "Docker answered every call as expected (%d unexpected)" % sum(self.unexpected.values()))
        check(not wrong, "every object billed to the uid that made it: %d wrong" % len(wrong))
        check(not lost, "every object attributed and kept: %d lost" % len(lost))
        check(self.env.agent is not None and self.env.agent.poll() is None, "the agent is still running")
        if failures:
            print("zoo: FAILED with seed %d (rerun: --seed %d --creates %d)" % (self.seed, self.seed, self.creates))


def main():
    def run(env):
        args = harness.ARGS
        seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1, 1 << 31)
        print("zoo: seed %d" % seed, flush=True)
        missing = [what for what, ok in (("python3-docker for /usr/bin/python3 (Debian python3-docker)",
                                          clients.pydocker_available()),
                                         ("Debian's docker CLI /usr/bin/docker", os.path.exists("/usr/bin/docker")))
                   if not ok]
        if missing:
            # Without them the zoo runs with fewer stacks; in CI that is a failure.
            check(not harness.in_ci(), "client stacks present (missing: %s)" % ", ".join(missing))
        unknown = [w for w in args.without.split(",") if w and not hasattr(Worker, "op_" + w)]
        assert not unknown, "--without: no such operation: %s (there are: %s)" % (
            ", ".join(unknown), ", ".join(sorted(n[3:] for n in dir(Worker) if n.startswith("op_"))))
        z = Zoo(env, seed, args.creates, args.lost_after, args.max_seconds, args.ledger, args.without.split(","))
        try:
            timed_out = z.run()
        except BaseException:
            z.kill_all()
            print("zoo: aborted with seed %d" % seed)
            raise
        z.report(timed_out)
    harness.main(run, failures, add_args=add_args)


if __name__ == "__main__":
    main()
