#!/usr/bin/env python3
"""Warm-call latency through a gateway: N calls one after another on one kept-alive connection
(after W warm-up calls), printing the median, p90 and p99 in milliseconds.

usage: call-latency.py URL [N=200] [BODY='{"text":"hi"}'] [W=20]
"""
import http.client
import statistics
import sys
import time
import urllib.parse

url = urllib.parse.urlsplit(sys.argv[1])
n = int(sys.argv[2]) if len(sys.argv) > 2 else 200
body = (sys.argv[3] if len(sys.argv) > 3 else '{"text":"hi"}').encode()
warm = int(sys.argv[4]) if len(sys.argv) > 4 else 20
conn = http.client.HTTPConnection(url.hostname, url.port or 80)
times = []
for i in range(warm + n):
    t = time.perf_counter()
    conn.request("POST", url.path, body, {"Content-Type": "application/json"})
    r = conn.getresponse()
    r.read()
    if r.status != 200:
        sys.exit(f"call {i}: status {r.status}")
    if i >= warm:
        times.append((time.perf_counter() - t) * 1000)
times.sort()
q = lambda p: times[min(len(times) - 1, int(p * len(times)))]
print(f"calls {n}: p50 {statistics.median(times):.3f} ms, p90 {q(0.9):.3f} ms, p99 {q(0.99):.3f} ms")
