"""Files a task sends to the coordinator over its agent's stream, since hosts share no folder:
which result keys name them, and the size of the pieces they travel in. Plain constants, no
numpy: the agent daemon imports this."""

from __future__ import annotations

#: A score job's scores (matrec.common.active_learning.pool_scores reads and writes them).
SCORES_FILE = "scores.npz"
SCORES_RESULT_KEY = "scores_path"

#: The job kinds whose results name files for the agent to send: trusted task code only (a
#: script's result is its program's to write, and must not make the agent read any file).
SENDING_KINDS = frozenset({"score"})

#: Result key -> the name its file travels under. The agent sends each such file before the
#: task's result; the result stored on the coordinator names the coordinator's copy.
SENT_RESULT_FILES = {SCORES_RESULT_KEY: SCORES_FILE}

#: Bytes per TaskFileChunk message: far below the 16 MiB message limit of both ends.
TASK_FILE_CHUNK_BYTES = 1 << 20
