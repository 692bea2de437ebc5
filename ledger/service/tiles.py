"""The transparency log's tiles and entry bundles, written as blocks seal (C2SP tlog-tiles).

Why files: the log's public face is then a directory that any static web server, object
store or CDN can serve as it is (`cityledger serve` is one), and audit traffic never
reaches ingest or the database. Full tiles and bundles never change once written; the
right-edge partial ones are written anew as the log grows, and the narrower ones of a tile
go once it is full (tlog-tiles allows it; clients fall back to the full tile).

Why a thread: the sealer only queues each sealed block (its leaf hashes and leaf data are
already in hand); hashing the upper tiles and writing files happen beside it, so sealing
does not wait on the disk. The files follow the database, never lead it: a block's tiles
are written after its commit. The right edge's partial tiles are written only at the sizes a
checkpoint may name, at most once a second. `.state` names a block whose tiles are surely on
disk: one published at least a minute before (the kernel has written it back), or the head
after a clean stop (`os.sync`). A writer that starts with its tiles behind the chain (a crash,
or a ledger older than the log) writes everything after `.state` again from the stored
blocks; tiles that do not reproduce the chain's log are rebuilt from scratch.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import shutil
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from ledger.chain.notes import Note
from ledger.chain.tlog import TILE_WIDTH, Tile, TileError, TileState, entry_bundle, parse_entry_bundle

if TYPE_CHECKING:  # the writer hands its sealed blocks over; it imports this module, not the other way
    from ledger.service.writer import Sealed

log = logging.getLogger("cityledger.tiles")

STATE = ".state"  # {"height": H, "size": N}: every tile of the log through block H is on disk
PUBLISH_EVERY_S = 1.0  # under load, the right edge's partial tiles and the checkpoint's offer at most this often
SETTLE_S = 60.0  # files this old are on disk: the kernel writes dirty pages back within 30 s (dirty_expire)


class TileDirectory:
    """The tile files under one directory, as a `ledger.chain.tlog.HashSource` and for writing."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def tile(self, tile: Tile) -> bytes:
        """The tile's contents, or a wider one's at the same place (the HashSource contract)."""
        return self._read(tile, tile.path())

    def bundle(self, tile: Tile) -> list[bytes]:
        """The entries of the entry bundle at `tile`'s place (at least `tile.width` of them)."""
        return parse_entry_bundle(self._read(tile, tile.entries_path()))[: tile.width]

    def _read(self, tile: Tile, path: str) -> bytes:
        exact = self.root / path
        try:
            return exact.read_bytes()
        except FileNotFoundError:
            pass
        base = path.split(".p/", 1)[0]
        candidates = [self.root / base]  # the full one, then any wider partial
        partials = self.root / f"{base}.p"
        if partials.is_dir():
            widths = sorted((int(p.name) for p in partials.iterdir() if p.name.isdigit()), reverse=True)
            candidates += [partials / str(w) for w in widths if w > tile.width]
        for candidate in candidates:
            try:
                return candidate.read_bytes()
            except FileNotFoundError:
                continue
        raise TileError(f"no tile at {path} or wider")

    def write(self, path: str, data: bytes) -> None:
        """Write a file whole (a temporary file renamed), so a reader never sees half of one.

        One thread writes a directory's files, so the temporary name needs no randomness."""
        target = self.root / path
        tmp = target.with_name(f".{target.name}.tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        except FileNotFoundError:
            target.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
        finally:
            os.close(fd)
        os.replace(tmp, target)

    def drop_partials(self, path: str) -> None:
        """A tile is full: its partial versions are no longer needed."""
        shutil.rmtree(self.root / f"{path}.p", ignore_errors=True)

    def state(self) -> tuple[int, int] | None:
        try:
            stored = json.loads((self.root / STATE).read_text())
            return int(stored["height"]), int(stored["size"])
        except (FileNotFoundError, ValueError, KeyError, TypeError):
            return None

    def set_state(self, height: int, size: int) -> None:
        self.write(STATE, json.dumps({"height": height, "size": size}).encode())


class LogFiles:
    """Keeps a tile directory in step with the chain: `append` each sealed block, in height order."""

    def __init__(self, directory: Path) -> None:
        self.files = TileDirectory(directory)
        self.height, self.tiles = -1, TileState()
        self.bundle: list[bytes] = []  # the entries of the right-edge partial bundle
        self.filled: list[str] = []  # full tiles and bundles written since the last `publish`
        self._published: deque[tuple[float, int, int]] = deque()  # (when, height, size) not yet settled

    @property
    def size(self) -> int:
        return self.tiles.size

    def resume(self, chain_height: int, chain_log_at: Callable[[int], tuple[int, bytes] | None]) -> None:
        """Pick up what is on disk, if it agrees with the chain's log at its height (where the
        header there names the log); else start afresh."""
        stored = self.files.state()
        if stored is not None and stored[0] <= chain_height:
            height, size = stored
            expected = chain_log_at(height)
            try:
                if expected is not None and expected[0] != size:
                    raise TileError("the tiles' size differs from the chain's log there")
                tiles = TileState.from_tiles(size, self.files.tile, root=expected[1] if expected else None)
                edge = Tile(0, size // TILE_WIDTH, size % TILE_WIDTH)
                bundle = self.files.bundle(edge) if edge.width else []
                if len(bundle) != edge.width:
                    raise TileError("the right-edge entry bundle is short")
            except TileError as exc:
                log.warning("the tile directory does not match the chain (%s): rebuilding it", exc)
            else:
                self.height, self.tiles, self.bundle, self.filled = height, tiles, bundle, []
                return
        if stored is not None or (self.files.root / "tile").exists():
            shutil.rmtree(self.files.root / "tile", ignore_errors=True)
        self.height, self.tiles, self.bundle, self.filled = -1, TileState(), [], []

    def append(
        self, height: int, leaf_hashes: list[bytes], leaves: Iterable[bytes], tile_roots: list[bytes] | None = None
    ) -> None:
        """Write the full tiles and entry bundles a block completes; the right edge's partial ones wait
        for `publish`. `tile_roots`: what the writer's compact range already hashed (`TileState.append`)."""
        if height != self.height + 1:
            raise ValueError(f"tiles are at block {self.height}; block {height} cannot follow")
        start = self.tiles.size
        for tile, data in self.tiles.append(leaf_hashes, tile_roots):
            if tile.full:
                self.files.write(tile.path(), data)
                self.filled.append(tile.path())
        self.bundle.extend(leaves)
        index = start // TILE_WIDTH
        while len(self.bundle) >= TILE_WIDTH:
            path = Tile(0, index).entries_path()
            self.files.write(path, entry_bundle(self.bundle[:TILE_WIDTH]))
            self.filled.append(path)
            del self.bundle[:TILE_WIDTH]
            index += 1
        if len(self.bundle) != self.tiles.size % TILE_WIDTH:
            raise ValueError("a block's leaf data and leaf hashes differ in number")
        self.height = height

    def publish(self) -> None:
        """Write the right edge's partial tiles and bundle: the directory then serves the log at its
        current size, and a checkpoint of that size may go out. Called at most once a second under
        load, since only sizes with a checkpoint need their partial tiles (tlog-tiles)."""
        for tile, data in self.tiles.partial_tiles():
            self.files.write(tile.path(), data)
        if self.bundle:
            self.files.write(
                Tile(0, self.size // TILE_WIDTH, len(self.bundle)).entries_path(), entry_bundle(self.bundle)
            )
        for path in self.filled:  # full now: their partial versions are no longer needed
            self.files.drop_partials(path)
        self.filled = []

    def settle(self, now: float) -> None:
        """Record in `.state` the newest published size at least SETTLE_S old: where a restart
        resumes, rewriting from the stored blocks whatever came after it. Files that old have been
        written back by the kernel, so no `os.sync` is needed while sealing: syncing from the
        sealer's process put every dirty page of the machine (DuckDB's too) on its account."""
        self._published.append((now, self.height, self.tiles.size))
        settled = None
        while self._published and now - self._published[0][0] >= SETTLE_S:
            settled = self._published.popleft()
        if settled is not None:
            self.files.set_state(settled[1], settled[2])

    def settle_now(self) -> None:
        """A clean stop (or the end of a catch-up): everything on disk now, and `.state` says so."""
        os.sync()
        self._published.clear()
        self.files.set_state(self.height, self.tiles.size)


class TileWriterThread:
    """Runs `LogFiles` beside the sealer: `put` queues a sealed block, `close` drains the queue.

    `on_written(note)` runs in this thread once a block's tiles are on disk, with the block's
    checkpoint: it may then be published (ledger/service/checkpoints.py).
    """

    def __init__(
        self,
        files: LogFiles,
        catch_up: Callable[[LogFiles], None],
        on_written: Callable[[Note], None],
    ) -> None:
        self.files = files
        self.catch_up = catch_up
        self.on_written = on_written
        self.queue: queue.Queue[tuple[Sealed, list[bytes]] | None] = queue.Queue()
        self.failed: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="tile-writer", daemon=True)
        self.thread.start()

    def put(self, sealed: Sealed, tile_roots: list[bytes]) -> None:
        """A block just sealed, with the roots of the level-0 tiles it filled (`CompactRange.append`)."""
        self.queue.put((sealed, tile_roots))

    def _run(self) -> None:
        try:
            self.catch_up(self.files)
            waiting: list[Note] = []  # checkpoints of blocks written since the last publish
            published = time.monotonic()
            while (item := self.queue.get()) is not None:
                sealed, tile_roots = item
                height, checkpoint = sealed.height, sealed.checkpoint
                assert checkpoint is not None  # every sealed block has one
                if height <= self.files.height:
                    continue  # written by the catch-up already
                if height != self.files.height + 1:
                    self.catch_up(self.files)  # a gap: write it from the stored blocks
                    if height <= self.files.height:
                        continue
                self.files.append(height, sealed.leaf_hashes, sealed.leaves(), tile_roots)
                waiting.append(checkpoint)
                now = time.monotonic()
                if self.queue.empty() or now - published >= PUBLISH_EVERY_S:
                    self._publish(waiting, now)
                    waiting, published = [], now
            self._publish(waiting, time.monotonic())
            self.files.settle_now()
        except Exception as exc:  # a full disk, say: the chain goes on, and `status` says the tiles stopped
            self.failed = exc
            log.exception("the tile writer stopped; the log's files are behind the chain until ingest restarts")

    def _publish(self, waiting: list[Note], now: float) -> None:
        """The right edge on disk, then the checkpoints it serves: a rotation's (signed twice) and the newest."""
        self.files.publish()
        self.files.settle(now)
        for note in waiting:
            if len(note.signatures) > 1 or note is waiting[-1]:
                self.on_written(note)

    def close(self, timeout: float = 600.0) -> None:
        self.queue.put(None)
        self.thread.join(timeout)
