"""Runs' rows: training and eval."""

import json

from yollava_cli.store.connection import now
from yollava_cli.store.states import RunStatus


class RunRows:
    """Training and eval runs: their parameters, status and results."""

    # -- runs ---------------------------------------------------------------------------

    def start_run(self, kind: str, concept_id: int, params: dict) -> int:
        """Record a run as 'running'; `finish_run` ends it (doctor repairs one a killed process left)."""
        with self.transaction() as db:
            cursor = db.execute(
                "INSERT INTO runs (kind, concept_id, status, params, started_at) VALUES (?, ?, ?, ?, ?)",
                [kind, concept_id, RunStatus.RUNNING, json.dumps(params), now()],
            )
        return cursor.lastrowid

    def finish_run(self, run_id: int, status: RunStatus, results: dict) -> None:
        with self.transaction() as db:
            db.execute("UPDATE runs SET status = ?, results = ?, finished_at = ? WHERE id = ?",
                       [status, json.dumps(results), now(), run_id])

    def running_runs(self) -> list[dict]:
        """{id, name} of the runs marked running; name is the concept's, None for a run without one."""
        return list(self.db.query(
            "SELECT r.id, c.name FROM runs r LEFT JOIN concepts c ON c.id = r.concept_id WHERE r.status = ?", [RunStatus.RUNNING]
        ))

    def interrupt_run(self, run_id: int) -> None:
        """Mark a run that its dead process left running as interrupted."""
        with self.transaction() as db:
            db.execute("UPDATE runs SET status = ?, finished_at = ? WHERE id = ?", [RunStatus.INTERRUPTED, now(), run_id])

    def record_eval_run(self, params: dict, results: dict, finished_at: str) -> int:
        with self.transaction() as db:
            cursor = db.execute(
                "INSERT INTO runs (kind, status, params, results, started_at, finished_at) VALUES ('eval', 'done', ?, ?, ?, ?)",
                [json.dumps(params), json.dumps(results), finished_at, finished_at],
            )
        return cursor.lastrowid

    def eval_runs(self) -> list[dict]:
        """Every eval run's id, results (JSON) and finish time, oldest first."""
        return list(self.db.query("SELECT id, results, finished_at FROM runs WHERE kind = 'eval' ORDER BY id"))
