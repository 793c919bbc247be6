"""The GraphQL documents autolabel sends to RedBrick, one constant per operation.

They request exactly the root fields, arguments and selections that ``redbrick-sdk`` 2.35.4
sends (redbrick-protocol.md §2): the server accepts those, and anything else is a guess about
a closed schema. ``tests/test_documents_match_sdk.py`` parses these and the SDK's documents
and compares them. Operation names are the SDK's too, so server-side logs, rate limits and
the emulator's per-operation faults treat both clients alike.

Shared selections are plain strings spliced into the documents; whitespace does not matter
to GraphQL.
"""

from __future__ import annotations

_USER = "userId email givenName"

_CLASSIFY_ATTRIBUTE = """
    name attrType attrId
    options { name optionId color archived }
    archived parents hint defaultValue minValue maxValue stepValue
"""


def _category_tree(depth: int) -> str:
    """``children { name classId disabled children { ... } }`` nested ``depth`` levels."""
    inner = ""
    for _ in range(depth):
        inner = f"children {{ name classId disabled {inner}}} "
    return inner


_TAXONOMY = f"""
    orgId name version createdAt
    categories {{ name {_category_tree(6)}}}
    attributes {{ name attrType whitelist disabled }}
    taskCategories {{ name {_category_tree(6)}}}
    taskAttributes {{ name attrType whitelist disabled }}
    colorMap {{ name color classid trail taskcategory }}
    archived isNew taxId
    studyClassify {{ {_CLASSIFY_ATTRIBUTE} }}
    seriesClassify {{ {_CLASSIFY_ATTRIBUTE} }}
    instanceClassify {{ {_CLASSIFY_ATTRIBUTE} }}
    objectTypes {{
        category classId labelType
        attributes {{ {_CLASSIFY_ATTRIBUTE} }}
        color archived parents hint
    }}
"""

_ROUTING = """
    routing {
        ... on NoRouting { placeholder }
        ... on NextRouting { nextStageName }
        ... on MultiRouting { stageNames }
        ... on BooleanRouting { passed failed }
        ... on FeedbackRouting { feedbackStageName }
    }
"""

GET_PROJECT = f"""
query getProjectSDK($orgId: UUID!, $projectId: UUID!) {{
  project(orgId: $orgId, projectId: $projectId) {{
    orgId projectId name desc status tdType
    taxonomy {{ {_TAXONOMY} }}
    projectUrl createdAt updatedAt
    consensusSettings {{ enabled }}
    workspace {{ workspaceId }}
    stages {{ stageName brickName stageConfig {_ROUTING} }}
  }}
}}
"""

CURRENT_USER = """
query currentUserSDK {
  me { userId }
}
"""

MEMBERS = """
query membersSDK($orgId: UUID!, $onlyActive: Boolean) {
  members(orgId: $orgId, onlyActive: $onlyActive) {
    user { userId email givenName familyName mfaSetup lastSeen updatedAt idProvider }
    role tags active lastSeen
  }
}
"""

GET_LABEL_STORAGE = """
query getLabelStorageSDK($orgId: UUID!, $projectId: UUID!) {
  getLabelStorage(orgId: $orgId, projectId: $projectId) { storageId path }
}
"""

_DATAPOINT_EXTRAS = """
    seriesInfo { name itemsIndices dataType metaData imageHeaders localToWorldTransform }
    heatMaps {
        seriesIndex seriesName name item preset dataRange
        opacityPoints opacityPoints3d rgbPoints
    }
    transforms { seriesIndex transform }
    centerline { seriesIndex name centerline }
    storageMethod { storageId }
    attributes archived
    cohorts { name }
"""

_SUBTASK = f"""
    assignedTo {{ {_USER} }}
    state assignedAt progressSavedAt completedAt completionTimeMs
"""

LIST_TASKS = f"""
query tasksListSDK($orgId: UUID!, $projectId: UUID!, $stageName: String, $taskSearch: String,
                   $manualLabelingFilters: TasksFilter, $first: Int, $after: String) {{
  genericTasks(
    orgId: $orgId, projectId: $projectId, stageName: $stageName, taskSearch: $taskSearch,
    manualLabelingFilters: $manualLabelingFilters, first: $first, after: $after
  ) {{
    entries {{
      taskId currentStageName createdAt updatedAt priority
      datapoint {{
        dpId name createdAt
        createdByEntity {{ {_USER} }}
        metaData
        {_DATAPOINT_EXTRAS}
      }}
      currentStageSubTask {{
        ... on LabelingTask {{
          {_SUBTASK}
          subTasks {{ {_SUBTASK} }}
        }}
      }}
    }}
    cursor
  }}
}}
"""

# One saved labels version (``TaskData``).
_TASK_DATA = f"""
    tdId createdAt
    createdByEntity {{ {_USER} }}
    labelsData(interpolate: true)
    labelsDataPath(presigned: false)
    labelsStorage {{ storageId }}
    labelsMap(presigned: false) {{ seriesIndex imageIndex labelName }}
"""
_NORMAL_SUBTASK = f"""
    currentStageSubTask {{
      ... on LabelingTask {{ state assignedTo {{ {_USER} }} }}
    }}
"""


def _task_selection(sub_task: str, *, presigned_items: bool = True) -> str:
    """The task selection of ``task`` and ``tasksPaged`` (export): items, latest labels,
    with ``sub_task`` as its ``currentStageSubTask`` selection; without
    ``presigned_items``, no presigned item URLs (redbrick/repo/shards.py ``task_shard``)."""
    signed = "itemsPresigned: items(presigned: true)" if presigned_items else ""
    return f"""
    taskId dpId currentStageName priority
    {sub_task}
    datapoint {{
      dpId name
      items(presigned: false)
      {signed}
      createdAt
      createdByEntity {{ {_USER} }}
      metaData
      {_DATAPOINT_EXTRAS}
    }}
    latestTaskData {{ {_TASK_DATA} }}
"""


def _get_task(sub_task: str, *, presigned_items: bool = True) -> str:
    selection = _task_selection(sub_task, presigned_items=presigned_items)
    return f"""
query taskSDK($orgId: UUID!, $projectId: UUID!, $taskId: UUID!) {{
  task(orgId: $orgId, projectId: $projectId, taskId: $taskId) {{ {selection} }}
}}
"""


_TASK = _task_selection(_NORMAL_SUBTASK)
GET_TASK = _get_task(_NORMAL_SUBTASK)

# Consensus projects: the SDK reads tasks with ``currentStageSubTask(consensus: true)`` and
# the labelers' sub-tasks with their own labels (redbrick/repo/shards.py
# ``CONSENSUS_TASK_SHARD``, chosen by ``task_shard(..., with_consensus=True)``).
_CONSENSUS_SUBTASK = f"""
    currentStageSubTask(consensus: true) {{
      ... on LabelingTask {{
        state assignedTo {{ {_USER} }} taskData {{ {_TASK_DATA} }}
        subTasks {{ state assignedTo {{ {_USER} }} taskData {{ {_TASK_DATA} }} }}
        overallConsensusScore
        consensusInfo {{
          user {{ {_USER} }} taskData {{ {_TASK_DATA} }} scores {{ user {{ {_USER} }} score }}
        }}
      }}
    }}
"""
GET_TASK_CONSENSUS = _get_task(_CONSENSUS_SUBTASK)

# The same reads without presigned item URLs: what redbrick/repo/export.py
# ``get_datapoint_latest(..., presign_items=False)`` sends (redbrick/export/public.py
# ``get_raw_data_latest(task_id=..., presign_items=False)``). For a re-read that needs the
# stage, the assignee and the latest labels, not the images: one URL per item is minted
# for nothing otherwise (160 for a 160-slice series).
GET_TASK_UNSIGNED = _get_task(_NORMAL_SUBTASK, presigned_items=False)
GET_TASK_CONSENSUS_UNSIGNED = _get_task(_CONSENSUS_SUBTASK, presigned_items=False)

TASKS_PAGED = f"""
query tasksPagedSDK($orgId: UUID!, $projectId: UUID!, $stageName: String, $cacheTime: DateTime,
                    $first: Int, $after: String) {{
  tasksPaged(
    orgId: $orgId, projectId: $projectId, stageName: $stageName, cacheTime: $cacheTime,
    first: $first, after: $after
  ) {{
    entries {{ {_TASK} }}
    cursor cacheTime
  }}
}}
"""

PRESIGN_ITEMS = """
query presignItemsSDK($orgId: UUID!, $storageId: UUID!, $items: [String]!) {
  presignItems(orgId: $orgId, storageId: $storageId, items: $items)
}
"""

_PRESIGNED = "presignedUrl filePath fileName"

PRESIGN_UPLOADS = f"""
query presignUploadsSDK($orgId: UUID!, $projectId: UUID!,
                        $filesData: [String!]!, $fileTypeData: String!, $fileEncodingData: String,
                        $filesSeg: [String!]!, $fileTypeSeg: String!, $fileEncodingSeg: String) {{
  presignData: presignUploads(
    orgId: $orgId, projectId: $projectId, files: $filesData,
    fileType: $fileTypeData, fileEncoding: $fileEncodingData
  ) {{ {_PRESIGNED} }}
  presignSeg: presignUploads(
    orgId: $orgId, projectId: $projectId, files: $filesSeg,
    fileType: $fileTypeSeg, fileEncoding: $fileEncodingSeg
  ) {{ {_PRESIGNED} }}
}}
"""

VALIDATE_AND_CONVERT = """
query validateAndConvertToImportFormatSDK($original: String!, $convert: Boolean, $storageId: UUID) {
  validateAndConvertToImportFormat(original: $original, convert: $convert, storageId: $storageId) {
    isValid error converted
  }
}
"""

PUT_TASK_AND_LABELS = """
mutation putTaskAndLabelsSDK($orgId: UUID!, $projectId: UUID!, $stageName: String!,
                             $taskId: UUID!, $elapsedTimeMs: Int!, $finished: Boolean!,
                             $labelsData: String, $labelsDataPath: String,
                             $labelsMap: [LabelMapInput]) {
  putManualLabelingTaskAndLabels(
    orgId: $orgId, projectId: $projectId, stageName: $stageName, taskId: $taskId,
    elapsedTimeMs: $elapsedTimeMs, finished: $finished, labelsData: $labelsData,
    labelsDataPath: $labelsDataPath, labelsMap: $labelsMap
  ) { ok }
}
"""

PUT_LABELING_TASK = """
mutation putLabelingTaskSDK($orgId: UUID!, $projectId: UUID!, $stageName: String!,
                            $taskId: UUID!) {
  putManualLabelingTask(
    orgId: $orgId, projectId: $projectId, stageName: $stageName, taskId: $taskId
  ) { ok }
}
"""

PUT_REVIEW_TASK = """
mutation putReviewTaskSDK($orgId: UUID!, $projectId: UUID!, $stageName: String!,
                          $reviewVal: Boolean!, $comment: String, $commentPin: PinInput,
                          $taskId: UUID!, $elapsedTimeMs: Int!) {
  putExpertReviewTask(
    orgId: $orgId, projectId: $projectId, stageName: $stageName, reviewVal: $reviewVal,
    comment: $comment, commentPin: $commentPin, taskId: $taskId, elapsedTimeMs: $elapsedTimeMs
  ) { ok }
}
"""

MOVE_TASK_TO_START = """
mutation moveTaskToStartSDK($orgId: UUID!, $projectId: UUID!, $taskId: UUID!) {
  moveTaskToStart(orgId: $orgId, projectId: $projectId, taskId: $taskId) { ok }
}
"""

ASSIGN_TASKS = """
mutation assignTasksMultipleUsersSDK($orgId: UUID!, $projectId: UUID!, $taskIds: [UUID!]!,
                                     $emails: [String!], $currentUser: Boolean,
                                     $refresh: Boolean) {
  assignTasksMultipleUsers(
    orgId: $orgId, projectId: $projectId, taskIds: $taskIds, emails: $emails,
    currentUser: $currentUser, refresh: $refresh
  ) { taskId name stageName }
}
"""

UPDATE_TASKS_PRIORITIES = """
mutation updateTasksPrioritiesSDK($orgId: UUID!, $projectId: UUID!,
                                  $tasks: [UpdateTaskPriorityInput!]!) {
  updateTasksPriorities(orgId: $orgId, projectId: $projectId, tasks: $tasks) { ok message }
}
"""

#: Every document, by operation name (the key of the emulator's faults and of the tests).
DOCUMENTS: dict[str, str] = {
    "getProjectSDK": GET_PROJECT,
    "currentUserSDK": CURRENT_USER,
    "membersSDK": MEMBERS,
    "getLabelStorageSDK": GET_LABEL_STORAGE,
    "tasksListSDK": LIST_TASKS,
    "taskSDK": GET_TASK,
    "tasksPagedSDK": TASKS_PAGED,
    "presignItemsSDK": PRESIGN_ITEMS,
    "presignUploadsSDK": PRESIGN_UPLOADS,
    "validateAndConvertToImportFormatSDK": VALIDATE_AND_CONVERT,
    "putTaskAndLabelsSDK": PUT_TASK_AND_LABELS,
    "putLabelingTaskSDK": PUT_LABELING_TASK,
    "putReviewTaskSDK": PUT_REVIEW_TASK,
    "moveTaskToStartSDK": MOVE_TASK_TO_START,
    "assignTasksMultipleUsersSDK": ASSIGN_TASKS,
    "updateTasksPrioritiesSDK": UPDATE_TASKS_PRIORITIES,
}
