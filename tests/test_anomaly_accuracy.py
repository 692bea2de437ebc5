"""Recall and false alarms of every detector on a simulated city with injected faults.

1,200 devices (all four kinds, four districts, households with accounts) measure
every 15 minutes for 14 simulated days, time-compressed and in-process: the
edge models with the fault hooks (edge/faults.py `simulate`), then what ingest
would ledger, quarantine and count. A two-hour ingest outage in the middle
makes part of the readings arrive late, as an outbox backlog does. `detect`
runs once at the end and is scored per type against the ground truth:

- recall: faulty devices of that type with a finding of that type;
- false alarms: devices with a finding of a type their fault does not explain,
  as a share of all devices.

The figures are printed (pytest -s) and recorded in docs/anomalies.md. Run
`python -m tests.test_anomaly_accuracy [--start YYYY-MM-DD] [--devices N]` for
another season or size, and `--held-out` for cities the detectors were not tuned on
(other seeds and season, night-shift households, faults of other sizes) side by side.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from edge.faults import DAY_MS, HOUR_MS, Fault, FaultPlan, SimDevice, simulate
from edge.fleet import plan_fleet
from ledger.anomalies.detectors import TYPES, DeviceInfo, Finding, Obs, detect

BEIJING = timezone(timedelta(hours=8))
DEVICES = 1200
DAYS = 14
DISTRICTS = ("d01", "d02", "d03", "d04")
SEED = 2025
# Rates are high so that every type has 25-50 faulty devices: recall needs a denominator.
SPEC = "leak=0.08,rollback=0.05,spike=0.05,stuck=0.05,dead=0.04,clock=0.04,badsig=0.04,overstay=0.15,flicker=0.15"
VACANT_EVERY = 20  # one meter in 20 has no account (an empty flat): zero consumption is not asked of it


@dataclass
class Score:
    type: str
    faulty: int
    found: int
    false_devices: int

    @property
    def recall(self) -> float:
        return self.found / self.faulty if self.faulty else 1.0


def _ms(day: str) -> int:
    return int(datetime.fromisoformat(day).replace(tzinfo=BEIJING).timestamp() * 1000)


Rejects = dict[str, list[tuple[int, str, int]]]


def city(
    start: int, devices: int = DEVICES, days: int = DAYS, seed: int = SEED, spec: str = SPEC, rhythm: str = "day"
) -> tuple[list[DeviceInfo], dict[str, list[Obs]], Rejects, dict[str, Fault], int]:
    """(devices, readings, rejects, ground truth, now) of a simulated city (`rhythm`: its households')."""
    plan = plan_fleet(devices, DISTRICTS)
    truth = FaultPlan.parse(f"{spec},horizon={days}d").assign([(p.device, p.kind) for p in plan], start, seed=seed)
    outage = (start + 6 * DAY_MS + 9 * HOUR_MS, start + 6 * DAY_MS + 11 * HOUR_MS)
    sims = simulate(
        [(p.device, p.kind, p.district) for p in plan],
        start=start,
        days=days,
        seed=seed,
        faults=truth,
        outages=[outage],
        rhythm=rhythm,
    )
    now = start + days * DAY_MS
    infos = [_info(i, sim, truth.get(sim.device)) for i, sim in enumerate(sims)]
    readings = {s.device: [Obs(s.device, *r) for r in s.readings] for s in sims}
    rejects = {s.device: [(m, reason, c) for (m, reason), c in sorted(s.rejects.items())] for s in sims if s.rejects}
    return infos, readings, rejects, truth, now


def _info(i: int, sim: SimDevice, fault: Fault | None) -> DeviceInfo:
    """What the registry would say: households hold one meter of each kind per account number.

    A stuck meter is given to an occupied account: on a vacant flat it is not an anomaly.
    """
    number = sim.device.rsplit("-", 1)[1]
    vacant = i % VACANT_EVERY == 0 and (fault is None or fault.fault != "stuck")
    account = None if sim.kind == "parking" or vacant else f"acct-{sim.district}-{number}"
    status, at = sim.status or (None, None)
    return DeviceInfo(sim.device, sim.kind, sim.district, account, status, at)


def score(devices: Sequence[DeviceInfo], findings: Sequence[Finding], truth: Mapping[str, Fault]) -> list[Score]:
    flagged: dict[str, set[str]] = {}
    for f in findings:
        flagged.setdefault(f.type, set()).add(f.device)
    out = []
    for t in TYPES:
        faulty = {d for d, f in truth.items() if f.anomaly == t}
        hits = flagged.get(t, set())
        out.append(Score(t, len(faulty), len(faulty & hits), len(hits - faulty)))
    return out


def false_alarm_devices(findings: Sequence[Finding], truth: Mapping[str, Fault]) -> set[str]:
    """Devices with at least one finding their fault does not explain."""
    return {f.device for f in findings if f.device not in truth or truth[f.device].anomaly != f.type}


def table(scores: Sequence[Score], n_devices: int, false_any: int) -> str:
    lines = [
        "| type | faulty devices | found | recall | devices falsely flagged | false-alarm rate |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for s in scores:
        lines.append(
            f"| `{s.type}` | {s.faulty} | {s.found} | {s.recall:.1%} | {s.false_devices} | "
            f"{s.false_devices / n_devices:.2%} |"
        )
    lines.append(f"| any type | | | | {false_any} | {false_any / n_devices:.2%} |")
    return "\n".join(lines)


def test_every_type_has_high_recall_and_few_false_alarms() -> None:
    started = time.monotonic()
    devices, readings, rejects, truth, now = city(_ms("2025-01-06"))
    simulated = time.monotonic() - started
    findings = detect(devices, readings, rejects, now)
    detected = time.monotonic() - started - simulated
    scores = score(devices, findings, truth)
    false_any = false_alarm_devices(findings, truth)
    print(
        f"\n{len(devices)} devices, {DAYS} days, {sum(map(len, readings.values()))} readings; "
        f"simulated in {simulated:.1f} s, detected in {detected:.1f} s"
    )
    print(table(scores, len(devices), len(false_any)))
    for s in scores:
        assert s.faulty >= 20, f"{s.type}: too few faulty devices to measure recall"
        assert s.recall >= 0.95, f"{s.type}: recall {s.recall:.1%}"
        assert s.false_devices / len(devices) < 0.01, f"{s.type}: {s.false_devices} devices falsely flagged"
    assert len(false_any) / len(devices) < 0.01
    # Every finding rests on ledgered readings that exist (or says it has none to show).
    ledgered = {(o.device, o.seq) for obs in readings.values() for o in obs}
    for f in findings:
        for ev in f.evidence:
            assert ev in ledgered or (ev[1] == 0 and f.type in ("hostile", "silent", "clock")), (f, ev)


# Cities the detectors were not tuned on (issue 20): other seeds, another season, another household
# rhythm (a larger family with a night-shift worker), faults half and twice as large.
HELD_OUT: dict[str, tuple[str, int, str, str]] = {  # name -> (start, seed, rhythm, extra spec)
    "tuning city": ("2025-01-06", SEED, "day", ""),
    "seed 7": ("2025-01-06", 7, "day", ""),
    "seed 99, summer": ("2025-07-07", 99, "day", ""),
    "night-shift households": ("2025-01-06", SEED, "shift", ""),
    "faults x0.5": ("2025-01-06", SEED, "day", ",scale=0.5"),
    "faults x2": ("2025-01-06", SEED, "day", ",scale=2"),
}


def held_out(devices: int = DEVICES, days: int = DAYS) -> str:
    """Recall and false alarms per type on the tuning city and each held-out one, side by side."""
    columns: dict[str, list[Score]] = {}
    for name, (start, seed, rhythm, extra) in HELD_OUT.items():
        infos, readings, rejects, truth, now = city(_ms(start), devices, days, seed, SPEC + extra, rhythm)
        findings = detect(infos, readings, rejects, now)
        columns[name] = score(infos, findings, truth)
        print(f"{name}: done", flush=True)
    names = list(columns)
    lines = [
        "| type | " + " | ".join(names) + " |",
        "|---|" + "---:|" * len(names),
    ]
    for i, t in enumerate(TYPES):
        cells = []
        for name in names:
            s = columns[name][i]
            cells.append(f"{s.found}/{s.faulty} ({s.recall:.0%}), {s.false_devices} false")
        lines.append(f"| `{t}` | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--held-out", action="store_true", help="the tuning city and the held-out ones, side by side")
    parser.add_argument("--start", default="2025-01-06", help="first simulated day (Beijing)")
    parser.add_argument("--devices", type=int, default=DEVICES)
    parser.add_argument("--days", type=int, default=DAYS)
    parser.add_argument("--seed", type=int, default=SEED)
    args = parser.parse_args()
    if args.held_out:
        print(held_out(args.devices, args.days))
        return
    devices, readings, rejects, truth, now = city(_ms(args.start), args.devices, args.days, args.seed)
    findings = detect(devices, readings, rejects, now)
    print(table(score(devices, findings, truth), len(devices), len(false_alarm_devices(findings, truth))))
    for f in findings:
        if f.device not in truth or truth[f.device].anomaly != f.type:
            print("FALSE", f.type, f.device, truth.get(f.device), f.detail)
    hit = {(f.device, f.type) for f in findings}
    for d, fault in truth.items():
        if (d, fault.anomaly) not in hit:
            print("MISSED", fault)


if __name__ == "__main__":
    main()
