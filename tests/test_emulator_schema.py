"""The emulator's schema accepts exactly what the official SDK sends, and rejects the rest."""

from __future__ import annotations

import json
from pathlib import Path

import graphql
import pytest

from autolabel.emulator.schema import build_executable_schema

#: The documents redbrick-sdk 2.28.7 and 2.35.4 send, captured on the wire (shared spec).
DOCUMENTS = Path(__file__).parent / "data" / "graphql-documents.json"

SCHEMA = build_executable_schema()


def _documents() -> list[tuple[str, str, str]]:
    data = json.loads(DOCUMENTS.read_text(encoding="utf-8"))
    return [
        (name, version, doc) for name, versions in data.items() for version, doc in versions.items()
    ]


@pytest.mark.parametrize(("name", "version", "document"), _documents(), ids=lambda v: str(v)[:40])
def test_every_sdk_document_validates(name: str, version: str, document: str) -> None:
    """Each operation either SDK version sends is valid against the emulator's schema."""
    errors = graphql.validate(SCHEMA, graphql.parse(document))
    assert errors == [], f"{name} ({version}): {[e.message for e in errors]}"


def test_both_sdk_versions_are_covered() -> None:
    """The captured set holds 2.28.7 and 2.35.4 documents for the core operations."""
    versions = {version for _, version, _ in _documents()}
    assert {"2.28.7", "2.35.4"} <= versions
    names = {name for name, _, _ in _documents()}
    assert {"getProjectSDK", "tasksListSDK", "putTaskAndLabelsSDK", "presignUploadsSDK"} <= names


def test_our_client_documents_validate() -> None:
    """autolabel's own client asks only what the emulator (and so RedBrick) can answer."""
    documents = pytest.importorskip("autolabel.redbrick.documents")
    texts = {n: v for n, v in vars(documents).items() if n.isupper() and isinstance(v, str)}
    assert texts
    for name, text in texts.items():
        if not text.lstrip().startswith(("query", "mutation")):
            continue  # a shared selection shard, not a document
        errors = graphql.validate(SCHEMA, graphql.parse(text))
        assert errors == [], f"{name}: {[e.message for e in errors]}"


@pytest.mark.parametrize(
    "document",
    [
        "query { me { userId password } }",
        'query { task(orgId: "x") { taskId } }',
        'mutation { putManualLabelingTask(orgId: "00000000-0000-0000-0000-000000000000") { ok } }',
        'query { genericTasks(orgId: "00000000-0000-0000-0000-000000000000",'
        ' projectId: "00000000-0000-0000-0000-000000000000", unknownArg: 1) { cursor } }',
    ],
)
def test_bad_documents_are_rejected(document: str) -> None:
    """Unknown fields, missing required arguments and unknown arguments fail validation."""
    assert graphql.validate(SCHEMA, graphql.parse(document))
