"""Hostile flood benchmark: one authenticated device sends garbage as fast as it can while honest devices publish.

    .venv/bin/python -m bench.flood --seconds 30 --honest 100 [--qos 0|1] [--workers W]
        [--suspend-after MIN --suspend-for MIN] [--hostile-only]

Runs the scenario twice on fresh homes (the real Mosquitto, `cityledger ingest` and
`cityledger fleet --interval 1` as subprocesses): once with the honest fleet only,
once with the hostile device flooding too. Prints JSON per run: honest readings
ledgered per second, their ack latency (reading ts to the sealing of its block, after
which ingest publishes the ack), hostile messages sent and processed per second,
ingest peak RSS and quarantine rows stored versus only counted.

The hostile device is also what `tests/test_flood.py` runs: `start_hostile` starts it
in its own process (`--hostile-worker`, configuration on stdin) so that it gets a
whole interpreter to itself, and it reports how many of its messages the broker
PUBACKed, which is what ingest must account for.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import platform
import random
import signal
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from nacl.signing import SigningKey
from paho.mqtt.enums import CallbackAPIVersion

from broker.mqtt.client_ids import mqtt_client_id
from ledger.chain.protocol import canonical_json, device_topic, sign_reading
from ledger.clock import now_ms
from ledger.processes import DEVNULL, PIPE, STDOUT, Child, start, wait_until

HOSTILE_DEVICE = "em-d09-666666"  # a district of its own, so no fleet device shares its name
HOSTILE_KIND, HOSTILE_DISTRICT = "electricity", "d09"
PRIMED = 3  # valid readings the hostile device sends first, so that it has seqs to replay
# Stay under the broker's max_packet_size even if it drops to 8192 bytes: the fixed header,
# the ~45-byte topic, the packet id and properties fit in the remaining 192 bytes.
MAX_HOSTILE_PAYLOAD = 8000
WINDOW = 2000  # hostile publishes awaiting their PUBACK at most (the publisher's own memory bound)
# An honest device the hostile one pretends to be in some payloads (the fleet's first electricity meter).
IMPERSONATED = "em-d01-000001"

# Share of each kind of garbage, in messages.
MIX: tuple[tuple[str, int], ...] = (
    ("random_bytes", 14),
    ("invalid_json", 12),
    ("nested", 6),
    ("nan_float", 10),
    ("duplicate_keys", 10),
    ("wrong_types", 8),
    ("oversize", 8),
    ("bad_signature", 14),
    ("replay", 10),
    ("impersonation", 5),
    ("status_garbage", 3),
)


def peak_rss_mb(pid: int) -> float:
    """VmHWM of a live process: the most resident memory it ever had."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmHWM for pid {pid}")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# ---------------------------------------------------------------- the hostile device


@dataclass(frozen=True)
class HostileConfig:
    host: str
    port: int
    username: str
    password: str
    key_hex: str  # the device's Ed25519 seed: it is authenticated, it just misbehaves
    seconds: float
    device: str = HOSTILE_DEVICE
    kind: str = HOSTILE_KIND
    district: str = HOSTILE_DISTRICT
    seed: int = 0
    qos: int = 1  # of the garbage (the primers always go QoS 1, so that they are ledgered)


class Garbage:
    """Hostile payloads for one device's own topics, each of them a reject for ingest.

    Replays re-sign the device's PRIMED seqs with other values (valid signature,
    seq taken: `replay`); bad signatures use seqs above anything sent; nothing here
    is a valid new reading or an exact copy (which would be ledgered or a duplicate).
    """

    def __init__(self, key: SigningKey, device: str, kind: str, district: str, seed: int) -> None:
        self.rng = random.Random(seed)
        self.device, self.kind = device, kind
        self.reading_topic = device_topic(district, kind, device, "reading")
        self.status_topic = device_topic(district, kind, device, "status")
        self.kinds = [k for k, _ in MIX]
        self.weights = [w for _, w in MIX]
        ts = now_ms()
        self.primes = [
            sign_reading(key, device=device, kind=kind, seq=s, ts=ts, value=1000 + s) for s in range(1, PRIMED + 1)
        ]
        self.replays = [
            sign_reading(key, device=device, kind=kind, seq=1 + i % PRIMED, ts=ts + i, value=5000 + i).payload()
            for i in range(64)
        ]
        self.template = self.primes[0].as_dict()

    def _reading_text(self, **override: str) -> bytes:
        """A reading-shaped object with some members spelt by hand (values as JSON text)."""
        members = {k: json.dumps(v) for k, v in self.template.items()}
        members.update(override)
        return ("{" + ",".join(f'"{k}":{v}' for k, v in members.items()) + "}").encode()

    def _random_sig(self) -> str:
        return base64.b64encode(self.rng.randbytes(64)).decode()

    def next(self) -> tuple[str, str, bytes]:
        """(kind of garbage, topic, payload)."""
        rng = self.rng
        kind = rng.choices(self.kinds, self.weights)[0]
        topic = self.reading_topic
        if kind == "random_bytes":
            payload = rng.randbytes(rng.randint(1, 1024))
        elif kind == "invalid_json":
            whole = self.primes[0].payload()
            payload = whole[: rng.randint(1, len(whole) - 1)]
        elif kind == "nested":
            depth = rng.randint(50, 500)
            payload = (
                b"[" * depth + b"]" * depth
                if rng.random() < 0.5
                else self._reading_text(value="[" * depth + "7" + "]" * depth)
            )
        elif kind == "nan_float":
            member = rng.choice(["value", "seq", "ts"])
            payload = self._reading_text(
                **{member: rng.choice(["NaN", "Infinity", "-Infinity", "1.5", "1e308", "-0.0", "7.0"])}
            )
        elif kind == "duplicate_keys":
            payload = self._reading_text(seq=f'{rng.randint(4, 10**6)},"seq":{rng.randint(4, 10**6)}')
        elif kind == "wrong_types":
            member, value = rng.choice(
                [
                    ("seq", '"7"'),
                    ("value", "true"),
                    ("v", "2"),
                    ("value", "-1"),
                    ("value", str(2**64)),
                    ("ts", "null"),
                    ("device", "7"),
                    ("kind", '"lava"'),
                    ("sig", '"short"'),
                    ("seq", "0"),
                ]
            )
            payload = self._reading_text(**{member: value})
        elif kind == "oversize":
            size = rng.randint(1025, MAX_HOSTILE_PAYLOAD)
            payload = b'{"pad":"' + b"x" * (size - 10) + b'"}' if rng.random() < 0.5 else rng.randbytes(size)
        elif kind == "bad_signature":
            seq = rng.randint(PRIMED + 1, 2**40)
            payload = canonical_json(
                {**self.template, "seq": seq, "ts": now_ms(), "value": rng.randint(0, 10**9), "sig": self._random_sig()}
            )
        elif kind == "replay":
            payload = rng.choice(self.replays)
        elif kind == "impersonation":
            claimed = rng.choice([IMPERSONATED, "em-d01-999999"])  # an honest device, or nobody enrolled
            payload = canonical_json(
                {
                    **self.template,
                    "device": claimed,
                    "seq": rng.randint(1, 10**6),
                    "ts": now_ms(),
                    "sig": self._random_sig(),
                }
            )
        else:  # status_garbage
            topic = self.status_topic
            payload = rng.choice([b"0nline", b"ONLINE", b"online ", b"", b"<script>", rng.randbytes(40)])
        return kind, topic, payload


def run_hostile(cfg: HostileConfig) -> dict[str, Any]:
    """Prime, then flood for cfg.seconds as fast as PUBACKs allow; returns what the broker took.

    `sent` counts garbage the broker PUBACKed with success, which is exactly what
    ingest receives from this device after the PRIMED valid readings.
    """
    key = SigningKey(bytes.fromhex(cfg.key_hex))
    garbage = Garbage(key, cfg.device, cfg.kind, cfg.district, cfg.seed)
    lock = threading.Lock()
    slots = threading.Semaphore(WINDOW)
    acks: Counter[str] = Counter()
    connected, stopping, cut = threading.Event(), threading.Event(), threading.Event()
    disconnects: list[str] = []  # unexpected ones: the broker cut us off (suspended, see ledger/service/budget.py)
    refusals: list[str] = []  # paho's reconnects after that, and what the broker answered
    reconnects: list[str] = []  # ... those it accepted (none, while the device is suspended)

    def on_publish(client: mqtt.Client, userdata: Any, mid: int, rc: Any, props: Any) -> None:
        with lock:
            acks["failed" if rc.is_failure else "ok"] += 1
        slots.release()

    def on_connect(client: mqtt.Client, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
        if cut.is_set():
            (refusals if rc.is_failure else reconnects).append(str(rc))
        elif not rc.is_failure:
            connected.set()

    def on_disconnect(client: mqtt.Client, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
        if stopping.is_set():
            return
        if cut.is_set():  # a reconnect attempt that the broker ended
            refusals.append(str(rc))
        else:
            disconnects.append(str(rc))
            cut.set()

    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=mqtt_client_id(cfg.username), protocol=mqtt.MQTTv5)
    client.username_pw_set(cfg.username, cfg.password)
    client.max_inflight_messages_set(WINDOW)
    client.max_queued_messages_set(0)
    client.on_publish, client.on_connect, client.on_disconnect = on_publish, on_connect, on_disconnect
    client.connect(cfg.host, cfg.port, keepalive=30)
    client.loop_start()
    try:
        if not connected.wait(10):
            raise RuntimeError("the hostile device could not connect")

        def publish(topic: str, payload: bytes, qos: int) -> bool:
            """False once the broker has cut us off."""
            while not slots.acquire(timeout=0.1):
                if cut.is_set():
                    return False
            if cut.is_set():
                return False
            info = client.publish(topic, payload, qos=qos)
            if info.rc == mqtt.MQTT_ERR_NO_CONN:
                return False
            if info.rc != mqtt.MQTT_ERR_SUCCESS:
                raise RuntimeError(f"publish failed locally: {info.rc}")
            return True

        for reading in garbage.primes:
            publish(garbage.reading_topic, reading.payload(), 1)
        kinds: Counter[str] = Counter()
        payload_bytes = published = 0
        started = time.monotonic()
        end = started + cfg.seconds
        while time.monotonic() < end:
            kind, topic, payload = garbage.next()
            if not publish(topic, payload, cfg.qos):
                break
            kinds[kind] += 1
            payload_bytes += len(payload)
            published += 1
        flood_seconds = time.monotonic() - started
        deadline = time.monotonic() + 60
        while not cut.is_set():  # every publish answered: then `ok` is exact
            with lock:
                answered = acks["ok"] + acks["failed"]
            if answered >= published + PRIMED:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {answered} of {published + PRIMED} publishes PUBACKed after 60 s")
            time.sleep(0.01)
        if cut.is_set():  # suspended: paho keeps trying to come back until the flood's time is up
            deadline = max(end, time.monotonic() + 3)
            while time.monotonic() < deadline or (not refusals and time.monotonic() < deadline + 10):
                time.sleep(0.05)
    finally:
        stopping.set()
        client.disconnect()
        client.loop_stop()
    return {
        "device": cfg.device,
        "qos": cfg.qos,
        "primed": PRIMED,
        "published": published,
        # QoS 1: what the broker PUBACKed, exactly what ingest receives; QoS 0: what left the socket.
        "sent": acks["ok"] - PRIMED,
        "refused": acks["failed"],
        "disconnects": disconnects,
        "reconnect_refusals": refusals[:3],
        "reconnects": reconnects,
        "seconds": round(flood_seconds, 3),
        "per_second": round(published / flood_seconds),
        "payload_bytes": payload_bytes,
        "kinds": dict(kinds),
    }


def start_hostile(cfg: HostileConfig) -> Child:
    """The hostile device in its own process; read its report with `finish_hostile`."""
    # The password and key go through a pipe (`input`), not argv.
    return start(
        [sys.executable, "-m", "bench.flood", "--hostile-worker"],
        input=json.dumps(asdict(cfg)),
        stdout=PIPE,
        stderr=PIPE,
        text=True,
        cwd=Path(__file__).resolve().parent.parent,
    )


def finish_hostile(proc: Child, timeout: float) -> dict[str, Any]:
    """Wait for the hostile device to finish (SIGKILL after `timeout` s) and return its report."""
    code = proc.stop(None, timeout)
    if proc.forced:
        raise RuntimeError(f"the hostile device did not finish within {timeout} s")
    if code != 0:
        raise RuntimeError(f"the hostile device failed ({code}):\n{proc.err}")
    return dict(json.loads(proc.out))


# ---------------------------------------------------------------- the benchmark


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _percentile(sorted_values: list[int], q: float) -> int:
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))] if sorted_values else 0


def run_scenario(
    honest: int,
    seconds: float,
    hostile: bool,
    qos: int = 1,
    workers: int = 0,
    suspend_after_min: float | None = None,
    suspend_for_min: float | None = None,
) -> dict[str, Any]:
    from broker import mosquitto
    from edge.fleet import OUTBOX_FILE
    from edge.outbox import Outbox
    from ledger.home import Home
    from ledger.service.homes import initialize
    from ledger.service.rpc import RemoteLedger, open_ledger

    root = Path(tempfile.mkdtemp(prefix="cityledger-flood-"))
    home = Home(root)
    port = _free_port()
    initialize(home)
    broker = mosquitto.start(home, port)
    env = {
        **os.environ,
        "CITYLEDGER_HOME": str(root),
        "CITYLEDGER_MQTT_PORT": str(port),
        "CITYLEDGER_MQTT_HOST": "127.0.0.1",
    }
    procs: list[Child] = []
    ingest = start(
        [sys.executable, "-m", "ledger.cli", "--log-level", "WARNING", "ingest", "--workers", str(workers)],
        env=env,
        stdout=home.logs / "ingest.log",
        stderr=STDOUT,
    )
    procs.append(ingest)
    try:
        wait_until(lambda: ingest.alive and isinstance(open_ledger(home), RemoteLedger), 30, 0.1, what="ingest")
        api = open_ledger(home)
        key = SigningKey.generate()
        login = api.enroll_device(
            device=HOSTILE_DEVICE,
            kind=HOSTILE_KIND,
            district=HOSTILE_DISTRICT,
            public_key=key.verify_key.encode().hex(),
        )
        rule = (
            api.set_budget_policy(
                suspend_after_min=suspend_after_min, suspend_for_min=suspend_for_min, operator="bench"
            )
            if suspend_after_min or suspend_for_min
            else api.budget_policy()
        )
        print(f"provisioning {honest} honest devices...", file=sys.stderr)
        fleet = start(
            [
                sys.executable,
                "-m",
                "ledger.cli",
                "--log-level",
                "WARNING",
                "fleet",
                "--devices",
                str(honest),
                "--interval",
                "1",
            ],
            env=env,
            stdout=PIPE,
            stderr=DEVNULL,
            text=True,
        )
        procs.append(fleet)
        wait_until(
            lambda: sum(1 for s, _ in api.device_statuses().values() if s == "online") >= honest,
            180,
            0.1,
            what="every honest device online",
        )
        time.sleep(3)  # let the fleet settle into its once-a-second rhythm before the window opens
        print(f"window of {seconds} s ({'with' if hostile else 'without'} the hostile device)...", file=sys.stderr)
        cpu0 = cpu_seconds(ingest.pid)
        t0 = now_ms()
        report: dict[str, Any] | None = None
        processed_at = None
        if hostile:
            worker = start_hostile(
                HostileConfig(
                    "127.0.0.1",
                    port,
                    login["mqtt_username"],
                    login["mqtt_password"],
                    bytes(key).hex(),
                    seconds,
                    qos=qos,
                )
            )
            procs.append(worker)
            report = finish_hostile(worker, seconds + 120)
            t1 = max(now_ms(), t0 + round(seconds * 1000))  # a suspended flooder keeps knocking till then
            last = [-1]

            def hostile_done() -> bool:  # counted: all the broker took (QoS 1), then no change for 2 s
                s = api.status()
                n = s["quarantined"] + s["quarantine_dropped"]
                done, last[0] = n == last[0] and (qos == 0 or report["disconnects"] or n >= report["sent"]), n
                return bool(done)

            wait_until(hostile_done, 600, 2.0, what="ingest to account for every hostile message")
            processed_at = now_ms()
        else:
            time.sleep(seconds)
            t1 = now_ms()
        cpu = cpu_seconds(ingest.pid) - cpu0
        fleet.stop(signal.SIGTERM, timeout=60)
        if fleet.forced:
            raise RuntimeError("the fleet ignored SIGTERM for 60 s")
        fleet_stats = json.loads(fleet.out.strip().splitlines()[-1])
        with Outbox(home.fleet / OUTBOX_FILE) as outbox:
            generated = {d: outbox.state(d).last_seq for d in outbox.devices()}
        expected = sum(generated.values()) + (PRIMED if hostile else 0)
        wait_until(lambda: api.status()["readings"] >= expected, 300, 0.1, what="every honest reading ledgered")
        status = api.status()
        rss = peak_rss_mb(ingest.pid)
        ingest.stop(signal.SIGTERM, timeout=60)
        if ingest.forced:
            raise RuntimeError("ingest ignored SIGTERM for 60 s")
    finally:
        for proc in reversed(procs):
            proc.stop(signal.SIGKILL)
        broker.stop(timeout=30)

    import duckdb

    con = duckdb.connect(str(home.database), read_only=True)
    try:
        in_window = con.execute(
            "SELECT count(*) FROM readings r JOIN blocks b USING (height)"
            " WHERE r.device <> ? AND b.sealed_at BETWEEN ? AND ?",
            [HOSTILE_DEVICE, t0, t1],
        ).fetchone()[0]
        latencies = sorted(
            x
            for (x,) in con.execute(
                "SELECT b.sealed_at - r.ts FROM readings r JOIN blocks b USING (height)"
                " WHERE r.device <> ? AND r.ts BETWEEN ? AND ?",
                [HOSTILE_DEVICE, t0, t1],
            ).fetchall()
        )
        ledgered = set(con.execute("SELECT device, seq FROM readings").fetchall())
        stored_hostile = con.execute("SELECT count(*) FROM quarantine WHERE device = ?", [HOSTILE_DEVICE]).fetchone()[0]
        by_reason = dict(
            con.execute(
                "SELECT reason, sum(count) FROM reject_counts WHERE device = ? GROUP BY 1", [HOSTILE_DEVICE]
            ).fetchall()
        )
        budget_entries = {
            t: json.loads(b)
            for t, b in con.execute(
                "SELECT type, body FROM entries WHERE type IN ('device_suspended', 'device_reinstated') ORDER BY height"
            ).fetchall()
        }
    finally:
        con.close()
    missing = sum(1 for d, last in generated.items() for s in range(1, last + 1) if (d, s) not in ledgered)
    window_s = (t1 - t0) / 1000
    out: dict[str, Any] = {
        "hostile": hostile,
        "honest_devices": honest,
        "window_seconds": round(window_s, 1),
        "honest_ledgered_per_second": round(in_window / window_s, 1),
        "honest_generated": sum(generated.values()),
        "honest_missing_from_ledger": missing,
        "ack_latency_ms": {
            "p50": _percentile(latencies, 0.5),
            "p95": _percentile(latencies, 0.95),
            "p99": _percentile(latencies, 0.99),
            "max": latencies[-1] if latencies else 0,
        },
        "ingest_peak_rss_mb": round(rss, 1),
        "ingest_cpu_seconds_in_window": round(cpu, 1),
        "fleet": fleet_stats,
        "quarantine_stored": status["quarantined"],
        "quarantine_dropped": status["quarantine_dropped"],
        "hostile_quarantine_stored": stored_hostile,
    }
    if report is not None and processed_at is not None:
        out.update(
            {
                "hostile_sent": report["sent"],
                "hostile_sent_per_second": report["per_second"],
                "hostile_processed_per_second": round(report["sent"] / ((processed_at - t0) / 1000)),
                "hostile_drain_seconds_after_flood": round((processed_at - t1) / 1000, 1),
                "hostile_payload_mb": round(report["payload_bytes"] / 1e6, 1),
                "hostile_kinds": report["kinds"],
                "qos": qos,
                "workers": workers,
                "rule": rule,
                "hostile_counted": sum(by_reason.values()),
                "hostile_dropped_over_budget": by_reason.get("over_budget", 0),
                "hostile_dropped_suspended": by_reason.get("suspended", 0),
                "hostile_screened": sum(by_reason.values())
                - by_reason.get("over_budget", 0)
                - by_reason.get("suspended", 0),
                "suspended_after_s": round((budget_entries["device_suspended"]["at"] - t0) / 1000, 1)
                if "device_suspended" in budget_entries
                else None,
                "reinstated_after_s": round((budget_entries["device_reinstated"]["at"] - t0) / 1000, 1)
                if "device_reinstated" in budget_entries
                else None,
                "hostile_refused_on_reconnect": report["reconnect_refusals"],
            }
        )
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=30.0, help="length of the measured window (and of the flood)")
    p.add_argument("--honest", type=int, default=100, help="honest devices, one reading a second each")
    p.add_argument("--qos", type=int, choices=(0, 1), default=1, help="QoS of the hostile device's garbage")
    p.add_argument("--workers", type=int, default=0, help="cityledger ingest --workers")
    p.add_argument("--suspend-after", type=float, metavar="MIN", help="the budget rule's M (default: the ledger's)")
    p.add_argument("--suspend-for", type=float, metavar="MIN", help="the budget rule's T (default: the ledger's)")
    p.add_argument("--hostile-only", action="store_true", help="skip the run without the hostile device")
    p.add_argument("--hostile-worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.hostile_worker:
        print(json.dumps(run_hostile(HostileConfig(**json.loads(sys.stdin.read())))))
        return
    runs = [
        run_scenario(args.honest, args.seconds, hostile, args.qos, args.workers, args.suspend_after, args.suspend_for)
        for hostile in ((True,) if args.hostile_only else (False, True))
    ]
    machine = f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    print(json.dumps({"machine": machine, "runs": runs}, indent=2))


if __name__ == "__main__":
    main()
