"""Our GraphQL documents ask the real API exactly what redbrick-sdk 2.35.4 asks.

The SDK builds each document inside its repository methods. We call those methods with a
recording client that keeps the document and stops the call, then parse both documents
with graphql-core and compare operation type, variables, root fields, arguments and the
whole selection tree (order-insensitive, aliases and inline fragments included).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import graphql
import pytest
from graphql.language import ast

from autolabel.redbrick import documents

redbrick_repo = pytest.importorskip("redbrick.repo.labeling")
from redbrick.repo.export import ExportRepoImpl as ExportRepo  # noqa: E402
from redbrick.repo.labeling import LabelingRepoImpl as LabelingRepo  # noqa: E402
from redbrick.repo.member import MemberRepoImpl as MemberRepo  # noqa: E402
from redbrick.repo.project import ProjectRepoImpl as ProjectRepo  # noqa: E402
from redbrick.repo.upload import UploadRepoImpl as UploadRepo  # noqa: E402


class _Captured(Exception):
    def __init__(self, document: str) -> None:
        super().__init__("captured")
        self.document = document


class _Recorder:
    """Stands in for the SDK's ``RBClient``: records the document, sends nothing."""

    def execute_query(self, query: str, variables: Any, *args: Any) -> Any:
        raise _Captured(query)

    async def execute_query_async(
        self, session: Any, query: str, variables: Any, *args: Any
    ) -> Any:
        raise _Captured(query)


def _sdk_document(call: Callable[[Any], Any]) -> str:
    client = _Recorder()
    try:
        result = call(client)
        if asyncio.iscoroutine(result):
            asyncio.run(result)
    except _Captured as captured:
        return captured.document
    raise AssertionError("the SDK method sent no document")


ORG, PRJ, TSK = "org", "project", "task"
SDK_CALLS: dict[str, Callable[[Any], Any]] = {
    "getProjectSDK": lambda c: ProjectRepo(c).get_project(ORG, PRJ),
    "currentUserSDK": lambda c: ProjectRepo(c).get_current_user(),
    "getLabelStorageSDK": lambda c: ProjectRepo(c).get_label_storage(ORG, PRJ),
    "membersSDK": lambda c: MemberRepo(c).list_org_members(ORG, False),
    "tasksListSDK": lambda c: ExportRepo(c).task_search(
        ORG, PRJ, "Label", None, {}, True, 10, None
    ),
    "taskSDK": lambda c: ExportRepo(c).get_datapoint_latest(ORG, PRJ, TSK, True, False),
    "tasksPagedSDK": lambda c: ExportRepo(c).get_datapoints_latest(
        ORG, PRJ, "END", None, True, False, 10
    ),
    "presignItemsSDK": lambda c: ExportRepo(c).presign_items(ORG, "storage", ["a"]),
    "validateAndConvertToImportFormatSDK": lambda c: UploadRepo(
        c
    ).validate_and_convert_to_import_format(None, [], True, "storage"),
    "presignUploadsSDK": lambda c: LabelingRepo(c).presign_labels_path(
        None, ORG, PRJ, TSK, "v", 0, 1
    ),
    "putTaskAndLabelsSDK": lambda c: LabelingRepo(c).put_labeling_results(
        None, ORG, PRJ, "Label", TSK, "[]"
    ),
    "putLabelingTaskSDK": lambda c: LabelingRepo(c).put_labeling_task_result(
        None, ORG, PRJ, "Label", TSK
    ),
    "putReviewTaskSDK": lambda c: LabelingRepo(c).put_review_task_result(
        None, ORG, PRJ, "Review_1", TSK, True
    ),
    "moveTaskToStartSDK": lambda c: LabelingRepo(c).move_task_to_start(None, ORG, PRJ, TSK),
    "assignTasksMultipleUsersSDK": lambda c: LabelingRepo(c).assign_tasks(
        ORG, PRJ, [TSK], None, False, True
    ),
    "updateTasksPrioritiesSDK": lambda c: UploadRepo(c).update_priority(
        None, ORG, PRJ, [{"taskId": TSK, "priority": 0.5}]
    ),
}


def _selections(selection_set: ast.SelectionSetNode | None) -> frozenset[Any]:
    if selection_set is None:
        return frozenset()
    out = []
    for node in selection_set.selections:
        if isinstance(node, ast.FieldNode):
            arguments = frozenset(
                (a.name.value, graphql.print_ast(a.value)) for a in node.arguments or ()
            )
            alias = node.alias.value if node.alias else None
            out.append(
                ("field", alias, node.name.value, arguments, _selections(node.selection_set))
            )
        elif isinstance(node, ast.InlineFragmentNode):
            condition = node.type_condition.name.value if node.type_condition else None
            out.append(("on", condition, _selections(node.selection_set)))
        else:
            raise AssertionError(f"unexpected selection {type(node).__name__}")
    return frozenset(out)


def _shape(document: str) -> dict[str, Any]:
    parsed = graphql.parse(document)
    (operation,) = parsed.definitions
    assert isinstance(operation, ast.OperationDefinitionNode)
    return {
        "type": operation.operation.value,
        "name": operation.name.value if operation.name else None,
        "variables": {
            v.variable.name.value: graphql.print_ast(v.type)
            for v in operation.variable_definitions or ()
        },
        "root_fields": sorted(
            (f.alias.value if f.alias else f.name.value, f.name.value)
            for f in operation.selection_set.selections
            if isinstance(f, ast.FieldNode)
        ),
        "selections": _selections(operation.selection_set),
    }


def test_every_operation_we_send_is_covered() -> None:
    """Each document the client can send is compared with the SDK's below."""
    assert set(documents.DOCUMENTS) == set(SDK_CALLS)


@pytest.mark.parametrize("operation", sorted(SDK_CALLS))
def test_document_matches_sdk(operation: str) -> None:
    """Same operation type and name, variables and types, root fields, arguments, selections."""
    ours = _shape(documents.DOCUMENTS[operation])
    theirs = _shape(_sdk_document(SDK_CALLS[operation]))
    assert ours["type"] == theirs["type"]
    assert ours["name"] == theirs["name"] == operation
    assert ours["variables"] == theirs["variables"]
    assert ours["root_fields"] == theirs["root_fields"]
    assert ours["selections"] == theirs["selections"]


def test_comparison_notices_a_missing_field() -> None:
    """The comparison is not vacuous: dropping one nested field makes it differ."""
    original = documents.DOCUMENTS["taskSDK"]
    mutilated = original.replace(
        "labelsStorage { storageId }", "labelsStorage { }".replace(" { }", "")
    )
    assert mutilated != original
    assert _shape(mutilated)["selections"] != _shape(original)["selections"]


def test_consensus_task_document_matches_sdk() -> None:
    """In consensus projects the task is read with the SDK's consensus shard (sub-tasks
    with their own labels), ``get_datapoint_latest(..., with_consensus=True)``."""
    ours = _shape(documents.GET_TASK_CONSENSUS)
    theirs = _shape(
        _sdk_document(lambda c: ExportRepo(c).get_datapoint_latest(ORG, PRJ, TSK, True, True))
    )
    assert ours == theirs


@pytest.mark.parametrize("consensus", [False, True])
def test_task_read_without_item_urls_matches_sdk(consensus: bool) -> None:
    """The re-read before a write asks what the SDK asks with ``presign_items=False``
    (``get_datapoint_latest``): the same task without presigned item URLs."""
    ours = _shape(
        documents.GET_TASK_CONSENSUS_UNSIGNED if consensus else documents.GET_TASK_UNSIGNED
    )
    theirs = _shape(
        _sdk_document(lambda c: ExportRepo(c).get_datapoint_latest(ORG, PRJ, TSK, False, consensus))
    )
    assert ours == theirs
    assert ours != _shape(documents.GET_TASK_CONSENSUS if consensus else documents.GET_TASK)
