"""A fixed number of single-record acks=all produces from N keep-alive clients (issue 13).

usage: python3 drive.py PORT REQUESTS CLIENTS TOPIC
Creates TOPIC (1 partition), then sends REQUESTS // CLIENTS produces per client, each one
100-byte-value record as application/json; prints the count, errors and seconds. Counts,
not speed: the profile script measures the broker under a known number of requests.
"""

import http.client
import sys
import threading
import time

port, requests, clients, topic = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
body = b'{"records":[{"value":"' + b"x" * 90 + b'"}]}'
json = {"content-type": "application/json"}

c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
c.request("POST", "/v1/topics", b'{"name":"%s","partitions":1}' % topic.encode(), json)
r = c.getresponse()
r.read()
if r.status != 201:
    sys.exit(f"creating {topic}: {r.status}")
c.close()

errors = [0]


def client(n):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    for _ in range(n):
        c.request("POST", f"/v1/topics/{topic}/records?acks=all", body, json)
        r = c.getresponse()
        r.read()
        if r.status != 200:
            errors[0] += 1
    c.close()


started = time.time()
threads = [threading.Thread(target=client, args=(requests // clients,)) for _ in range(clients)]
for t in threads:
    t.start()
for t in threads:
    t.join()
print(f"requests {requests // clients * clients} errors {errors[0]} secs {time.time() - started:.1f}")
sys.exit(1 if errors[0] else 0)
