"""The transparency log's own costs (issue 18): the log in the sealer, tiles, receipts, witnesses.

    .venv/bin/python -m bench.tlog [--leaves 1000000] [--block 5000] [--rounds 200]

Prints, and with --json emits:
- the sealer's share: what keeping the log adds to sealing a block of `--block` leaves (the
  compact range and the checkpoint's signature), against hashing the block's own tree;
- tile write throughput: `--leaves` leaves through the tile writer (ledger/service/tiles.py)
  in blocks of `--block`, to a real directory, published once a second as ingest does;
- the size of a version 2 receipt at that log size, with three witnesses' cosignatures;
- the witness round trip: `--rounds` add-checkpoint requests, each with its consistency
  proof, to a real `cityledger witness serve` process over HTTP.
The seal time with and without the log inside a running ingest is `cityledger bench` on the
commits before and after the log (docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from nacl.signing import SigningKey

from ledger.chain import merkle
from ledger.chain.notes import Checkpoint, cosign, signed_checkpoint
from ledger.chain.tlog import CompactRange, inclusion_proof_at
from ledger.chain.tlogproof import build_tlog_proof
from ledger.service.progress import ProgressBar
from ledger.service.tiles import LogFiles, TileDirectory

ORIGIN = "bench.example/city"


def leaf(i: int) -> bytes:
    """A leaf the size of a reading's canonical JSON (about 180 bytes)."""
    return b'{"device":"wm-d01-%06d","kind":"water","seq":%d,"sig":"%s","ts":%d,"v":1,"value":%d}' % (
        i % 100_000,
        i // 100_000 + 1,
        base64.b64encode(hashlib.sha512(b"%d" % i).digest()),
        1_764_000_000_000 + i,
        i,
    )


def sealer_share(block: int, blocks: int) -> dict[str, float]:
    key = SigningKey.generate()
    leaves = [leaf(i) for i in range(block)]
    log = CompactRange()
    tree = extra = 0.0
    for _ in range(blocks):
        hashes = merkle.leaf_hashes(leaves)
        t0 = time.perf_counter()
        merkle.root(hashes)
        t1 = time.perf_counter()
        grown = log.copy()
        grown.append(hashes)
        signed_checkpoint(Checkpoint(ORIGIN, grown.size, grown.root()), [key])
        t2 = time.perf_counter()
        log = grown
        tree, extra = tree + t1 - t0, extra + t2 - t1
    return {
        "block_tree_ms": 1000 * tree / blocks,
        "log_ms_per_block": 1000 * extra / blocks,
        "log_us_per_leaf": 1e6 * extra / blocks / block,
    }


def tiles(directory: Path, total: int, block: int) -> tuple[dict[str, float], LogFiles, list[bytes]]:
    files, log = LogFiles(directory), CompactRange()
    bar = ProgressBar("tiles")
    hashes_all: list[bytes] = []
    spent, cpu, height = 0.0, 0.0, 0
    committed = time.perf_counter()
    for start in range(0, total, block):
        leaves = [leaf(i) for i in range(start, min(total, start + block))]
        hashes = merkle.leaf_hashes(leaves)
        hashes_all += hashes
        roots: list[bytes] = []
        log.append(hashes, roots)  # as the writer does, which hands the tile writer these roots
        t0, c0 = time.perf_counter(), time.process_time()
        files.append(height, hashes, leaves, roots)
        if t0 - committed >= 1.0 or start + block >= total:  # as the tile writer's thread does under load
            files.publish()
            committed = time.perf_counter()
            files.settle(committed)
        spent += time.perf_counter() - t0
        cpu += time.process_time() - c0
        height += 1
        bar.update(start + len(leaves), total)
    bar.close()
    size = sum(p.stat().st_size for p in directory.rglob("*") if p.is_file())
    return (
        {
            "tile_leaves_per_s": total / spent,
            "tile_cpu_us_per_leaf": 1e6 * cpu / total,
            "tile_mb_per_s": size / spent / 1e6,
            "tile_dir_mb": size / 1e6,
        },
        files,
        hashes_all,
    )


def receipt_size(files: LogFiles, hashes: list[bytes]) -> dict[str, float]:
    key, size = SigningKey.generate(), files.size
    note = signed_checkpoint(Checkpoint(ORIGIN, size, merkle.root(hashes)), [key])
    for n in range(3):
        note = note.with_signatures(cosign(note.text, f"witness.example/w{n}", SigningKey.generate(), int(time.time())))
    index = size // 3
    proof = inclusion_proof_at(TileDirectory(files.files.root), index, size)
    return {"receipt_bytes": len(build_tlog_proof(leaf(index), index, proof, note)), "proof_hashes": len(proof)}


def witness_round_trip(work: Path, hashes: list[bytes], rounds: int) -> dict[str, float]:
    key = SigningKey.generate()
    from ledger.chain.notes import verifier_key

    store = work / "witness"
    cli = [sys.executable, "-m", "ledger.cli"]
    subprocess.run(
        [*cli, "witness", "init", "--store", str(store), "--name", "bench.example/w"], check=True, capture_output=True
    )
    vkey = verifier_key(ORIGIN, key.verify_key.encode())
    subprocess.run([*cli, "witness", "trust", "--store", str(store), vkey], check=True, capture_output=True)
    proc = subprocess.Popen(
        [*cli, "witness", "serve", "--store", str(store), "--port", "0"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(200):
            if (store / "port").exists():
                break
            time.sleep(0.05)
        url = f"http://127.0.0.1:{int((store / 'port').read_text())}/add-checkpoint"
        old, times = 0, []
        step = max(1, len(hashes) // (rounds + 1))
        for n in range(1, rounds + 1):
            size = n * step
            note = signed_checkpoint(Checkpoint(ORIGIN, size, merkle.root(hashes[:size])), [key])
            proof = merkle.consistency_proof(hashes[:size], old) if old else []
            body = (
                f"old {old}\n".encode() + b"".join(base64.b64encode(h) + b"\n" for h in proof) + b"\n" + note.encode()
            )
            t0 = time.perf_counter()
            with urllib.request.urlopen(urllib.request.Request(url, data=body, method="POST"), timeout=10) as r:
                r.read()
            times.append(time.perf_counter() - t0)
            old = size
    finally:
        proc.terminate()
        proc.wait(10)
    times.sort()
    return {
        "witness_rtt_ms_p50": 1000 * statistics.median(times),
        "witness_rtt_ms_p99": 1000 * times[int(0.99 * (len(times) - 1))],
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--leaves", type=int, default=1_000_000)
    p.add_argument("--block", type=int, default=5000)
    p.add_argument("--rounds", type=int, default=200)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="cityledger-bench-tlog-") as tmp:
        work = Path(tmp)
        out: dict[str, object] = {
            "leaves": args.leaves,
            "block": args.block,
            "machine": platform.processor() or platform.machine(),
            "cores": os.cpu_count(),
        }
        out.update(sealer_share(args.block, 50))
        tile_figures, files, hashes = tiles(work / "tlog", args.leaves, args.block)
        out.update(tile_figures)
        out.update(receipt_size(files, hashes))
        out.update(witness_round_trip(work, hashes[: min(len(hashes), 200_000)], args.rounds))
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        for k, v in out.items():
            print(f"{k:>22}: {v:,.2f}" if isinstance(v, float) else f"{k:>22}: {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
