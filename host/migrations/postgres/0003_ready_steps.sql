-- Readiness is stored, not computed at claim time. `waiting_on` counts a step's
-- dependencies not yet complete: set when the step is inserted, decremented in the
-- transaction that completes each dependency. A claim then reads the first row of a
-- partial index holding exactly the steps that can run, instead of walking every pending
-- step (and its dependencies) in due order, which grew with the backlog.
ALTER TABLE steps ADD COLUMN waiting_on INTEGER NOT NULL DEFAULT 0;

UPDATE steps SET waiting_on = (
    SELECT COUNT(*) FROM json_array_elements_text(steps.depends_on::json) AS dep (value)
    WHERE NOT EXISTS (
        SELECT 1 FROM steps d
        WHERE d.task_id = steps.task_id AND d.name = dep.value AND d.status = 'complete'));

DROP INDEX steps_runnable;
CREATE INDEX steps_ready ON steps (next_run_at)
    WHERE status IN ('pending', 'waiting_for_retry') AND waiting_on = 0;
