"""Runs' rows: training and eval."""

import json

from yollava_cli.store.connection import now
from yollava_cli.store.records import EvalRun, RunningRun
from yollava_cli.store.states import RunStatus


class RunRows:
    """Training and eval runs: their parameters, status and results."""

    # -- runs ---------------------------------------------------------------------------

    def start_run(self, kind: str, concept_id: int, params: dict) -> int:
        """Record a run as 'running'; `finish_run` ends it (doctor repairs one a killed process left)."""
        with self.transaction() as db:
            return db["runs"].insert({"kind": kind, "concept_id": concept_id, "status": RunStatus.RUNNING,
                                      "params": json.dumps(params), "started_at": now()}).last_pk

    def finish_run(self, run_id: int, status: RunStatus, results: dict) -> None:
        with self.transaction() as db:
            db["runs"].update(run_id, {"status": status, "results": json.dumps(results), "finished_at": now()})

    def run_results(self, run_id: int) -> dict | None:
        row = self.db.execute("SELECT results FROM runs WHERE id = ?", [run_id]).fetchone()
        return json.loads(row[0]) if row and row[0] else None

    def latest_run_id(self) -> int | None:
        return self.db.execute("SELECT max(id) FROM runs").fetchone()[0]

    def running_runs(self) -> list[RunningRun]:
        """The runs marked running."""
        return [RunningRun.from_row(row) for row in self.db.query(
            "SELECT r.id, c.name FROM runs r LEFT JOIN concepts c ON c.id = r.concept_id WHERE r.status = ?", [RunStatus.RUNNING]
        )]

    def interrupt_run(self, run_id: int) -> None:
        """Mark a run that its dead process left running as interrupted."""
        with self.transaction() as db:
            db["runs"].update(run_id, {"status": RunStatus.INTERRUPTED, "finished_at": now()})

    def record_eval_run(self, params: dict, results: dict, finished_at: str) -> int:
        with self.transaction() as db:
            return db["runs"].insert({"kind": "eval", "status": RunStatus.DONE, "params": json.dumps(params),
                                      "results": json.dumps(results), "started_at": finished_at,
                                      "finished_at": finished_at}).last_pk

    def eval_runs(self) -> list[EvalRun]:
        """Every eval run, oldest first."""
        return [EvalRun.from_row(row) for row in
                self.db["runs"].rows_where("kind = 'eval'", select="id, results, finished_at", order_by="id")]
