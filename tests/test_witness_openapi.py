"""The witness's OpenAPI document: it lists exactly the app's routes and is served as built."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from starlette.routing import Route

from tests.witness_support import FakeLog, in_process_witness
from witness.http import Components, create_app
from witness.openapi import openapi_document
from witness.storage import WitnessStorage, open_storage

pytestmark = pytest.mark.anyio


@pytest.fixture
async def storage(tmp_path: Path) -> AsyncIterator[WitnessStorage]:
    opened = await open_storage(tmp_path / "witness.sqlite3")
    try:
        yield opened
    finally:
        await opened.close()


def _app_operations() -> set[tuple[str, str]]:
    @contextlib.asynccontextmanager
    async def unused() -> AsyncIterator[Components]:  # the lifespan is not entered here
        nothing: tuple[Components, ...] = ()
        for components in nothing:
            yield components

    app = create_app(unused)
    operations = set()
    for route in app.routes:
        assert isinstance(route, Route)
        for method in route.methods or ():
            if method != "HEAD":
                operations.add((route.path, method.lower()))
    return operations


def test_document_lists_exactly_the_routes() -> None:
    document = openapi_document("witness.example/w1")
    documented = {(path, method) for path, item in document["paths"].items() for method in item}
    assert documented == _app_operations()
    assert ("/add-checkpoint", "post") in documented


def test_path_parameters_are_declared() -> None:
    for path, item in openapi_document("w")["paths"].items():
        for operation in item.values():
            declared = {p["name"] for p in operation.get("parameters", ()) if p["in"] == "path"}
            wanted = {part[1:-1] for part in path.split("/") if part.startswith("{")}
            assert declared == wanted, path


def _references(value: Any) -> list[str]:
    if isinstance(value, dict):
        found = [value["$ref"]] if "$ref" in value else []
        return found + [r for item in value.values() for r in _references(item)]
    if isinstance(value, list):
        return [r for item in value for r in _references(item)]
    return []


def test_references_resolve() -> None:
    document = openapi_document("w")
    references = _references(document)
    assert len(references) >= 3
    for reference in references:
        assert reference.startswith("#/components/schemas/")
        assert reference.rsplit("/", 1)[1] in document["components"]["schemas"]


async def test_served_at_openapi_json(storage: WitnessStorage) -> None:
    log = FakeLog()
    async with in_process_witness(storage, [log.config()], name="witness.example/w9") as w:
        response = await w.client.get("/openapi.json")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.json() == openapi_document("witness.example/w9")
