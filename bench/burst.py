"""Burst benchmark: pre-signed readings through the real broker into the real ingest.

    .venv/bin/python -m bench.burst --devices 100 --readings 200

Prints throughput (ledgered readings per second, from the first publish to the
last reading durable), ingest CPU per reading, raw verify cost, peak ingest RSS,
and DuckDB bytes per reading. A first cut of issue 9's `cityledger bench`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import paho.mqtt.client as mqtt
from nacl.signing import SigningKey

from broker import mosquitto
from ledger.home import Home
from ledger.progress import ProgressBar
from ledger.protocol import device_topic, sign_reading
from ledger.rpc import RemoteLedger, open_ledger
from ledger.writer import initialize


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _proc_cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def verify_cost_us(n: int = 5000) -> float:
    from ledger.protocol import verify_reading

    key = SigningKey.generate()
    r = sign_reading(key, device="x", kind="water", seq=1, ts=1, value=1)
    vk = key.verify_key
    t = time.perf_counter()
    for _ in range(n):
        verify_reading(vk, r)
    return (time.perf_counter() - t) / n * 1e6


def run(devices: int, readings: int, block_readings: int, block_seconds: float) -> dict:
    root = Path(tempfile.mkdtemp(prefix="cityledger-bench-"))
    home = Home(root)
    port = _free_port()
    initialize(home)
    broker = mosquitto.start(home, port)
    env = {**os.environ, "CITYLEDGER_HOME": str(root), "CITYLEDGER_MQTT_PORT": str(port)}
    ingest = subprocess.Popen([sys.executable, "-m", "ledger.cli", "--log-level", "WARNING", "ingest",
                               "--block-readings", str(block_readings), "--block-seconds", str(block_seconds)],
                              env=env)
    try:
        deadline = time.monotonic() + 30
        while not isinstance(open_ledger(home), RemoteLedger):
            if time.monotonic() > deadline or ingest.poll() is not None:
                raise RuntimeError("ingest did not start")
            time.sleep(0.1)
        api = open_ledger(home)
        print(f"preparing {devices} devices x {readings} pre-signed readings...", file=sys.stderr)
        now = int(time.time() * 1000)
        clients, payloads = [], []
        for i in range(devices):
            key = SigningKey.generate()
            dev = f"wm-d01-{i:06d}"
            out = api.enroll_device(device=dev, kind="water", district="d01", public_key=key.verify_key.encode().hex())
            c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=dev, protocol=mqtt.MQTTv5)
            c.username_pw_set(dev, out["mqtt_password"])
            c.max_queued_messages_set(0)
            c.max_inflight_messages_set(1000)
            c.connect("127.0.0.1", port)
            c.loop_start()
            clients.append(c)
            topic = device_topic("d01", "water", dev, "reading")
            payloads.append([(topic, sign_reading(key, device=dev, kind="water", seq=s + 1, ts=now + s,
                                                  value=s).payload()) for s in range(readings)])
        base = api.status()["readings"]
        total = devices * readings
        cpu0 = _proc_cpu_seconds(ingest.pid)
        started = time.monotonic()
        for s in range(readings):  # round-robin, as a city's devices interleave
            for c, device_payloads in zip(clients, payloads):
                topic, payload = device_payloads[s]
                c.publish(topic, payload, qos=1)
        bar = ProgressBar("ledgered")
        while True:
            done = api.status()["readings"] - base
            bar.update(done, total)
            if done >= total:
                break
            time.sleep(0.2)
        bar.close()
        elapsed = time.monotonic() - started
        cpu = _proc_cpu_seconds(ingest.pid) - cpu0
        status = api.status()
        rss = _peak_rss_mb(ingest.pid)
        for c in clients:
            c.disconnect()
            c.loop_stop()
    finally:
        ingest.terminate()
        ingest.wait(timeout=60)
        broker.terminate()
        broker.wait(timeout=30)
    db_bytes = home.database.stat().st_size
    verify_us = verify_cost_us()
    result = {
        "readings": total,
        "seconds": round(elapsed, 2),
        "readings_per_s": round(total / elapsed),
        "ingest_cpu_us_per_reading": round(cpu / total * 1e6, 1),
        "verify_us_per_signature": round(verify_us, 1),
        "ratio": round(cpu / total * 1e6 / verify_us, 2),
        "peak_rss_mb": round(rss, 1),
        "bytes_per_reading": round(db_bytes / status["readings"], 1),
        "blocks": status["blocks"],
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
    }
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--devices", type=int, default=100)
    p.add_argument("--readings", type=int, default=200, help="per device")
    p.add_argument("--block-readings", type=int, default=5000)
    p.add_argument("--block-seconds", type=float, default=1.0)
    args = p.parse_args()
    print(json.dumps(run(args.devices, args.readings, args.block_readings, args.block_seconds), indent=2))


if __name__ == "__main__":
    main()
