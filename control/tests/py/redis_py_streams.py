"""redis-py (a client no one here wrote) against Conveyor's Redis protocol server.

    redis_py_streams.py compare CONVEYOR_PORT REDIS_PORT
        The same consumer-group script (XADD, XREADGROUP, XPENDING summary and extended,
        XCLAIM, XAUTOCLAIM, XACK, XINFO) through redis-py's own methods against a real
        redis-server and against Conveyor; every answer compared field by field (times
        excepted). Prints each difference; exits 1 if there is one.

    redis_py_streams.py share CONVEYOR_PORT N
        A producer and three consumers (threads, one connection each) share N entries in one
        group with XACK; checks each is delivered once and acknowledged once.
"""
import sys
import threading
import time

import redis

TIMES = {"idle", "time_since_delivered", "seen-time", "inactive", "active-time"}


def masked(v):
    if isinstance(v, dict):
        return {k: ("<time>" if str(k) in TIMES else masked(x)) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [masked(x) for x in v]
    return v


def script(r):
    """What each step answers (redis-py's parsed values)."""
    out = []

    def step(name, f):
        try:
            out.append((name, masked(f())))
        except redis.ResponseError as e:
            out.append((name, "error: " + str(e)))

    r.delete("jobs")
    step("xgroup_create", lambda: r.xgroup_create("jobs", "workers", id="0", mkstream=True))
    for i in range(1, 8):
        step(f"xadd {i}", lambda i=i: r.xadd("jobs", {"n": i, "kind": "resize"}, id=f"{i}-0"))
    step("xadd backwards", lambda: r.xadd("jobs", {"n": 0}, id="3-0"))
    step("xadd maxlen", lambda: r.xadd("other", {"a": 1}, id="1-1", maxlen=1))
    step("xreadgroup alice", lambda: r.xreadgroup("workers", "alice", {"jobs": ">"}, count=3))
    step("xreadgroup bob", lambda: r.xreadgroup("workers", "bob", {"jobs": ">"}, count=2))
    step("xreadgroup carol noack", lambda: r.xreadgroup("workers", "carol", {"jobs": ">"}, count=1, noack=True))
    step("xreadgroup alice history", lambda: r.xreadgroup("workers", "alice", {"jobs": "0"}))
    step("xpending", lambda: r.xpending("jobs", "workers"))
    step("xpending_range", lambda: r.xpending_range("jobs", "workers", "-", "+", 10))
    step("xpending_range bob", lambda: r.xpending_range("jobs", "workers", "-", "+", 10, consumername="bob"))
    step("xpending_range idle", lambda: r.xpending_range("jobs", "workers", "-", "+", 10, idle=3600000))
    step("xack", lambda: r.xack("jobs", "workers", "1-0", "9-0"))
    step("xclaim", lambda: r.xclaim("jobs", "workers", "dave", 0, ["2-0", "4-0"]))
    step("xclaim justid", lambda: r.xclaim("jobs", "workers", "erin", 0, ["3-0"], justid=True))
    step("xclaim idle too short", lambda: r.xclaim("jobs", "workers", "erin", 3600000, ["2-0"]))
    step("xclaim retrycount", lambda: r.xclaim("jobs", "workers", "erin", 0, ["5-0"], retrycount=9, justid=True))
    step("xclaim force", lambda: r.xclaim("jobs", "workers", "erin", 0, ["6-0"], force=True))
    step("xpending after claims", lambda: r.xpending_range("jobs", "workers", "-", "+", 10))
    step("xdel", lambda: r.xdel("jobs", "4-0"))
    step("xautoclaim", lambda: r.xautoclaim("jobs", "workers", "frank", 0, start_id="0-0", count=2))
    step("xautoclaim rest", lambda: r.xautoclaim("jobs", "workers", "frank", 0, start_id="3-0"))
    step("xautoclaim justid", lambda: r.xautoclaim("jobs", "workers", "gina", 0, justid=True))
    step("xinfo_groups", lambda: r.xinfo_groups("jobs"))
    step("xinfo_consumers", lambda: r.xinfo_consumers("jobs", "workers"))
    step("xinfo_stream", lambda: {k: v for k, v in r.xinfo_stream("jobs").items() if not k.startswith("radix")})
    step("xrange", lambda: r.xrange("jobs", count=3))
    step("xrevrange", lambda: r.xrevrange("jobs", "+", "(5-0"))
    step("xlen", lambda: r.xlen("jobs"))
    step("xgroup_delconsumer", lambda: r.xgroup_delconsumer("jobs", "workers", "frank"))
    step("xgroup_destroy", lambda: r.xgroup_destroy("jobs", "workers"))
    step("exists/type", lambda: (r.exists("jobs", "nope"), r.type("jobs")))
    step("nogroup", lambda: r.xreadgroup("nope", "x", {"jobs": ">"}))
    return out


def compare(conveyor_port, redis_port):
    ours = script(redis.Redis(port=conveyor_port, decode_responses=True))
    theirs = script(redis.Redis(port=redis_port, decode_responses=True))
    bad = 0
    for (name, a), (_, b) in zip(ours, theirs):
        if a != b:
            bad += 1
            print(f"{name}:\n  redis-server: {b!r}\n  conveyor:     {a!r}")
    print(f"{len(ours)} steps, {bad} differ")
    return 1 if bad else 0


def share(port, n):
    r = redis.Redis(port=port)
    r.delete("share")
    r.xgroup_create("share", "g", id="$", mkstream=True)
    delivered, acked, lock = {}, {}, threading.Lock()
    done = threading.Event()

    def produce():
        c = redis.Redis(port=port)
        p = c.pipeline(transaction=False)
        for i in range(n):
            p.xadd("share", {"i": i})
            if (i + 1) % 200 == 0:
                p.execute()
        p.execute()

    def consume(name):
        c = redis.Redis(port=port)
        deadline = time.time() + 120
        while not done.is_set():
            if time.time() > deadline:
                raise SystemExit(f"{name}: timed out")
            got = c.xreadgroup("g", name, {"share": ">"}, count=50, block=300)
            ids = [i for _, entries in got for i, _ in entries]
            if not ids:
                continue
            with lock:
                for i in ids:
                    delivered[i] = delivered.get(i, 0) + 1
            p = c.pipeline(transaction=False)
            for i in ids:
                p.xack("share", "g", i)
            counted = p.execute()
            with lock:
                for i, k in zip(ids, counted):
                    if k == 1:
                        acked[i] = acked.get(i, 0) + 1
                if len(acked) >= n:
                    done.set()

    threads = [threading.Thread(target=produce)] + [
        threading.Thread(target=consume, args=(f"c{k}",)) for k in range(3)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    twice = [i for i, k in delivered.items() if k != 1]
    acked_twice = [i for i, k in acked.items() if k != 1]
    pending = r.xpending("share", "g")["pending"]
    print(f"{n} entries: delivered {len(delivered)}, acknowledged {len(acked)}, "
          f"delivered twice {len(twice)}, acknowledged twice {len(acked_twice)}, pending {pending}")
    ok = len(delivered) == n and len(acked) == n and not twice and not acked_twice and pending == 0
    return 0 if ok else 1


if __name__ == "__main__":
    if sys.argv[1] == "compare":
        sys.exit(compare(int(sys.argv[2]), int(sys.argv[3])))
    sys.exit(share(int(sys.argv[2]), int(sys.argv[3])))
