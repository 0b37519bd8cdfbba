"""One load client for both servers of benches/compare/redis.sh (issue 13).

usage: python3 client.py http|resp PORT TARGET --clients C --batch B --requests N
                         --seconds T [--procs K]
       python3 client.py summary RESULTS.tsv

http: POST /v1/topics/TARGET/records?acks=all with B records of 100 bytes (a JSON string of
      98 bytes and its quotes, as benches/loadgen.rs sends), one request in flight per
      keep-alive connection; an answer counts if its status is 200.
resp: B pipelined `XADD TARGET * v <100-byte value>` per round trip (B = 1: one command),
      one round trip in flight per connection; an answer counts once all B replies arrived
      and none is an error.

C connections spread over K processes (default 2, the machine's cores), each an epoll loop
over raw sockets, so the same code and the same per-request client cost drive both servers.
Bounded: at most N requests in all and T seconds of sending (a request in flight at T is
waited for, at most 30 s). Prints one JSON line: requests, records, errors, seconds,
records/s, requests/s, p50/p99 latency (ms) and the client's own CPU-seconds.

`summary` reads the rows the script wrote and prints medians and tidelog/Redis ratios.
"""

import json
import multiprocessing as mp
import selectors
import socket
import statistics
import sys
import time
from array import array

VALUE_JSON = b'"' + b"x" * 98 + b'"'
VALUE_RESP = b"v" * 100
GRACE = 30.0


def http_request(port, topic, batch):
    body = b'{"records":[' + b",".join([b'{"value":' + VALUE_JSON + b"}"] * batch) + b"]}"
    head = (
        f"POST /v1/topics/{topic}/records?acks=all HTTP/1.1\r\n"
        f"host: 127.0.0.1:{port}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\n\r\n"
    ).encode()
    return head + body


def resp_request(stream, batch):
    s = stream.encode()
    one = b"*5\r\n$4\r\nXADD\r\n$%d\r\n%s\r\n$1\r\n*\r\n$1\r\nv\r\n$%d\r\n%s\r\n" % (
        len(s), s, len(VALUE_RESP), VALUE_RESP)
    return one * batch


class Conn:
    __slots__ = ("sock", "out", "sent", "buf", "t0", "done", "need", "lines", "hdr")

    def __init__(self, port):
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.setblocking(False)
        self.done = 0


def http_complete(c):
    """None while incomplete, else True (200) or False."""
    buf = c.buf
    if c.hdr < 0:
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            return None
        low = bytes(buf[:end]).lower()
        i = low.find(b"content-length:")
        if i < 0:
            return False
        j = low.find(b"\r\n", i)
        c.need = end + 4 + int(low[i + 15: j if j >= 0 else end])
        c.hdr = end
    if len(buf) < c.need:
        return None
    return buf[9:12] == b"200"


def resp_complete(c, batch, start):
    buf = c.buf
    c.lines += buf.count(b"\r\n", max(0, start - 1))
    if buf[:1] == b"-" or buf.find(b"\n-", max(0, start - 1)) >= 0:
        return False  # an error reply: stop this connection, count it
    if c.lines < 2 * batch:
        return None
    return True


def worker(proto, port, target, conns, batch, per_conn, start_at, seconds, out):
    req = http_request(port, target, batch) if proto == "http" else resp_request(target, batch)
    sel = selectors.DefaultSelector()
    lat = array("d")
    errors = 0
    cs = [Conn(port) for _ in range(conns)]
    # One receive buffer for all connections: `recv(256 KiB)` would allocate (and, past
    # glibc's mmap threshold, map and unmap) a fresh buffer for every answer, a cost that
    # depended on the heap's state and so differed between the two protocols.
    rbuf = bytearray(1 << 18)
    rview = memoryview(rbuf)
    deadline = start_at + seconds
    while time.time() < start_at:
        time.sleep(0.001)
    cpu0 = time.process_time()
    t_start = time.perf_counter()
    wall_deadline = t_start + (deadline - time.time())
    last_done = t_start
    active = 0

    def send(c):
        c.buf = bytearray()
        c.hdr = -1
        c.lines = 0
        c.t0 = time.perf_counter()
        try:
            n = c.sock.send(req)
        except BlockingIOError:
            n = 0
        if n < len(req):
            c.out = memoryview(req)
            c.sent = n
            sel.modify(c.sock, selectors.EVENT_WRITE, c)
        else:
            c.out = None

    for c in cs:
        sel.register(c.sock, selectors.EVENT_READ, c)
        send(c)
        active += 1
    while active:
        now = time.perf_counter()
        if now > wall_deadline + GRACE:
            errors += active  # never answered
            break
        for key, ev in sel.select(1.0):
            c = key.data
            if ev & selectors.EVENT_WRITE:
                try:
                    c.sent += c.sock.send(c.out[c.sent:])
                except BlockingIOError:
                    pass
                if c.sent >= len(req):
                    c.out = None
                    sel.modify(c.sock, selectors.EVENT_READ, c)
                continue
            n = c.sock.recv_into(rbuf)
            if not n:
                errors += 1
                sel.unregister(c.sock)
                active -= 1
                continue
            start = len(c.buf)
            c.buf += rview[:n]
            ok = http_complete(c) if proto == "http" else resp_complete(c, batch, start)
            if ok is None:
                continue
            t = time.perf_counter()
            last_done = t
            c.done += 1
            if ok:
                lat.append((t - c.t0) * 1000.0)
            else:
                errors += 1
            if ok and c.done < per_conn and t < wall_deadline:
                send(c)
            else:
                sel.unregister(c.sock)
                active -= 1
    for c in cs:
        c.sock.close()
    out.send((lat.tobytes(), errors, last_done - t_start, time.process_time() - cpu0))


def run(argv):
    proto, port, target = argv[0], int(argv[1]), argv[2]
    opts = dict(zip(argv[3::2], argv[4::2]))
    clients = int(opts["--clients"])
    batch = int(opts["--batch"])
    requests = int(opts["--requests"])
    seconds = float(opts["--seconds"])
    procs = min(int(opts.get("--procs", 2)), clients)
    per_conn = max(1, requests // clients)
    start_at = time.time() + 0.5
    pipes, ps = [], []
    for i in range(procs):
        conns = clients // procs + (1 if i < clients % procs else 0)
        r, w = mp.Pipe(duplex=False)
        p = mp.Process(target=worker,
                       args=(proto, port, target, conns, batch, per_conn, start_at, seconds, w))
        p.start()
        pipes.append(r)
        ps.append(p)
    lat = array("d")
    errors, secs, cpu = 0, 0.0, 0.0
    for r in pipes:
        b, e, s, c = r.recv()
        lat.frombytes(b)
        errors += e
        secs = max(secs, s)
        cpu += c
    for p in ps:
        p.join()
    lat = sorted(lat)
    n = len(lat)

    def pct(q):
        return round(lat[min(n - 1, int(q * n))], 3) if n else None

    print(json.dumps({
        "requests": n, "records": n * batch, "errors": errors, "seconds": round(secs, 3),
        "records_per_s": round(n * batch / secs, 1) if secs else 0,
        "requests_per_s": round(n / secs, 1) if secs else 0,
        "p50_ms": pct(0.50), "p99_ms": pct(0.99), "client_cpu_s": round(cpu, 3),
    }))
    return 1 if errors or not n else 0


def fmt(x):
    if x is None:
        return "-"
    if x >= 1_000_000:
        return f"{x / 1e6:.2f} M"
    if x >= 1000:
        return f"{x:,.0f}"
    return f"{x:.2f}"


def summary(path):
    """Rows: round workload server client records_per_s requests_per_s p50 p99 cpu_s recs_per_cpu_s."""
    rows = [line.rstrip("\n").split("\t") for line in open(path) if line.strip()]
    head, rows = rows[0], rows[1:]
    rows = [dict(zip(head, r)) for r in rows]
    num = ("records_per_s", "requests_per_s", "p50_ms", "p99_ms", "server_cpu_s", "records_per_cpu_s")
    for r in rows:
        for k in num:
            r[k] = None if r[k] in ("", "-", "None") else float(r[k])
    workloads = list(dict.fromkeys(r["workload"] for r in rows))
    med = lambda xs: statistics.median(xs) if xs else None  # noqa: E731
    print("medians over rounds (records/s; latency of one request; server records per CPU-second)")
    print(f"{'workload':<10} {'server (client)':<28} {'records/s':>12} {'p50 ms':>8} {'p99 ms':>8}"
          f" {'rec/CPU-s':>12}")
    for w in workloads:
        for key in dict.fromkeys((r["server"], r["client"]) for r in rows if r["workload"] == w):
            rs = [r for r in rows if r["workload"] == w and (r["server"], r["client"]) == key]
            vals = {k: med([r[k] for r in rs if r[k] is not None]) for k in num}
            print(f"{w:<10} {key[0] + ' (' + key[1] + ')':<28} {fmt(vals['records_per_s']):>12}"
                  f" {fmt(vals['p50_ms']):>8} {fmt(vals['p99_ms']):>8}"
                  f" {fmt(vals['records_per_cpu_s']):>12}")
    for redis_client, title in (
            ("client.py", "tidelog / Redis, both driven by client.py (the aims' ratios)"),
            ("redis-benchmark", "tidelog (client.py) / Redis driven by redis-benchmark (reference)")):
        print()
        print(title + ", per round, then median")
        for w in workloads:
            by_round = {}
            for r in rows:
                if r["workload"] != w:
                    continue
                if (r["server"], r["client"]) == ("tidelog", "client.py"):
                    by_round.setdefault(r["round"], {})["t"] = r
                if (r["server"], r["client"]) == ("redis", redis_client):
                    by_round.setdefault(r["round"], {})["r"] = r
            rs, cs = [], []
            for _, d in sorted(by_round.items()):
                if "t" in d and "r" in d:
                    rs.append(d["t"]["records_per_s"] / d["r"]["records_per_s"])
                    if d["t"]["records_per_cpu_s"] and d["r"]["records_per_cpu_s"]:
                        cs.append(d["t"]["records_per_cpu_s"] / d["r"]["records_per_cpu_s"])
            line = lambda xs: (" ".join(f"{x:.2f}" for x in xs) + "  median "  # noqa: E731
                               + (f"{med(xs):.2f}x" if xs else "-"))
            print(f"{w:<10} records/s: {line(rs):<34} records per server CPU-s: {line(cs)}")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "summary":
        summary(sys.argv[2])
        sys.exit(0)
    if len(sys.argv) < 4 or sys.argv[1] not in ("http", "resp"):
        sys.exit(__doc__)
    sys.exit(run(sys.argv[1:]))
