"""``etch fsck``: an offline check of a log's own database, naming every damaged record.

What is checked (ARCHITECTURE.md invariants 3 and 4, in the spirit of Tessera's fsck), using
only ``merkle``'s pure functions and the :class:`server.storage.base.Storage` protocol:

* the latest checkpoint: its signature by the log's key, its origin, its size against the stored
  tree size, and the compact range (decodes, same size, same root);
* every entry re-hashed (RFC 6962 §2.1 leaf hash) and compared with its hash in the level-0 tile,
  and with the leaf-hash index (hash -> index, used for duplicates);
* every hash tile of the tree (C2SP tlog-tiles) recomputed from the level below: each hash of a
  level-L tile must be the root of the full level-(L-1) tile it stands for;
* every stored checkpoint (the history, one per tree size, and the latest cosigned one): the
  log's signature, the origin, a size within the tree, and the root at that size recomputed
  from the tiles;
* nothing stored beyond the tree size (an entry past the checkpoint).

Where two records disagree, a third decides which is damaged, so a single flipped bit is named
exactly: an entry and its level-0 tile hash are arbitrated by the leaf-hash index, and a tile is
judged against hashes recomputed from the (already checked) level below. Roots of checkpoints
are computed from the repaired hashes, so one damaged tile is reported once, not again for every
checkpoint above it.

Locations are strings such as ``entry 5``, ``tile/0/000 hash 5``, ``leaf-hash index of entry 5``,
``checkpoint history at size 300``, ``latest checkpoint``, ``compact range``.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

from merkle.checkpoint import Checkpoint, open_checkpoint
from merkle.compact import CompactRange
from merkle.errors import MerkleError
from merkle.hashing import EMPTY_ROOT, HASH_SIZE, leaf_hash
from merkle.note import Verifier
from merkle.tiles import TILE_HEIGHT, TILE_WIDTH, Tile, format_tile_path, node_tile
from merkle.tree import root_from_hashes, root_nodes
from server.storage.base import Storage
from server.treeview import expand_tile

__all__ = ["FsckProblem", "FsckReport", "fsck"]

TileKey = tuple[int, int]

_HISTORY_PAGE = 500
_TILE_CACHE = 1024


@dataclass(frozen=True, slots=True)
class FsckProblem:
    """One damaged or inconsistent record: where it is and what is wrong with it.

    Example: ``FsckProblem("entry 5", "does not hash to its leaf hash in tile/0/000 (...)")``.
    """

    location: str
    message: str

    def __str__(self) -> str:
        return f"{self.location}: {self.message}"


@dataclass(frozen=True, slots=True)
class FsckReport:
    """The outcome of :func:`fsck`: what was checked and every problem found (empty: sound)."""

    tree_size: int
    entries: int
    tiles: int
    checkpoints: int
    problems: tuple[FsckProblem, ...]

    @property
    def ok(self) -> bool:
        """True when no problem was found."""
        return not self.problems


def _tile_name(level: int, index: int, width: int = TILE_WIDTH) -> str:
    return format_tile_path(Tile(level, index, width))


@dataclass
class _Checker:
    storage: Storage
    verifier: Verifier
    origin: str
    problems: list[FsckProblem] = field(default_factory=list)
    repaired: dict[TileKey, bytes] = field(default_factory=dict)
    cache: OrderedDict[TileKey, bytes] = field(default_factory=OrderedDict)
    entries: int = 0
    tiles: int = 0
    checkpoints: int = 0

    def report(self, location: str, message: str) -> None:
        self.problems.append(FsckProblem(location, message))

    # -- the tree ------------------------------------------------------------------------------

    async def check_tree(self, size: int) -> None:
        """Walk every tile of the tree of ``size`` leaves, from the right edge of each level."""
        level = 0
        while size >> (TILE_HEIGHT * level):
            level += 1
        for tile_level in range(level - 1, -1, -1):
            count = size >> (TILE_HEIGHT * tile_level)
            width = count % TILE_WIDTH
            if width:
                await self.check_tile(tile_level, count // TILE_WIDTH, width, edge=True)
        if await self.storage.read_entries(size, size + 1):
            self.report(f"entry {size}", "stored beyond the tree size of the latest checkpoint")

    async def check_tile(self, level: int, index: int, width: int, *, edge: bool = False) -> bytes:
        """Check one tile (and, recursively, the full tiles below it); return its sound hashes.

        The returned contents are recomputed from below wherever the stored ones are damaged.
        """
        key = (level, index)
        name = _tile_name(level, index, width if width < TILE_WIDTH else TILE_WIDTH)
        stored = (await self.storage.read_tiles([key])).get(key)
        self.tiles += 1
        if stored is None:
            self.report(name, "missing")
            stored = b""
        elif len(stored) != width * HASH_SIZE:
            if edge and len(stored) > width * HASH_SIZE:
                self.report(
                    name,
                    f"holds {len(stored) // HASH_SIZE} hashes, more than the tree's {width}",
                )
            else:
                self.report(
                    name,
                    f"holds {len(stored)} bytes, expected {width * HASH_SIZE} ({width} hashes)",
                )
            stored = stored[: width * HASH_SIZE]
        if level == 0:
            sound = await self._check_leaves(index, width, stored, name)
        else:
            sound = await self._check_hashes(level, index, width, stored, name)
        if sound != stored[: width * HASH_SIZE] or len(stored) != width * HASH_SIZE:
            self.repaired[key] = sound
        return sound

    async def _check_hashes(
        self, level: int, index: int, width: int, stored: bytes, name: str
    ) -> bytes:
        sound = bytearray()
        for k in range(width):
            child = await self.check_tile(level - 1, index * TILE_WIDTH + k, TILE_WIDTH)
            computed = expand_tile(child)[-1][0]
            held = stored[k * HASH_SIZE : (k + 1) * HASH_SIZE]
            if held and held != computed:
                below = _tile_name(level - 1, index * TILE_WIDTH + k)
                self.report(
                    f"{name} hash {k}",
                    f"holds {held.hex()}, but {below} hashes to {computed.hex()}",
                )
            sound += computed
        return bytes(sound)

    async def _check_leaves(self, index: int, width: int, stored: bytes, name: str) -> bytes:
        start = index * TILE_WIDTH
        entries = await self.storage.read_entries(start, start + width)
        by_index = {start + i: data for i, data in enumerate(entries)}
        if len(entries) < width:
            # read_entries stops at the first gap: read past it one entry at a time.
            for i in range(start + len(entries) + 1, start + width):
                more = await self.storage.read_entries(i, i + 1)
                if more:
                    by_index[i] = more[0]
        self.entries += len(by_index)
        hashed = {i: leaf_hash(data) for i, data in by_index.items()}
        held = {
            start + k: stored[k * HASH_SIZE : (k + 1) * HASH_SIZE]
            for k in range(len(stored) // HASH_SIZE)
        }
        wanted = list({*hashed.values(), *held.values()})
        indexed = await self.storage.find_leaf_hashes(wanted) if wanted else {}
        sound = bytearray()
        for k in range(width):
            i = start + k
            entry_hash = hashed.get(i)
            tile_hash = held.get(i)
            if entry_hash is None:
                self.report(f"entry {i}", "missing")
                sound += tile_hash if tile_hash is not None else bytes(HASH_SIZE)
                continue
            if tile_hash is None or tile_hash == entry_hash:
                if indexed.get(entry_hash) != i:
                    found = indexed.get(entry_hash)
                    where = "absent" if found is None else f"maps it to index {found}"
                    self.report(
                        f"leaf-hash index of entry {i}",
                        f"the entry's leaf hash {entry_hash.hex()} is {where}",
                    )
                sound += entry_hash
                continue
            tile_indexed = indexed.get(tile_hash) == i
            entry_indexed = indexed.get(entry_hash) == i
            if tile_indexed and not entry_indexed:
                self.report(
                    f"entry {i}",
                    f"hashes to {entry_hash.hex()}, but {name} hash {k} and the leaf-hash index "
                    f"hold {tile_hash.hex()}",
                )
                sound += tile_hash
            elif entry_indexed and not tile_indexed:
                self.report(
                    f"{name} hash {k}",
                    f"holds {tile_hash.hex()}, but entry {i} and the leaf-hash index give "
                    f"{entry_hash.hex()}",
                )
                sound += entry_hash
            else:
                self.report(
                    f"entry {i}",
                    f"hashes to {entry_hash.hex()}, but {name} hash {k} holds {tile_hash.hex()} "
                    "(the leaf-hash index does not tell which is damaged)",
                )
                sound += tile_hash
        return bytes(sound)

    # -- roots and checkpoints -----------------------------------------------------------------

    async def _tile(self, key: TileKey) -> bytes | None:
        if key in self.repaired:
            return self.repaired[key]
        data = self.cache.get(key)
        if data is None:
            data = (await self.storage.read_tiles([key])).get(key)
            if data is None:
                return None
            self.cache[key] = data
            if len(self.cache) > _TILE_CACHE:
                self.cache.popitem(last=False)
        return data

    async def root(self, size: int) -> bytes | None:
        """Return the root at ``size`` from the (repaired) tiles, or None if a tile is missing."""
        if size == 0:
            return EMPTY_ROOT
        hashes = []
        for node in root_nodes(size):
            tile, start, count = node_tile(node)
            data = await self._tile((tile.level, tile.index))
            end = (start + count) * HASH_SIZE
            if data is None or len(data) < end:
                return None
            rows = expand_tile(data[start * HASH_SIZE : end])
            hashes.append(rows[-1][0])
        return root_from_hashes(hashes)

    async def check_checkpoint(
        self, location: str, note: bytes, tree_size: int
    ) -> Checkpoint | None:
        """Check one stored checkpoint note against the log's key and the tree; return it."""
        self.checkpoints += 1
        try:
            checkpoint, _, _ = open_checkpoint(note, self.verifier)
        except MerkleError as exc:
            self.report(location, f"does not verify with the log's key: {exc}")
            return None
        if checkpoint.origin != self.origin:
            self.report(location, f"is for origin {checkpoint.origin!r}, not {self.origin!r}")
            return checkpoint
        if checkpoint.tree_size > tree_size:
            self.report(
                location, f"has size {checkpoint.tree_size}, beyond the stored tree {tree_size}"
            )
            return checkpoint
        root = await self.root(checkpoint.tree_size)
        if root is None:
            self.report(location, f"the tiles do not cover size {checkpoint.tree_size}")
        elif root != checkpoint.root_hash:
            self.report(
                location,
                f"says root {checkpoint.root_hash.hex()} at size {checkpoint.tree_size}, "
                f"but the tree's root there is {root.hex()} (a second history was signed)",
            )
        return checkpoint


async def fsck(storage: Storage, verifier: Verifier) -> FsckReport:
    """Check an opened log database completely; return every problem found.

    Requires ``storage`` opened and ``verifier`` the log's key (its name is the origin).
    Reads every entry, tile and stored checkpoint once (the history's roots share a tile cache);
    writes nothing. Raises ``StorageError`` if the database cannot be read.
    """
    checker = _Checker(storage, verifier, verifier.name)
    state = await storage.load_state()
    if state is None:
        checker.report("latest checkpoint", "none: nothing was ever committed to this database")
        return FsckReport(0, 0, 0, 0, tuple(checker.problems))
    size = state.tree_size
    try:
        compact: CompactRange | None = CompactRange.from_bytes(state.compact_range)
    except MerkleError as exc:
        checker.report("compact range", f"does not decode: {exc}")
        compact = None
    await checker.check_tree(size)
    latest = await checker.check_checkpoint("latest checkpoint", state.checkpoint, size)
    if latest is not None and latest.tree_size != size:
        checker.report(
            "latest checkpoint", f"has size {latest.tree_size}, but the stored tree size is {size}"
        )
    if compact is not None:
        if compact.size != size:
            checker.report("compact range", f"has size {compact.size}, the tree {size}")
        else:
            root = await checker.root(size)
            if root is not None and compact.root() != root:
                checker.report(
                    "compact range",
                    f"gives root {compact.root().hex()}, the tiles {root.hex()} at size {size}",
                )
    seen_latest = False
    after = -1
    while True:
        page = await storage.checkpoint_history(after_size=after, limit=_HISTORY_PAGE)
        progress = after
        for note in page:
            location = f"checkpoint history at size {_claimed_size(note)}"
            checkpoint = await checker.check_checkpoint(location, note, size)
            if checkpoint is not None:
                seen_latest = seen_latest or checkpoint.tree_size == size
                progress = max(progress, checkpoint.tree_size)
        if len(page) < _HISTORY_PAGE:
            break
        if progress == after:
            checker.report("checkpoint history", f"unreadable after size {after}")
            break
        after = progress
    if not seen_latest:
        checker.report("checkpoint history", f"has no checkpoint at the tree size {size}")
    cosigned = await storage.latest_cosigned_checkpoint()
    if cosigned is not None:
        await checker.check_checkpoint("cosigned checkpoint", cosigned, size)
    return FsckReport(
        size, checker.entries, checker.tiles, checker.checkpoints, tuple(checker.problems)
    )


def _claimed_size(note: bytes) -> str:
    """Return the size a note's text claims (second line), or ``"?"`` if it cannot be read."""
    lines = note.split(b"\n", 3)
    if len(lines) > 2 and lines[1].isdigit() and len(lines[1]) <= 20:
        return lines[1].decode("ascii")
    return "?"
