#!/usr/bin/env python3
"""The longest a request waits: keep-alive HTTPS requests on a few connections until SIGTERM.

    stall.py HOST PORT SNI CONNECTIONS

Each connection (one thread each) sends GET / with SNI and Host SNI, reads the answer, pauses
5 ms and sends the next. On SIGTERM it prints the number of requests, failed requests, and the
longest and the 99th-percentile latency in milliseconds. Run beside something that may stall
the server (a reload), it shows how long a client noticed.
"""

import http.client
import signal
import socket
import ssl
import sys
import threading
import time

stop = threading.Event()


def run(host, port, sni, latencies, failures):
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    conn = None
    while not stop.is_set():
        start = time.monotonic()
        try:
            if conn is None:
                raw = socket.create_connection((host, port), timeout=10)
                conn = http.client.HTTPConnection(host, port, timeout=10)
                conn.sock = context.wrap_socket(raw, server_hostname=sni)
            conn.request("GET", "/", headers={"Host": sni})
            conn.getresponse().read()
            latencies.append(time.monotonic() - start)
        except (OSError, http.client.HTTPException):
            failures.append(1)
            conn = None
        time.sleep(0.005)


def main():
    host, port, sni, connections = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    latencies, failures = [], []
    threads = [
        threading.Thread(target=run, args=(host, port, sni, latencies, failures))
        for _ in range(connections)
    ]
    for t in threads:
        t.start()
    while not stop.is_set():
        stop.wait(0.1)
    for t in threads:
        t.join()
    latencies.sort()
    worst = latencies[-1] * 1000 if latencies else 0
    p99 = latencies[int(len(latencies) * 0.99)] * 1000 if latencies else 0
    print(len(latencies), len(failures), f"{worst:.1f}", f"{p99:.1f}")


if __name__ == "__main__":
    main()
