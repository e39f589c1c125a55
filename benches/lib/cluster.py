#!/usr/bin/env python3
"""Runs benches/cluster.sh's measurement: etcd, Pebble and three Rampart nodes on loopback.

    cluster.py RAMPART WORKDIR SITES

Children are started in their own process group and killed at exit; every wait is bounded.
"""

import base64
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request

NODES = [("a", "127.0.0.2"), ("b", "127.0.0.3"), ("c", "127.0.0.4")]
SERVE_LIMIT = 900  # seconds for every node to serve every site
children = []


def free_port(ip="127.0.0.1"):
    with socket.socket() as s:
        s.bind((ip, 0))
        return s.getsockname()[1]


def spawn(args, log, env=None, cwd=None):
    out = open(log, "wb")
    child = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=cwd,
                             stdin=subprocess.DEVNULL)
    children.append(child)
    return child


def wait_for(what, check, limit):
    end = time.monotonic() + limit
    while time.monotonic() < end:
        try:
            if check():
                return
        except OSError:
            pass
        time.sleep(0.1)
    sys.exit(f"[cluster] ERROR: {what} not within {limit} s")


def http_status(url):
    try:
        with urllib.request.urlopen(url, timeout=2) as reply:
            return reply.status
    except urllib.error.HTTPError as error:
        return error.code
    except OSError:
        return None


def make_ca(work):
    """A CA and a certificate for Pebble's own HTTPS listener (127.0.0.1), by openssl."""
    def run(*args):
        subprocess.run(args, check=True, capture_output=True, cwd=work)
    run("openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
        "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=bench CA")
    run("openssl", "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
        "-keyout", "pebble.key", "-out", "pebble.csr", "-subj", "/CN=localhost")
    with open(os.path.join(work, "ext"), "w") as ext:
        ext.write("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    run("openssl", "x509", "-req", "-in", "pebble.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
        "-CAcreateserial", "-out", "pebble.pem", "-days", "2", "-extfile", "ext")


def main():
    rampart, work, sites = sys.argv[1], sys.argv[2], int(sys.argv[3])
    make_ca(work)

    client, peer = free_port(), free_port()
    etcd_url = f"http://127.0.0.1:{client}"
    spawn(["etcd", "--name", "bench", "--data-dir", os.path.join(work, "etcd"),
           "--listen-client-urls", etcd_url, "--advertise-client-urls", etcd_url,
           "--listen-peer-urls", f"http://127.0.0.1:{peer}",
           "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
           "--initial-cluster", f"bench=http://127.0.0.1:{peer}"],
          os.path.join(work, "etcd.log"))
    wait_for("etcd", lambda: http_status(f"{etcd_url}/health") == 200, 30)

    pebble_port, pebble_mgmt, http_port = free_port(), free_port(), free_port()
    with open(os.path.join(work, "pebble.json"), "w") as config:
        json.dump({"pebble": {
            "listenAddress": f"127.0.0.1:{pebble_port}",
            "managementListenAddress": f"127.0.0.1:{pebble_mgmt}",
            "certificate": "pebble.pem", "privateKey": "pebble.key",
            "httpPort": http_port, "tlsPort": free_port(), "ocspResponderURL": "",
            "externalAccountBindingRequired": False,
            "certificateValidityPeriod": 7776000,
        }}, config)
    env = dict(os.environ, PEBBLE_VA_ALWAYS_VALID="1", PEBBLE_VA_NOSLEEP="1",
               PEBBLE_WFE_NONCEREJECT="0", PEBBLE_AUTHZREUSE="0")
    spawn(["pebble", "-config", "pebble.json", "-strict=false"], os.path.join(work, "pebble.log"),
          env=env, cwd=work)

    def pebble_up():
        with socket.create_connection(("127.0.0.1", pebble_port), timeout=1):
            return True
    wait_for("pebble", pebble_up, 30)

    key = os.path.join(work, "cluster.key")
    with open(key, "w") as f:
        f.write(base64.b64encode(os.urandom(32)).decode() + "\n")
    os.chmod(key, 0o600)
    site_lines = "".join(
        f"  - {{ hosts: [s{i}.test], routes: [{{ path: /, respond: {{ body: ok }} }}] }}\n"
        for i in range(sites))
    nodes = []
    for name, ip in NODES:
        admin = f"{ip}:{free_port(ip)}"
        config = os.path.join(work, f"{name}.yaml")
        with open(config, "w") as f:
            f.write(
                f'listen:\n  https: "{ip}:{free_port(ip)}"\n  http: "{ip}:{http_port}"\n'
                f'  admin: "{admin}"\nstorage: {work}/storage-{name}\n'
                f"log:\n  level: info\n"
                f"cluster:\n  node: {name}\n  etcd:\n    endpoints: [\"{etcd_url}\"]\n"
                f"  encryption_key_file: {key}\n"
                f"acme:\n  directory: https://127.0.0.1:{pebble_port}/dir\n"
                f"  ca_bundle: {work}/ca.pem\nsites:\n{site_lines}")
        nodes.append((name, admin, config))

    started = time.monotonic()
    procs = []
    for name, admin, config in nodes:
        procs.append(spawn([rampart, "run", "-c", config], os.path.join(work, f"{name}.log")))
    for (name, admin, _), proc in zip(nodes, procs):
        def ready(admin=admin, proc=proc, name=name):
            if proc.poll() is not None:
                sys.exit(f"[cluster] ERROR: node {name} exited: see {work}/{name}.log")
            return http_status(f"http://{admin}/readyz") == 200
        wait_for(f"node {name} serving all {sites} sites", ready, SERVE_LIMIT)
    all_served = time.monotonic() - started

    orders = {}
    for name, _, _ in nodes:
        with open(os.path.join(work, f"{name}.log")) as log:
            for line in log:
                try:
                    event = json.loads(line)
                except ValueError:
                    continue
                if event.get("message") == "ordering certificate":
                    orders[event["site"]] = orders.get(event["site"], 0) + 1
    placed = sum(orders.values())
    duplicates = sum(1 for count in orders.values() if count > 1)

    with urllib.request.urlopen(f"{etcd_url}/metrics", timeout=5) as reply:
        metrics = reply.read().decode()
    handled = sum(float(m.group(1)) for m in
                  re.finditer(r"^grpc_server_started_total\{[^}]*\} (\S+)$", metrics, re.M))
    rss = []
    for proc in procs:
        with open(f"/proc/{proc.pid}/status") as status:
            kb = next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))
        rss.append(round(kb / 1024))

    print(f"sites={sites} orders={placed} duplicates={duplicates} "
          f"all_served={all_served:.1f}s etcd_req_per_cert={handled / sites:.1f} "
          f"rss_mb={','.join(str(r) for r in rss)}")
    ok = placed == sites and duplicates == 0
    for child in children:
        child.send_signal(signal.SIGTERM)
    for child in children:
        try:
            child.wait(timeout=10)
        except subprocess.TimeoutExpired:
            child.kill()
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    try:
        main()
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
