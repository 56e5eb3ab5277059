"""The thin client of RSTUF's REST API, under its documented top-level name.

The code lives in ``pypi_index_mirror.rstuf`` (``client``, ``artifacts``, ``tasks``,
``errors``); ``import rstuf_client`` keeps working through the names re-exported here.
"""

from pypi_index_mirror.rstuf.artifacts import (
    HASH_HEX_LENGTHS,
    Artifact,
    add_body,
    artifact_entry,
    artifact_problem,
    delete_body,
    path_problem,
    validate_artifacts,
    validate_paths,
)
from pypi_index_mirror.rstuf.client import (
    ADD_PATH,
    BOOTSTRAP_PATH,
    DELETE_PATH,
    MAX_RESPONSE_BYTES,
    PUBLISH_PATH,
    TASK_PATH,
    RstufClient,
    error_detail,
    may_have_arrived,
)
from pypi_index_mirror.rstuf.errors import (
    InvalidArtifact,
    RstufBadResponse,
    RstufError,
    RstufHttpError,
    RstufNotBootstrapped,
    RstufRefused,
    RstufServerError,
    RstufUnreachable,
    TaskFailed,
)
from pypi_index_mirror.rstuf.tasks import (
    ROWS_WRITTEN_STATES,
    SUCCESS_STATE,
    TERMINAL_FAILURE_STATES,
    TaskResult,
    is_waiting_for_publish,
    task_failure,
)

__all__ = [
    "ADD_PATH",
    "BOOTSTRAP_PATH",
    "DELETE_PATH",
    "HASH_HEX_LENGTHS",
    "MAX_RESPONSE_BYTES",
    "PUBLISH_PATH",
    "ROWS_WRITTEN_STATES",
    "SUCCESS_STATE",
    "TASK_PATH",
    "TERMINAL_FAILURE_STATES",
    "Artifact",
    "InvalidArtifact",
    "RstufBadResponse",
    "RstufClient",
    "RstufError",
    "RstufHttpError",
    "RstufNotBootstrapped",
    "RstufRefused",
    "RstufServerError",
    "RstufUnreachable",
    "TaskFailed",
    "TaskResult",
    "add_body",
    "artifact_entry",
    "artifact_problem",
    "delete_body",
    "error_detail",
    "is_waiting_for_publish",
    "may_have_arrived",
    "path_problem",
    "task_failure",
    "validate_artifacts",
    "validate_paths",
]
