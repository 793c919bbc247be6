"""The GraphQL schema (``schema.graphql``) bound to resolvers, executed with graphql-core.

:func:`build_executable_schema` loads the SDL and attaches one resolver per root field plus
the argument-dependent fields (``items(presigned:)``, ``labelsMap(presigned:)``,
``labelsDataPath(presigned:)``). Resolvers get a :class:`RequestContext` (who calls, where
the server is) and raise :class:`~autolabel.emulator.stages.RuleViolation` to answer a
GraphQL error (graphql-core then returns ``data: {<field>: null}`` with ``errors``).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

import graphql

from autolabel.emulator import altadb, assignment, datapoints, tasklist, workflow
from autolabel.emulator.entities import ProjectRecord, UserRecord
from autolabel.emulator.importformat import InvalidImport, validate_and_convert
from autolabel.emulator.stages import RuleViolation
from autolabel.emulator.storage import BlobStore, StorageRefused, check_key
from autolabel.emulator.store import Store
from autolabel.emulator.views import (
    project_status_key,
    project_view,
    stages_view,
    task_view,
    taxonomy_view,
    user_view,
)


@dataclass(frozen=True)
class RequestContext:
    """What a resolver knows about the request: the state, the caller and the base URL."""

    store: Store
    blobs: BlobStore
    caller: UserRecord
    base_url: str

    def owns(self, key: str) -> bool:
        """True when a storage key lies in the caller's org's storage (``<orgId>/...``)."""
        # follows redbrick/repo/export.py presign_items: presigning is asked of one org's
        # storage (orgId, storageId), so a key outside that org is not the caller's to read.
        return key.split("/", 1)[0] == self.caller.org_id

    def owned_file(self, key: str) -> bool:
        """True when ``key`` is stored and in the caller's org (items, label files)."""
        return self.owns(key) and self.blobs.exists(key)

    def presign_get(self, key: str | None) -> str | None:
        """A GET URL for a stored key of the caller's org; absolute URLs pass through.

        None for a key that is not stored or not the caller's: the two look the same, so
        nothing is learnt about another org's files.
        """
        if not key:
            return None
        if key.startswith(("http://", "https://")):
            return key
        if altadb.is_item(key):  # follows redbrick/utils/altadb.py: a manifest per series
            series = altadb.series_prefix(key)
            if not series or not self.owned_file(f"{series}/metadata.json"):
                return None
            return altadb.presign(self.blobs, self.base_url, key)
        if not self.owned_file(key):
            return None
        return self.blobs.presign(self.base_url, key, "GET")

    def upload_key(self, key: str, name: str) -> str:
        """``key`` checked as a new upload target; RuleViolation naming ``name`` otherwise."""
        try:
            clean = check_key(key)
        except StorageRefused as exc:
            raise RuleViolation(f"File {name[:80]!r} cannot be uploaded: {exc}") from None
        if self.blobs.exists(clean):
            raise RuleViolation(f"File {name[:80]!r} already exists; upload it under a new name")
        return clean

    def project(self, args: dict[str, Any]) -> ProjectRecord:
        """The project named by ``orgId``/``projectId``, checked against the caller's org."""
        return workflow.project_for(
            self.store, self.caller, str(args["orgId"]), str(args["projectId"])
        )


Resolver = Callable[..., Any]

if TYPE_CHECKING:  # generic from graphql-core 3.3 on
    Info = graphql.GraphQLResolveInfo[Any]
else:
    Info = graphql.GraphQLResolveInfo


def _ctx(info: Info) -> RequestContext:
    context: RequestContext = info.context
    return context


def _check_org(ctx: RequestContext, org_id: str) -> None:
    if ctx.caller.org_id != str(org_id):
        raise RuleViolation(f"Organization {org_id} does not exist or is not yours")


# -- queries ------------------------------------------------------------------------------


def _project(_: Any, info: Info, **args: Any) -> Any:
    ctx = _ctx(info)
    project = ctx.store.project(str(args["projectId"]))
    org_ids = {str(args["orgId"]), ctx.caller.org_id}
    if project is None or org_ids != {project.org_id}:
        return None  # the real server answers null for an unknown project (§5.2)
    status = ctx.store.meta(project_status_key(project.project_id)) or "CREATION_SUCCESS"
    return project_view(project, ctx.base_url, status=status)


def _stages(_: Any, info: Info, **args: Any) -> Any:
    return stages_view(_ctx(info).project(args))


def _taxonomy(_: Any, info: Info, **args: Any) -> Any:
    ctx = _ctx(info)
    _check_org(ctx, args["orgId"])
    for project in ctx.store.projects(ctx.caller.org_id):
        taxonomy = taxonomy_view(project)
        if taxonomy.get("name") == args.get("name") or (
            args.get("taxId") and taxonomy.get("taxId") == str(args["taxId"])
        ):
            return taxonomy
    return None


def _label_storage(_: Any, info: Info, **args: Any) -> Any:
    project = _ctx(info).project(args)
    return {
        "storageId": datapoints.REDBRICK_STORAGE,
        "path": f"{project.org_id}/{project.project_id}",
    }


def _me(_: Any, info: Info) -> Any:
    ctx = _ctx(info)
    return user_view(ctx.caller, caller_id=ctx.caller.user_id)


def _members(_: Any, info: Info, **args: Any) -> Any:
    ctx = _ctx(info)
    _check_org(ctx, args["orgId"])
    return [
        {
            "user": user_view(user),
            "role": user.role,
            "tags": [],
            "active": True,
            "lastSeen": None,
        }
        for user in ctx.store.users(ctx.caller.org_id)
    ]


def _generic_tasks(_: Any, info: Info, **args: Any) -> Any:
    ctx = _ctx(info)
    project = ctx.project(args)
    found = tasklist.search(
        ctx.store,
        project,
        stage_name=args.get("stageName"),
        task_search=args.get("taskSearch"),
        filters=args.get("manualLabelingFilters") or {},
    )
    page, cursor = tasklist.paginate(found, args.get("first"), args.get("after"))
    return {"entries": [task_view(ctx.store, t) for t in page], "cursor": cursor}


def _tasks_paged(_: Any, info: Info, **args: Any) -> Any:
    ctx = _ctx(info)
    project = ctx.project(args)
    now = datetime.now().astimezone().isoformat()
    found = tasklist.by_stage(ctx.store, project, args.get("stageName"), args.get("cacheTime"))
    page, cursor = tasklist.paginate(found, args.get("first"), args.get("after"))
    return {
        "entries": [task_view(ctx.store, t) for t in page],
        "cursor": cursor,
        "cacheTime": now,
        "count": len(found),
    }


def _task(_: Any, info: Info, **args: Any) -> Any:
    ctx = _ctx(info)
    project = ctx.project(args)
    return task_view(ctx.store, workflow.task_in(ctx.store, project, str(args["taskId"])))


def _presign_items(_: Any, info: Info, **args: Any) -> Any:
    ctx = _ctx(info)
    _check_org(ctx, args["orgId"])
    # follows redbrick/repo/export.py presign_items: a list aligned with items, null for a
    # path that cannot be presigned (here also one outside the caller's org).
    return [ctx.presign_get(item) for item in args["items"]]


def _taxonomy_for(ctx: RequestContext) -> Callable[[Any], dict[str, Any]]:
    def pick(task: Any) -> dict[str, Any]:
        task_id = task.get("taskId") if isinstance(task, dict) else None
        if task_id:
            found = ctx.store.task(str(task_id))
            project = ctx.store.project(found.project_id) if found else None
            if project is None or project.org_id != ctx.caller.org_id:
                raise InvalidImport(f"Task {task_id} does not exist")
            return project.taxonomy
        projects = ctx.store.projects(ctx.caller.org_id)
        if not projects:
            raise InvalidImport("this organization has no project and so no taxonomy")
        object_types = [o for p in projects for o in p.taxonomy.get("objectTypes") or []]
        return {"name": projects[0].taxonomy.get("name"), "objectTypes": object_types}

    return pick


def _validate_convert(_: Any, info: Info, **args: Any) -> Any:
    return validate_and_convert(args["original"], _taxonomy_for(_ctx(info)))


def _presign_uploads(_: Any, info: Info, **args: Any) -> Any:
    ctx = _ctx(info)
    project = ctx.project(args)
    out = []
    for name in args["files"]:
        # follows redbrick/repo/labeling.py presign_labels_path: this query only mints PUT
        # URLs for label files (labels/<uuid>/<uuid>/0.nii.gz or data.json), so they land in
        # the project's labels/ namespace, never on an item, and only on a new key.
        relative = name.lstrip("/")
        relative = relative if relative.startswith("labels/") else f"labels/{relative}"
        key = ctx.upload_key(f"{project.org_id}/{project.project_id}/{relative}", name)
        url = ctx.blobs.presign(ctx.base_url, key, "PUT")
        out.append({"presignedUrl": url, "filePath": key, "fileName": name.rsplit("/", 1)[-1]})
    return out


def _items_upload_presign(_: Any, info: Info, **args: Any) -> Any:
    ctx = _ctx(info)
    project = ctx.project(args)
    items = []
    for name in args["files"]:
        base = str(name).replace("\\", "/").rsplit("/", 1)[-1]
        key = f"{project.org_id}/{project.project_id}/items/{uuid.uuid4()}/{base}"
        key = ctx.upload_key(key, str(name))  # follows redbrick/upload/interact.py: base names
        url = ctx.blobs.presign(ctx.base_url, key, "PUT")
        items.append({"presignedUrl": url, "filePath": key, "fileName": base})
    return {"items": items}


# -- mutations ----------------------------------------------------------------------------


def _assign(_: Any, info: Info, **args: Any) -> Any:
    ctx = _ctx(info)
    tasks = assignment.assign(
        ctx.store,
        ctx.caller,
        ctx.project(args),
        task_ids=[str(t) for t in args["taskIds"]],
        emails=args.get("emails"),
        current_user=bool(args.get("currentUser")),
    )
    return [{"taskId": t.task_id, "name": t.name, "stageName": t.stage_name} for t in tasks]


def _put_labels(_: Any, info: Info, **args: Any) -> Any:
    ctx = _ctx(info)
    workflow.save_labels(
        ctx.store,
        ctx.caller,
        ctx.project(args),
        task_id=str(args["taskId"]),
        stage_name=args["stageName"],
        finished=bool(args["finished"]),
        labels_data=args.get("labelsData"),
        labels_data_path=args.get("labelsDataPath"),
        labels_map=list(args.get("labelsMap") or []),
        storage_id=datapoints.REDBRICK_STORAGE,
        file_exists=ctx.owned_file,
        copy_file=ctx.blobs.copy,
    )
    return {"ok": True}


def _put_task(_: Any, info: Info, **args: Any) -> Any:
    ctx = _ctx(info)
    workflow.submit_existing(
        ctx.store,
        ctx.caller,
        ctx.project(args),
        task_id=str(args["taskId"]),
        stage_name=args["stageName"],
    )
    return {"ok": True}


def _put_review(_: Any, info: Info, **args: Any) -> Any:
    ctx = _ctx(info)
    workflow.review(
        ctx.store,
        ctx.caller,
        ctx.project(args),
        task_id=str(args["taskId"]),
        stage_name=args["stageName"],
        passed=bool(args["reviewVal"]),
    )
    return {"ok": True}


def _move_to_start(_: Any, info: Info, **args: Any) -> Any:
    ctx = _ctx(info)
    workflow.move_to_start(ctx.store, ctx.caller, ctx.project(args), task_id=str(args["taskId"]))
    return {"ok": True}


def _create_datapoint(_: Any, info: Info, **args: Any) -> Any:
    ctx = _ctx(info)
    if not args.get("projectId"):
        raise RuleViolation("createDatapoint without projectId (workspaces) is not emulated")
    project = ctx.project(args)
    task = datapoints.create_datapoint(
        ctx.store, ctx.caller.user_id, project, args, item_exists=ctx.owned_file
    )
    return {"dpId": task.dp_id, "taskId": task.task_id, "taskIds": [task.task_id]}


def _update_priorities(_: Any, info: Info, **args: Any) -> Any:
    ctx = _ctx(info)
    assignment.set_priorities(ctx.store, ctx.project(args), list(args["tasks"]))
    # follows redbrick/repo/upload.py update_priority: the SDK reads ``message`` (an error)
    return {"ok": True, "message": None}


def _assign_queue(_: Any, info: Info, **args: Any) -> Any:
    ctx = _ctx(info)
    project = ctx.project(args)
    tasks = assignment.assign_queue(
        ctx.store, ctx.caller, project, stage_name=args["stageName"], count=int(args["count"])
    )
    views = []
    for task in tasks:
        view = task_view(ctx.store, task)
        view.update(orgId=project.org_id, taxonomy=taxonomy_view(project))
        view["assignedTo"] = user_view(ctx.caller, caller_id=ctx.caller.user_id)
        views.append(view)
    return views


# -- argument-dependent fields ------------------------------------------------------------


def _items(parent: dict[str, Any], info: Info, presigned: bool = False) -> Any:
    items: list[str] = parent.get("items") or []
    return [_ctx(info).presign_get(i) for i in items] if presigned else items


def _labels_map(parent: dict[str, Any], info: Info, presigned: bool = False) -> Any:
    entries: list[dict[str, Any]] = parent.get("labelsMap") or []
    if not presigned:
        return entries
    ctx = _ctx(info)
    return [{**e, "labelName": ctx.presign_get(e["labelName"])} for e in entries]


def _labels_data_path(parent: dict[str, Any], info: Info, presigned: bool = False) -> Any:
    path = parent.get("labelsDataPath")
    return _ctx(info).presign_get(path) if presigned and path else path


#: Resolvers of fields of the schema's object types, by ``(type, field)``.
FIELD_RESOLVERS: dict[tuple[str, str], Resolver] = {
    ("Datapoint", "items"): _items,
    ("TaskData", "labelsMap"): _labels_map,
    ("TaskData", "labelsDataPath"): _labels_data_path,
}

QUERY_RESOLVERS: dict[str, Resolver] = {
    "project": _project,
    "stages": _stages,
    "taxonomy": _taxonomy,
    "getLabelStorage": _label_storage,
    "me": _me,
    "members": _members,
    "genericTasks": _generic_tasks,
    "tasksPaged": _tasks_paged,
    "task": _task,
    "presignItems": _presign_items,
    "validateAndConvertToImportFormat": _validate_convert,
    "presignUploads": _presign_uploads,
    "itemsUploadPresign": _items_upload_presign,
}

MUTATION_RESOLVERS: dict[str, Resolver] = {
    "assignTasksMultipleUsers": _assign,
    "putManualLabelingTaskAndLabels": _put_labels,
    "putManualLabelingTask": _put_task,
    "putExpertReviewTask": _put_review,
    "moveTaskToStart": _move_to_start,
    "createDatapoint": _create_datapoint,
    "assignLabelingTasks": _assign_queue,
    "updateTasksPriorities": _update_priorities,
}
