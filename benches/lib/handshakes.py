#!/usr/bin/env python3
"""Full TLS 1.3 handshakes against one address, each naming a random one of N sites in its SNI.

    handshakes.py HOST PORT SITES SECONDS PROCESSES

Each process opens a new TCP connection per handshake, with no session ticket (so every one is a
full handshake), names s<i>.test or www.s<i>.test (i random below SITES), completes the handshake
and closes. Prints the number of handshakes completed and failed, summed over the processes.
The caller divides by the server's CPU time over the same span: the figure is then the server's
cost, whatever the client's speed.
"""

import multiprocessing
import random
import socket
import ssl
import sys
import time


def run(host, port, sites, seconds, results):
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    done = failed = 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        i = random.randrange(sites)
        name = f"s{i}.test" if random.random() < 0.5 else f"www.s{i}.test"
        try:
            with socket.create_connection((host, port), timeout=5) as raw:
                with context.wrap_socket(raw, server_hostname=name) as tls:
                    if not tls.getpeercert(binary_form=True):
                        failed += 1
                        continue
            done += 1
        except OSError:
            failed += 1
    results.put((done, failed))


def main():
    host, port, sites, seconds, processes = sys.argv[1:6]
    results = multiprocessing.Queue()
    workers = [
        multiprocessing.Process(
            target=run, args=(host, int(port), int(sites), float(seconds), results)
        )
        for _ in range(int(processes))
    ]
    for worker in workers:
        worker.start()
    done = failed = 0
    for _ in workers:
        d, f = results.get()
        done += d
        failed += f
    for worker in workers:
        worker.join()
    print(done, failed)


if __name__ == "__main__":
    main()
