"""Several logs in one service (server.multilog): entries, keys and checkpoints never mix.

Each backend test runs on SQLite and on PostgreSQL (the session's throwaway server, one fresh
database per test). The logs run in process behind ``httpx.ASGITransport``; one test runs
``python -m server --config`` and ``etch audit`` against ``/logs/<name>``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime
import json
import sqlite3
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from client.cli import main as etch_main
from client.errors import UntrustedCheckpointError
from client.logclient import LogClient, policy_for_vkey
from merkle.checkpoint import Checkpoint, open_checkpoint
from merkle.errors import MerkleError
from merkle.hashing import leaf_hash
from merkle.note import Ed25519Signer, Ed25519Verifier, generate_key
from merkle.policy import parse_policy, verify_checkpoint
from merkle.receipt import parse_receipt, verify_receipt
from merkle.tiles import parse_entry_bundle
from merkle.tree import verify_inclusion
from server.config import (
    DEFAULT_LOG_NAME,
    ConfigError,
    LogConfig,
    Settings,
    load_settings,
    postgres_schema,
)
from server.log import FROZEN_META_KEY, LogFrozen, LogService
from server.multilog import HostedLog, LogHost
from server.sequencer import IntegrityFailure, Submission
from server.storage import open_storage
from server.witnessing import WitnessCollector
from tests import server_helpers
from tests.server_helpers import LogProcess
from tests.test_witnessing import FakeWitness

pytestmark = pytest.mark.anyio

BASE = "http://log.test"
ORIGINS = {
    DEFAULT_LOG_NAME: "log.test/etch/default",
    "a": "log.test/etch/a",
    "b": "log.test/etch/b",
}


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest) -> str | None:
    """``None`` (SQLite files under the data directory) or a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return None
    dsn: str = request.getfixturevalue("pg_database")
    return dsn


def make_settings(
    data_dir: Path, database_url: str | None, *logs: LogConfig, **top: Any
) -> Settings:
    """Settings of a raw-intake service: the default log plus ``logs``."""
    return Settings(
        data_dir=data_dir,
        database_url=database_url,
        origin=ORIGINS[DEFAULT_LOG_NAME],
        intake="raw",
        batch_period_ms=0,
        logs=logs,
        **top,
    )


def two_logs(**a_options: Any) -> tuple[LogConfig, LogConfig]:
    """Logs ``a`` (with ``a_options``) and ``b``."""
    return LogConfig("a", ORIGINS["a"], **a_options), LogConfig("b", ORIGINS["b"])


@contextlib.asynccontextmanager
async def running(settings: Settings) -> AsyncIterator[tuple[LogHost, httpx.AsyncClient]]:
    """Start every log of ``settings``; yield the host and a client of its application."""
    host = LogHost(settings)
    await host.start()
    try:
        transport = httpx.ASGITransport(app=host.create_app())
        async with httpx.AsyncClient(transport=transport, base_url=BASE) as client:
            yield host, client
    finally:
        await host.stop()


def prefix(name: str) -> str:
    """URL path of log ``name``."""
    return f"/logs/{name}"


async def submit(client: httpx.AsyncClient, name: str, event: dict[str, Any]) -> dict[str, Any]:
    """Submit ``event`` to log ``name``; return the answer (201 or 200 for a duplicate)."""
    response = await client.post(f"{prefix(name)}/v1/events", json=event)
    assert response.status_code in (200, 201), response.text
    answer: dict[str, Any] = response.json()
    return answer


async def listing(client: httpx.AsyncClient) -> dict[str, dict[str, Any]]:
    """``GET /logs`` by log name."""
    response = await client.get("/logs")
    assert response.status_code == 200
    return {row["name"]: row for row in response.json()["logs"]}


async def entry_bytes(client: httpx.AsyncClient, name: str, index: int) -> bytes:
    """The stored bytes of entry ``index`` of log ``name``."""
    response = await client.get(f"{prefix(name)}/v1/entries/{index}")
    assert response.status_code == 200, response.text
    return base64.b64decode(response.json()["entry"])


def opens_with(note: bytes, vkey: str) -> Checkpoint | None:
    """The checkpoint of ``note`` if ``vkey``'s log signed it (its origin as key name)."""
    try:
        checkpoint, _, _ = open_checkpoint(note, Ed25519Verifier.from_vkey(vkey))
    except MerkleError:
        return None
    return checkpoint


# -- separation ---------------------------------------------------------------------------------


async def test_logs_never_mix_entries_keys_or_checkpoints(
    tmp_path: Path, database_url: str | None
) -> None:
    settings = make_settings(tmp_path / "data", database_url, *two_logs())
    async with running(settings) as (host, client):
        rows = await listing(client)
        assert list(rows) == [DEFAULT_LOG_NAME, "a", "b"]
        for name, row in rows.items():
            assert row["origin"] == ORIGINS[name]
            assert row["state"] == "active"
            assert row["path"] == f"/logs/{name}/"
            assert row["default"] == (name == DEFAULT_LOG_NAME)
        vkeys = {name: row["vkey"] for name, row in rows.items()}
        assert len(set(vkeys.values())) == 3

        counts = {DEFAULT_LOG_NAME: 3, "a": 5, "b": 2}
        answers: dict[str, list[dict[str, Any]]] = {name: [] for name in counts}
        for name, count in counts.items():
            for n in range(count):
                answers[name].append(await submit(client, name, {"log": name, "n": n}))
        # The same event in two logs is new in each: duplicate detection is per log.
        shared = {"shared": True}
        first = await submit(client, "a", shared)
        second = await submit(client, "b", shared)
        assert not first["duplicate"]
        assert not second["duplicate"]
        assert (first["index"], second["index"]) == (5, 2)
        assert (await submit(client, "a", shared))["duplicate"]
        counts["a"] += 1
        counts["b"] += 1

        rows = await listing(client)
        notes: dict[str, bytes] = {}
        for name, count in counts.items():
            assert rows[name]["tree_size"] == count
            health = (await client.get(f"{prefix(name)}/healthz")).json()
            assert (health["origin"], health["tree_size"]) == (ORIGINS[name], count)
            notes[name] = (await client.get(f"{prefix(name)}/checkpoint")).content
            # Each checkpoint opens with its own log's key only.
            for other, vkey in vkeys.items():
                checkpoint = opens_with(notes[name], vkey)
                if other == name:
                    assert checkpoint is not None
                    assert (checkpoint.origin, checkpoint.tree_size) == (ORIGINS[name], count)
                else:
                    assert checkpoint is None
            # Each log holds exactly its own entries.
            for index, answer in enumerate(answers[name]):
                data = await entry_bytes(client, name, index)
                assert leaf_hash(data) == base64.b64decode(answer["leaf_hash"])
                event = (await client.get(f"{prefix(name)}/v1/entries/{index}")).json()["event"]
                assert event == {"log": name, "n": index}
            beyond = await client.get(f"{prefix(name)}/v1/entries/{count}")
            assert beyond.status_code == 404

        # The default log is the same log at / and at /logs/default.
        assert (await client.get("/checkpoint")).content == notes[DEFAULT_LOG_NAME]
        assert (await client.get("/healthz")).json()["origin"] == ORIGINS[DEFAULT_LOG_NAME]

        # A receipt of one log verifies under its own key only.
        receipt_a = parse_receipt(answers["a"][1]["receipt"].encode("utf-8"))
        entry_a = await entry_bytes(client, "a", 1)
        verified_a = verify_receipt(receipt_a, entry_a, policy_for_vkey(vkeys["a"]))
        assert verified_a.origin == ORIGINS["a"]
        for other in (DEFAULT_LOG_NAME, "b"):
            with pytest.raises(MerkleError):
                verify_receipt(receipt_a, entry_a, policy_for_vkey(vkeys[other]))

        # An inclusion proof of one log does not lead to the other's root at the same size.
        size = counts["b"]
        proof_a = await client.get(f"{prefix('a')}/v1/proof/inclusion?index=0&tree_size={size}")
        body = proof_a.json()
        hashes = [base64.b64decode(h) for h in body["proof"]]
        leaf = base64.b64decode(body["leaf_hash"])
        consistency = await client.get(f"{prefix('a')}/v1/proof/consistency?first={size}&second=6")
        assert consistency.status_code == 200
        root_b = opens_with(notes["b"], vkeys["b"])
        assert root_b is not None
        assert root_b.tree_size == size
        with pytest.raises(MerkleError):
            verify_inclusion(leaf, 0, size, hashes, root_b.root_hash)

        # A verifying client pointed at /logs/<name> works unchanged, and only with that key.
        transport = httpx.ASGITransport(app=host.create_app())
        async with LogClient(
            f"{BASE}/logs/a", policy_for_vkey(vkeys["a"]), transport=transport, compress=False
        ) as log_client:
            verified = await log_client.fetch_checkpoint()
            assert (verified.checkpoint.origin, verified.checkpoint.tree_size) == (ORIGINS["a"], 6)
            update = await log_client.update()
            assert update.current.checkpoint.tree_size == 6
            found = await log_client.entry(5, update.current)
            assert found.index == 5
        async with LogClient(
            f"{BASE}/logs/a", policy_for_vkey(vkeys["b"]), transport=transport, compress=False
        ) as wrong:
            with pytest.raises(UntrustedCheckpointError):
                await wrong.fetch_checkpoint()

    await check_storage_separated(settings, counts)


async def check_storage_separated(settings: Settings, counts: dict[str, int]) -> None:
    """Each log's storage (its own SQLite file or PostgreSQL schema) holds its entries alone."""
    for name, count in counts.items():
        own = settings.log_settings(name)
        if not settings.is_postgres:
            place = "log.db" if name == DEFAULT_LOG_NAME else f"logs/{name}/log.db"
            assert Path(own.database) == settings.data_dir / place
        storage = open_storage(own.database)
        await storage.open()
        try:
            entries = await storage.read_entries(0, count)
            assert len(entries) == count
            decoded = [e for e in entries if b"shared" not in e]
            assert all(name.encode() in e for e in decoded)
        finally:
            await storage.close()
    if settings.is_postgres:
        conn = await asyncpg.connect(settings.database)
        try:
            schemas = {
                row["table_schema"]
                for row in await conn.fetch(
                    "SELECT DISTINCT table_schema FROM information_schema.tables"
                    " WHERE table_name = 'entries'"
                )
            }
        finally:
            await conn.close()
        assert schemas == {"public", postgres_schema("a"), postgres_schema("b")}
    else:
        assert {p.name for p in (settings.data_dir / "logs").iterdir()} == {"a", "b"}
        for name in ("a", "b"):
            assert (settings.data_dir / "logs" / name / "log.vkey").is_file()


# -- freezing -----------------------------------------------------------------------------------


async def test_frozen_log_refuses_serves_and_keeps_its_final_checkpoint(
    tmp_path: Path, database_url: str | None
) -> None:
    data = tmp_path / "data"
    async with running(make_settings(data, database_url, *two_logs())) as (_, client):
        for n in range(4):
            await submit(client, "a", {"log": "a", "n": n})
        before = (await client.get(f"{prefix('a')}/checkpoint")).content

    frozen = make_settings(data, database_url, *two_logs(frozen=True, successor="b"))
    async with running(frozen) as (host, client):
        rows = await listing(client)
        assert rows["a"]["state"] == "frozen"
        assert (rows["a"]["final_size"], rows["a"]["successor"]) == (4, "b")
        assert rows["b"]["state"] == "active"
        final = (await client.get(f"{prefix('a')}/checkpoint")).content
        assert final == before  # nothing was added: the final checkpoint is the last one

        refused = await client.post(f"{prefix('a')}/v1/events", json={"late": 1})
        assert refused.status_code == 409
        problem = refused.json()
        assert problem["type"] == "urn:etch:error:log-frozen"
        assert problem["successor"] == "b"
        assert problem["successor_origin"] == ORIGINS["b"]
        assert problem["successor_path"] == "/logs/b/"
        batch = await client.post(f"{prefix('a')}/v1/events/batch", json=[{"late": 2}])
        assert batch.status_code == 409

        # Reads go on: tiles, entries, proofs, receipts, health.
        assert (await client.get(f"{prefix('a')}/tile/0/000.p/4")).status_code == 200
        assert (await client.get(f"{prefix('a')}/tile/entries/000.p/4")).status_code == 200
        assert (await client.get(f"{prefix('a')}/v1/entries/3")).status_code == 200
        receipt = await client.get(f"{prefix('a')}/v1/receipt/2")
        assert receipt.status_code == 200
        assert parse_receipt(receipt.content).checkpoint == final
        health = (await client.get(f"{prefix('a')}/healthz")).json()
        assert (health["status"], health["state"]) == ("ok", "frozen")
        # The successor takes entries; the frozen log's tree does not move.
        await submit(client, "b", {"late": 1})
        assert host.logs["a"].service.tree_size == 4

    # Stays frozen, with the same final checkpoint, across restarts, even when unflagged.
    for settings in (frozen, make_settings(data, database_url, *two_logs())):
        async with running(settings) as (host, client):
            assert (await client.get(f"{prefix('a')}/checkpoint")).content == final
            refused = await client.post(f"{prefix('a')}/v1/events", json={"late": 3})
            assert refused.status_code == 409
            assert host.logs["a"].service.state == "frozen"
    assert any("frozen = false does not reopen it" in w for w in host.logs["a"].service.warnings)

    storage = open_storage(frozen.log_settings("a").database)
    await storage.open()
    try:
        assert await storage.get_meta(FROZEN_META_KEY) == final
    finally:
        await storage.close()


async def test_stored_final_checkpoint_must_match_the_tree(tmp_path: Path) -> None:
    data = tmp_path / "data"
    settings = make_settings(data, None, *two_logs())
    async with running(settings) as (_, client):
        await submit(client, "a", {"n": 1})
        older = (await client.get(f"{prefix('a')}/checkpoint")).content
        await submit(client, "a", {"n": 2})
        await submit(client, "b", {"n": 1})
        foreign = (await client.get(f"{prefix('b')}/checkpoint")).content
    storage = open_storage(settings.log_settings("a").database)
    cases = [
        (foreign, "final checkpoint does not verify"),  # another log's key and origin
        (older, "frozen at tree size 1, but the stored tree has size 2"),  # its own, older
    ]
    for note, message in cases:
        await storage.open()
        await storage.put_meta(FROZEN_META_KEY, note)
        await storage.close()
        host = LogHost(settings)
        with pytest.raises(IntegrityFailure, match=message):
            await host.start()


async def test_witnessed_log_freezes_on_a_cosigned_final_checkpoint(tmp_path: Path) -> None:
    signer = Ed25519Signer.from_private_key(generate_key(ORIGINS["a"])[0])
    witness = FakeWitness("w1", signer.verifier())
    policy = parse_policy(
        f"log {signer.vkey}\nwitness w1 {witness.signer.vkey} http://w1.example\nquorum w1\n"
    )
    path = str(tmp_path / "log.db")

    def make() -> LogService:
        storage = open_storage(path)
        return LogService(storage, signer, ORIGINS["a"], batch_period=0.001, witnessed=True)

    async def entry(service: LogService, data: bytes) -> None:
        await service.submit([Submission(data, leaf_hash(data))])

    async def published_size(service: LogService, size: int) -> None:
        for _ in range(1000):
            published = service.published
            if published is not None and published.checkpoint.tree_size == size:
                return
            await asyncio.sleep(0.01)
        raise AssertionError(f"size {size} was not published")

    async with httpx.AsyncClient(transport=httpx.MockTransport(witness.handle)) as http:
        service = make()
        await service.start()
        collector = WitnessCollector(service, policy, client=http, retry_limit=0.1)
        service.collector = collector
        await collector.start()
        try:
            await entry(service, b"one")
            await published_size(service, 1)
            witness.gate.clear()  # the witness holds its answers
            await entry(service, b"two")
            freezing = asyncio.create_task(service.freeze())
            await asyncio.sleep(0.05)
            assert service.state == "freezing"
            with pytest.raises(LogFrozen):
                await entry(service, b"three")
            published = service.published
            assert published is not None
            assert published.checkpoint.tree_size == 1
            witness.gate.set()
            final = await asyncio.wait_for(freezing, 10)
            assert service.state == "frozen"
            assert final.checkpoint.tree_size == 2
            verify_checkpoint(policy, final.note)  # log signature and the witness's cosignature
        finally:
            await collector.stop()
            await service.stop()
    again = make()
    await again.start()
    try:
        assert again.state == "frozen"
        assert again.final is not None
        assert again.final.note == final.note
        assert again.published == again.final
    finally:
        await again.stop()


async def test_not_after_freezes_at_start_and_on_time(tmp_path: Path) -> None:
    now = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
    past = LogConfig("a", ORIGINS["a"], not_after=now - datetime.timedelta(days=1))
    soon = LogConfig("b", ORIGINS["b"], not_after=now + datetime.timedelta(seconds=2))
    async with running(make_settings(tmp_path / "data", None, past, soon)) as (host, client):
        rows = await listing(client)
        assert rows["a"]["state"] == "frozen"
        assert rows["a"]["not_after"] == (now - datetime.timedelta(days=1)).strftime(
            "%Y-%m-%dT%H:%M:%SZ"
        )
        assert rows["b"]["state"] == "active"
        await submit(client, "b", {"n": 1})
        for _ in range(100):
            if host.logs["b"].service.state == "frozen":
                break
            await asyncio.sleep(0.05)
        assert host.logs["b"].service.state == "frozen"
        refused = await client.post(f"{prefix('b')}/v1/events", json={"n": 2})
        assert refused.status_code == 409
        assert host.logs["b"].service.final is not None
        assert host.logs["b"].service.final.checkpoint.tree_size == 1


async def test_freeze_waits_for_submissions_in_flight(tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "data", None).log_settings(DEFAULT_LOG_NAME)
    hosted = HostedLog(DEFAULT_LOG_NAME, settings)
    await hosted.start()
    try:
        transport = httpx.ASGITransport(app=hosted.app)
        async with httpx.AsyncClient(transport=transport, base_url=BASE) as client:
            pending = [
                asyncio.create_task(client.post("/v1/events", json={"n": n})) for n in range(20)
            ]
            await asyncio.sleep(0)
            final = await hosted.service.freeze()
            answers = await asyncio.gather(*pending)
        accepted = [a for a in answers if a.status_code == 201]
        assert {a.status_code for a in answers} <= {201, 409}
        # Every accepted entry is covered by the final checkpoint; nothing came after it.
        assert final.checkpoint.tree_size == len(accepted) == hosted.service.tree_size
        assert all(a.json()["index"] < final.checkpoint.tree_size for a in accepted)
    finally:
        await hosted.stop()


# -- single log, paths, configuration ------------------------------------------------------------


async def test_single_log_mode_is_unchanged(tmp_path: Path) -> None:
    settings = load_settings(["--data-dir", str(tmp_path / "data"), "--intake", "raw"], {})
    assert settings.logs == ()
    hosted = HostedLog(DEFAULT_LOG_NAME, settings)
    await hosted.start()
    try:
        transport = httpx.ASGITransport(app=hosted.app)
        async with httpx.AsyncClient(transport=transport, base_url=BASE) as client:
            answer = (await client.post("/v1/events", json={"n": 1})).json()
            assert answer["index"] == 0
            assert (await client.get("/checkpoint")).status_code == 200
            assert (await client.get("/logs")).status_code == 404
            health = (await client.get("/healthz")).json()
            assert health["state"] == "active"
        assert (tmp_path / "data" / "log.db").is_file()
        assert not (tmp_path / "data" / "logs").exists()
    finally:
        await hosted.stop()


async def test_unknown_log_paths_are_not_found(tmp_path: Path) -> None:
    async with running(make_settings(tmp_path / "data", None, *two_logs())) as (_, client):
        assert (await client.get("/logs/c/checkpoint")).status_code == 404
        assert (await client.get("/logs/")).status_code == 200
        page = await client.get("/logs/a/explorer")
        assert page.status_code == 200
        assert ORIGINS["a"] in page.text
        token = await client.get("/logs/a/explorer/token")
        assert 'data-checkpoint-url="/logs/a/checkpoint"' in token.text


def write_config(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_config_reads_logs_tables(tmp_path: Path) -> None:
    config = write_config(
        tmp_path / "etch.toml",
        f"""
origin = "{ORIGINS[DEFAULT_LOG_NAME]}"
data_dir = "{tmp_path / "data"}"
database_url = "postgresql://etch@/etch?host=/run/postgresql"
batch_size = 50
frozen = true
successor = "2026-h2"

[logs.2026-h2]
origin = "log.test/etch/2026-h2"
policy_file = "h2.policy"
batch_period_ms = 10
not_after = 2026-12-31T23:00:00-01:00

[logs.tenant-a]
origin = "log.test/etch/tenant-a"
data_dir = "{tmp_path / "tenant"}"
database_url = "{tmp_path / "tenant.db"}"
""",
    )
    settings = load_settings(["--config", str(config)], {})
    assert settings.log_names == [DEFAULT_LOG_NAME, "2026-h2", "tenant-a"]
    assert (settings.frozen, settings.successor) == (True, "2026-h2")
    h2 = settings.log_settings("2026-h2")
    assert h2.origin == "log.test/etch/2026-h2"
    assert h2.data_dir == tmp_path / "data" / "logs" / "2026-h2"
    assert h2.database == ("postgresql://etch@/etch?host=/run/postgresql&search_path=etch_2026_h2")
    assert (h2.batch_size, h2.batch_period_ms, h2.frozen) == (50, 10, False)
    assert h2.policy_file == Path("h2.policy")
    config_h2 = settings.log_config("2026-h2")
    assert config_h2 is not None
    assert config_h2.not_after == datetime.datetime(2027, 1, 1, tzinfo=datetime.UTC)
    tenant = settings.log_settings("tenant-a")
    assert (tenant.data_dir, tenant.database) == (tmp_path / "tenant", str(tmp_path / "tenant.db"))
    default = settings.log_settings(DEFAULT_LOG_NAME)
    assert (default.origin, default.logs) == (ORIGINS[DEFAULT_LOG_NAME], ())


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ('[logs.a]\norigin = "x/a"\ncolour = 1\n', "unknown key logs.a.colour"),
        ("[logs.a]\nbatch_size = 5\n", "origin is required"),
        ('[logs.A]\norigin = "x/a"\n', "log name"),
        ('[logs.a_b]\norigin = "x/a"\n', "log name"),
        ('[logs.-a]\norigin = "x/a"\n', "log name"),
        ('[logs.default]\norigin = "x/a"\n', "the top-level log's"),
        ('[logs.a]\norigin = "localhost/etch/log"\n', "also the origin of default"),
        ('[logs.a]\norigin = "x/a"\n[logs.b]\norigin = "x/a"\n', "also the origin of a"),
        ('[logs.a]\norigin = "x/a"\nsuccessor = "c"\n', "names no configured log"),
        ('[logs.a]\norigin = "x/a"\nsuccessor = "a"\n', "cannot succeed itself"),
        ('[logs.a]\norigin = "x/a"\nnot_after = 2026-01-01T00:00:00\n', "with an offset"),
        ('[logs.a]\norigin = "x/a"\nnot_after = "2026-01-01"\n', "with an offset"),
        ('[logs.a]\norigin = "x/a"\nbatch_size = "5"\n', "must be a TOML integer"),
        ('[logs.a]\norigin = "x/a"\nfrozen = "yes"\n', "must be a TOML boolean"),
        ("logs = 3\n", "must be a table"),
        (
            'cluster = true\ndatabase_url = "postgresql://h/db"\n[logs.a]\norigin = "x/a"\n'
            'database_url = "DATA/a.db"\n',
            "cluster mode needs PostgreSQL",
        ),
        ('[logs.a]\norigin = "x/a"\ndata_dir = "DATA"\n', "also the data_dir of default"),
        ('successor = "a"\n', "there is no \\[logs.<name>\\] table"),
    ],
)
def test_config_refuses_bad_logs_tables(tmp_path: Path, body: str, message: str) -> None:
    data = tmp_path / "data"
    config = write_config(
        tmp_path / "etch.toml", f'data_dir = "{data}"\n' + body.replace("DATA", str(data))
    )
    with pytest.raises(ConfigError, match=message):
        load_settings(["--config", str(config)], {})


# -- the real process and the CLI ----------------------------------------------------------------


@pytest.fixture
def service(tmp_path: Path) -> Iterator[LogProcess]:
    data = tmp_path / "data"
    config = write_config(
        tmp_path / "etch.toml",
        f'origin = "{ORIGINS[DEFAULT_LOG_NAME]}"\n'
        f'[logs.a]\norigin = "{ORIGINS["a"]}"\n'
        f'[logs.b]\norigin = "{ORIGINS["b"]}"\n',
    )
    process = LogProcess(data, extra_args=["--config", str(config)])
    asyncio.run(process.start())
    try:
        yield process
    finally:
        process.terminate()


@pytest.mark.timeout(120)
def test_etch_audit_against_one_log_of_a_service(
    service: LogProcess, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = service.base_url
    with httpx.Client(base_url=base) as client:
        for name, count in (("a", 3), ("b", 5)):
            for n in range(count):
                response = client.post(f"/logs/{name}/v1/events", json={"log": name, "n": n})
                assert response.status_code == 201, response.text
        rows = {row["name"]: row for row in client.get("/logs").json()["logs"]}
    assert (rows["a"]["tree_size"], rows["b"]["tree_size"]) == (3, 5)
    data = service.data_dir

    def audit(name: str, key_of: str) -> tuple[int, str]:
        capsys.readouterr()
        status = etch_main(
            [
                "audit",
                "--log",
                f"{base}/logs/{name}",
                "--vkey-file",
                str(data / "logs" / key_of / "log.vkey"),
                "--state-dir",
                str(tmp_path / f"state-{name}-{key_of}"),
                "--json",
            ]
        )
        return status, capsys.readouterr().out

    status, out = audit("a", "a")
    assert status == 0, out
    report = json.loads(out.strip().splitlines()[-1])
    assert json.dumps(report).count(ORIGINS["a"]) >= 1
    status, out = audit("a", "b")
    assert status != 0
    assert sqlite3.connect(data / "logs" / "b" / "log.db").execute(
        "SELECT count(*) FROM entries"
    ).fetchone() == (5,)


def test_submitters_are_registered_per_log(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "data"
    config = write_config(
        tmp_path / "etch.toml",
        f'data_dir = "{data}"\n[logs.a]\norigin = "{ORIGINS["a"]}"\n',
    )
    common = ["--config", str(config), "--generate-key"]
    assert (
        etch_main(
            [
                "submitter",
                "add",
                "as-a",
                *common,
                "--key-file",
                str(tmp_path / "a.key"),
                "--log-name",
                "a",
            ]
        )
        == 0
    )
    assert (
        etch_main(
            ["submitter", "add", "as-default", *common, "--key-file", str(tmp_path / "d.key")]
        )
        == 0
    )
    assert etch_main(["submitter", "list", "--config", str(config), "--log-name", "c"]) == 2

    def names(db: Path) -> set[str]:
        with contextlib.closing(sqlite3.connect(db)) as conn:
            return {row[0] for row in conn.execute("SELECT name FROM principals")}

    assert names(data / "logs" / "a" / "log.db") == {"as-a"}
    assert names(data / "log.db") == {"as-default"}
    capsys.readouterr()


async def test_several_logs_on_worker_processes_never_mix(tmp_path: Path, pg_database: str) -> None:
    """``--workers 2`` (cluster mode) with two logs on one PostgreSQL database: each worker
    serves both, one process sequences each, and every answer verifies under its own log's
    key only; each log's tree holds exactly its own entries."""
    data = tmp_path / "data"
    config = write_config(
        tmp_path / "etch.toml",
        f'origin = "{ORIGINS[DEFAULT_LOG_NAME]}"\n[logs.b]\norigin = "{ORIGINS["b"]}"\n',
    )
    process = LogProcess(
        data, database_url=pg_database, extra_args=["--config", str(config), "--workers", "2"]
    )
    await process.start()
    try:
        vkeys = {
            "": process.vkey(),
            "/logs/b": (data / "logs" / "b" / "log.vkey").read_text(encoding="ascii").strip(),
        }
        keys = {base: Ed25519Verifier.from_vkey(vkey) for base, vkey in vkeys.items()}
        sent: dict[str, list[bytes]] = {base: [] for base in keys}
        for _ in range(2):  # new connections: the kernel spreads them over both workers
            async with httpx.AsyncClient(base_url=process.base_url, timeout=30) as client:
                posts = []
                for base in keys:
                    first = len(sent[base])
                    for n in range(6):
                        event = {"log": base or "default", "n": first + n}
                        sent[base].append(server_helpers.entry_bytes(event))
                        posts.append(
                            (base, sent[base][-1], client.post(f"{base}/v1/events", json=event))
                        )
                results = await asyncio.gather(*(post for _, _, post in posts))
                for (base, entry, _), response in zip(posts, results, strict=True):
                    assert response.status_code == 201, response.text
                    body = response.json()
                    server_helpers.check_submit_result(body, entry, keys[base], vkey=vkeys[base])
                    other = next(v for p, v in keys.items() if p != base)
                    with pytest.raises(MerkleError):
                        open_checkpoint(body["checkpoint"].encode(), other)
        async with httpx.AsyncClient(base_url=process.base_url, timeout=30) as client:
            for base, verifier in keys.items():
                note = (await client.get(f"{base}/checkpoint")).content
                size = open_checkpoint(note, verifier)[0].tree_size
                assert size == len(sent[base]) == 12
                bundle = await client.get(f"{base}/tile/entries/000.p/{size}")
                assert bundle.status_code == 200, bundle.text
                assert sorted(parse_entry_bundle(bundle.content)) == sorted(sent[base])
    finally:
        process.terminate()


async def test_frozen_in_the_configuration_freezes_a_log_of_worker_processes(
    tmp_path: Path, pg_database: str
) -> None:
    """Restarted with ``frozen = true`` on log ``b``, two worker processes freeze it together:
    ``b`` refuses (409) and serves one final checkpoint from every worker; the default log
    goes on taking entries."""
    data = tmp_path / "data"
    head = f'origin = "{ORIGINS[DEFAULT_LOG_NAME]}"\n[logs.b]\norigin = "{ORIGINS["b"]}"\n'
    config = write_config(tmp_path / "etch.toml", head)
    process = LogProcess(
        data, database_url=pg_database, extra_args=["--config", str(config), "--workers", "2"]
    )
    await process.start()
    try:
        async with httpx.AsyncClient(base_url=process.base_url, timeout=30) as client:
            for n in range(5):
                response = await client.post("/logs/b/v1/events", json={"n": n})
                assert response.status_code == 201, response.text
    finally:
        process.terminate()
    write_config(tmp_path / "etch.toml", head + "frozen = true\n")
    await process.start()
    try:
        verifier = Ed25519Verifier.from_vkey(
            (data / "logs" / "b" / "log.vkey").read_text(encoding="ascii").strip()
        )
        notes = set()
        for n in range(6):  # new connections: the kernel spreads them over both workers
            async with httpx.AsyncClient(base_url=process.base_url, timeout=30) as client:
                refused = await client.post("/logs/b/v1/events", json={"after": "freeze"})
                assert refused.status_code == 409, refused.text
                notes.add((await client.get("/logs/b/checkpoint")).content)
                accepted = await client.post("/v1/events", json={"still": "open", "n": n})
                assert accepted.status_code == 201, accepted.text
        (note,) = notes
        assert open_checkpoint(note, verifier)[0].tree_size == 5
    finally:
        process.terminate()
