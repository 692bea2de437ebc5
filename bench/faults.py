"""Broker sizing for ingest outages: what a queued reading costs Mosquitto, and how fast the queue grows.

    .venv/bin/python -m bench.faults sizing --messages 200000      # measure (real broker, real ingest)
    .venv/bin/python -m bench.faults model --per-message-bytes 560 # queue growth with device re-sends
    .venv/bin/python -m bench.faults queue-full                    # what happens when the queue is full

`sizing` makes the ingest's persistent session exist (ingest connects once and
stops), then publishes pre-signed readings QoS 1 while ingest is down, so they
pile up in the broker for that session, and reads the broker's VmRSS before and
after. It also times the broker's save of that queue (its SIGTERM save, the same
work as every autosave), a restart that reloads it, and how long ingest takes
to drain it.

`model` computes how many messages the ingest's queue holds after an outage of
a given length: the readings the devices generate plus the re-sends of the
readings they keep unacknowledged (edge/agent.py AgentSettings: a reading in
the oldest `resend_window` unacked is re-sent 30 s after it was sent, then
after 60, 120, 240, 480 s, then every 600 s). The broker does not deduplicate,
so each re-send is one more queued message.

`queue-full` runs a broker whose config is the project's, rendered into a
temporary home, with only `max_queued_messages` lowered (the repository's
mosquitto.conf is not touched), a real fleet, and ingest down long enough to
overflow that queue; then it brings ingest back and reports whether the
devices' re-sends filled what the broker dropped.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import sqlite3
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from nacl.signing import SigningKey

from broker import mosquitto
from broker.mqtt.client_ids import mqtt_client_id
from edge.agent import AgentSettings
from ledger.chain.protocol import device_topic, sign_reading
from ledger.clock import now_ms
from ledger.home import Home
from ledger.processes import STDOUT, Child, wait_until
from ledger.processes import start as start_child
from ledger.service.homes import initialize
from ledger.service.rpc import RemoteLedger, open_ledger


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


class _Ingest:
    def __init__(self, home: Home, port: int, *extra: str) -> None:
        self.home, self.port, self.extra = home, port, extra
        self.proc: Child | None = None

    def start(self) -> None:
        env = {**os.environ, "CITYLEDGER_HOME": str(self.home.root), "CITYLEDGER_MQTT_PORT": str(self.port)}
        self.proc = start_child(
            [sys.executable, "-m", "ledger.cli", "ingest", *self.extra],
            env=env,
            stdout=self.home.logs / "ingest.log",
            stderr=STDOUT,
        )
        wait_until(lambda: isinstance(open_ledger(self.home), RemoteLedger), 60, 0.1, what="the ingest's API")

    hung = 0  # SIGTERMs ingest ignored (see docs/reliability.md: a CPython 3.11 SimpleQueue bug)

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None:
            proc.stop(timeout=60)
            if proc.forced:
                _Ingest.hung += 1
                print(f"ingest (pid {proc.pid}) ignored SIGTERM for 60 s: killed", file=sys.stderr)


# ---------------------------------------------------------------- sizing


def sizing(messages: int, devices: int) -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix="cityledger-sizing-"))
    home = Home(root)
    port = _free_port()
    initialize(home)
    broker = mosquitto.start(home, port)
    ingest = _Ingest(home, port)
    clients: list[mqtt.Client] = []
    try:
        ingest.start()  # creates the ingest's persistent session (clean_start=False, 7-day expiry)
        api = open_ledger(home)
        per = messages // devices
        now = now_ms()
        print(f"enrolling {devices} devices, signing {per * devices} readings...", file=sys.stderr)
        payloads: list[list[tuple[str, bytes]]] = []
        creds = []
        for i in range(devices):
            key = SigningKey.generate()
            dev = f"wm-d01-{i:06d}"
            out = api.enroll_device(device=dev, kind="water", district="d01", public_key=key.verify_key.encode().hex())
            creds.append((dev, out["mqtt_password"]))
            topic = device_topic("d01", "water", dev, "reading")
            payloads.append(
                [
                    (topic, sign_reading(key, device=dev, kind="water", seq=s + 1, ts=now + s, value=s).payload())
                    for s in range(per)
                ]
            )
        total = per * devices
        payload_bytes = sum(len(p) for ps in payloads for _, p in ps) / total
        ingest.stop()  # the session stays, subscribed to city/#: from now on the broker queues for it
        time.sleep(2)
        rss0 = _rss_kib(broker.pid)

        acked = [0]
        lock = threading.Lock()

        def on_publish(client: mqtt.Client, userdata: Any, mid: int, rc: Any, props: Any) -> None:
            with lock:
                acked[0] += 1

        for dev, password in creds:
            c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=mqtt_client_id(dev), protocol=mqtt.MQTTv5)
            c.username_pw_set(dev, password)
            c.max_queued_messages_set(0)
            c.max_inflight_messages_set(500)
            c.on_publish = on_publish
            c.connect("127.0.0.1", port)
            c.loop_start()
            clients.append(c)
        started = time.monotonic()
        for s in range(per):
            for c, device_payloads in zip(clients, payloads, strict=True):
                topic, payload = device_payloads[s]
                c.publish(topic, payload, qos=1)
        wait_until(lambda: acked[0] >= total, 600, 0.1, what="every PUBACK")
        publish_s = time.monotonic() - started
        for c in clients:
            c.disconnect()
            c.loop_stop()
        clients.clear()
        time.sleep(2)
        rss1 = _rss_kib(broker.pid)

        # The save on SIGTERM is the same full write as every autosave (autosave_interval 10).
        t = time.monotonic()
        broker.stop(timeout=600)
        save_s = time.monotonic() - t
        db_bytes = (home.broker_data / "mosquitto.db").stat().st_size
        t = time.monotonic()
        broker = mosquitto.start(home, port)
        restart_s = time.monotonic() - t
        time.sleep(1)
        rss_restored = _rss_kib(broker.pid)

        base = 0
        t = time.monotonic()
        ingest.start()
        api = open_ledger(home)
        wait_until(lambda: api.status()["readings"] - base >= total, 3600, 0.5, what="ingest to drain the queue")
        drain_s = time.monotonic() - t
        return {
            "messages_queued": total,
            "payload_bytes_avg": round(payload_bytes, 1),
            "broker_rss_before_kib": rss0,
            "broker_rss_after_kib": rss1,
            "bytes_per_queued_message": round((rss1 - rss0) * 1024 / total, 1),
            "publish_s": round(publish_s, 1),
            "persistence_file_bytes": db_bytes,
            "persistence_bytes_per_message": round(db_bytes / total, 1),
            "save_s (SIGTERM save = one autosave)": round(save_s, 2),
            "restart_with_queue_s": round(restart_s, 2),
            "broker_rss_after_restart_kib": rss_restored,
            "ingest_drain_s": round(drain_s, 1),
            "ingest_drain_per_s": round(total / drain_s),
            "ingest_ignored_sigterm": _Ingest.hung,
            "home": str(root),
        }
    finally:
        for c in clients:
            c.disconnect()
            c.loop_stop()
        ingest.stop()
        broker.stop(timeout=600)


# ---------------------------------------------------------------- the queue model


DEFAULT_AGENT = AgentSettings()


def resend_times(settings: AgentSettings = DEFAULT_AGENT) -> list[float]:
    """Offsets after a reading's first send at which it is sent again while unacknowledged (first hour+)."""
    out, t, attempts = [], settings.resend_after, 0
    while t <= 30 * 24 * 3600:
        out.append(t)
        attempts += 1
        t += min(settings.resend_max, settings.resend_after * (1 << min(attempts, 32)))
        if len(out) > 8 and out[-1] - out[-2] == settings.resend_max:
            break
    return out


def queued_after(
    outage_s: float, devices: int, interval_s: float, settings: AgentSettings = DEFAULT_AGENT
) -> tuple[float, float]:
    """(generated, re-sent) messages queued for ingest after `outage_s` with no ack, whole fleet.

    Per device: a reading every `interval_s`; the first `resend_window` of the outage
    (the ack is frozen at its start) are re-sent on the schedule of `resend_times`.
    """
    generated = outage_s / interval_s
    times = resend_times(settings)
    last_fixed = times[-1]
    window = min(settings.resend_window, int(generated))
    resent = 0.0
    for k in range(window):
        age = outage_s - k * interval_s
        n = sum(1 for x in times if x <= age)
        if age > last_fixed:
            n += int((age - last_fixed) // settings.resend_max)
        resent += n
    return generated * devices, resent * devices


def time_to_fill(capacity: int, devices: int, interval_s: float, resends: bool = True) -> float:
    lo, hi = 0.0, 400 * 24 * 3600.0
    for _ in range(100):
        mid = (lo + hi) / 2
        g, r = queued_after(mid, devices, interval_s)
        if g + (r if resends else 0) >= capacity:
            hi = mid
        else:
            lo = mid
    return hi


def model(per_message_bytes: float, capacity: int) -> dict[str, Any]:
    cases = {
        "cityledger up default: 40 devices every 5 s (8 readings/s)": (40, 5.0),
        "1,000 readings/s: 5,000 devices every 5 s": (5000, 5.0),
        "1,000 readings/s: 1,000 devices every 1 s": (1000, 1.0),
    }
    out: dict[str, Any] = {"resend_offsets_s": resend_times()[:8], "capacity": capacity}
    for name, (devices, interval) in cases.items():
        full_plain = time_to_fill(capacity, devices, interval, resends=False)
        full = time_to_fill(capacity, devices, interval)
        g, r = queued_after(full, devices, interval)
        rows = {}
        for hours in (0.25, 1, 6, 24):
            gq, rq = queued_after(hours * 3600, devices, interval)
            rows[f"{hours:g} h"] = {
                "generated": round(gq),
                "resent": round(rq),
                "queued": round(gq + rq),
                "broker_MiB": round((gq + rq) * per_message_bytes / 2**20),
            }
        out[name] = {
            "readings_per_s": devices / interval,
            "steady_resends_per_s": round(devices * AgentSettings().resend_window / AgentSettings().resend_max, 1),
            "full_after_h_without_resends": round(full_plain / 3600, 2),
            "full_after_h": round(full / 3600, 2),
            "at_full_generated": round(g),
            "at_full_resent": round(r),
            "broker_GiB_at_full": round(capacity * per_message_bytes / 2**30, 2),
            "queue": rows,
        }
    return out


# ---------------------------------------------------------------- queue full


def queue_full(limit: int, devices: int, interval: float, down_s: float) -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix="cityledger-qfull-"))
    home = Home(root)
    port = _free_port()
    initialize(home)
    mosquitto.write_config(home, port)
    text = home.broker_config.read_text()
    lines = [
        f"max_queued_messages {limit}" if ln.startswith("max_queued_messages ") else ln for ln in text.splitlines()
    ]
    config = home.broker / "mosquitto-small-queue.conf"
    config.write_text("\n".join(lines) + "\n")
    log_path = mosquitto.log_path(home)
    broker = start_child(
        ["stdbuf", "-oL", mosquitto.mosquitto_binary(), "-c", str(config)], stdout=log_path, stderr=STDOUT
    )
    wait_until(lambda: socket.socket().connect_ex(("127.0.0.1", port)) == 0, 10, 0.1, what="the broker")
    ingest = _Ingest(home, port)
    env = {**os.environ, "CITYLEDGER_HOME": str(root), "CITYLEDGER_MQTT_PORT": str(port)}
    fleet = None
    outbox = home.fleet / "outbox.sqlite"

    def states() -> tuple[int, int, int]:
        con = sqlite3.connect(f"file:{outbox}?mode=ro", uri=True, timeout=30)
        try:
            last, acked = con.execute("SELECT sum(last_seq), sum(acked_seq) FROM devices").fetchone()
            (pending,) = con.execute("SELECT count(*) FROM outbox").fetchone()
        finally:
            con.close()
        return int(last or 0), int(acked or 0), int(pending)

    try:
        ingest.start()
        fleet = start_child(
            [sys.executable, "-m", "ledger.cli", "fleet", "--devices", str(devices), "--interval", str(interval)],
            env=env,
            stdout=home.logs / "fleet.log",
            stderr=STDOUT,
        )
        wait_until(lambda: outbox.exists() and states()[1] > 0, 60, 0.1, what="first acks")
        time.sleep(2)
        ingest.stop()
        time.sleep(down_s)
        generated_down = states()
        ingest.start()
        t = time.monotonic()
        target = generated_down[0]
        wait_until(lambda: states()[1] >= target, 1800, 0.5, what="the ledger to catch up")
        recover_s = time.monotonic() - t
        dropped = log_path.read_text(errors="replace").count("Outgoing messages are being dropped")
        api = open_ledger(home)
        status = api.status()
        return {
            "max_queued_messages": limit,
            "devices": devices,
            "interval_s": interval,
            "ingest_down_s": down_s,
            "generated_by_end_of_outage": target,
            "broker_drop_warnings": dropped,
            "recover_s (every reading generated by the end of the outage acked)": round(recover_s, 1),
            "ledger_readings": status["readings"],
            "duplicates": status["duplicates"],
            "ingest_ignored_sigterm": _Ingest.hung,
            "home": str(root),
        }
    finally:
        if fleet is not None:
            fleet.stop(signal.SIGTERM, timeout=60)
        ingest.stop()
        broker.stop(timeout=60)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("sizing")
    s.add_argument("--messages", type=int, default=200_000)
    s.add_argument("--devices", type=int, default=100)
    m = sub.add_parser("model")
    m.add_argument("--per-message-bytes", type=float, required=True)
    m.add_argument("--capacity", type=int, default=5_000_000)
    q = sub.add_parser("queue-full")
    q.add_argument("--limit", type=int, default=1000)
    q.add_argument("--devices", type=int, default=10)
    q.add_argument("--interval", type=float, default=0.2)
    q.add_argument("--down", type=float, default=20.0)
    args = p.parse_args()
    if args.cmd == "sizing":
        result = sizing(args.messages, args.devices)
    elif args.cmd == "model":
        result = model(args.per_message_bytes, args.capacity)
    else:
        result = queue_full(args.limit, args.devices, args.interval, args.down)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
