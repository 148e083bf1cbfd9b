"""The RLHF loop: turn a project's labels into models, and the models' outputs into new labeling work.

    labels (annotation.services)
        │  start_round (rounds.py)            web process: validates the config (config.py), no torch
        ▼
    snapshot (snapshots.py) ─ immutable, content-hashed files in training/'s data contracts
        │  enqueue "annotation.tasks.run_training_job"  (by name, on the training queue)
        ▼
    worker.py: claim (atomic, fenced by attempt) → heartbeat → stages.py → training/ (torch)
        │  on_job_finished (rounds.py) enqueues the next stage of the round's current run
        ▼
    SFT ─┬─► RM ─┬─► PPO ──┬─► evaluate (the gate) ─► generate ─► ranking tasks of the next round
         │       └─► RLOO ─┤                                      (services.create_ranking_tasks)
         └─► DPO ──────────┘   (the round's path: config.PATHS)           │
                                                                           └─► labelers rank them ─► the
                                                                               next round's labels

Who calls whom (no module below imports one above it; ``annotation.tasks`` sits on top and nothing
imports it):

    tasks.py ─► loop.worker ─► loop.rounds ─► loop.config, loop.snapshots
                    │              └──────► models, errors
                    └─► loop.stages ─► services.create_ranking_tasks, loop.snapshots, training.* (torch,
                                       inside the runners only)
    api/views.py, views.py, management commands ─► loop.rounds, loop.config

Faults: a dead worker is found by its stale heartbeat; the sweep (Celery beat) requeues its job, which
resumes from its checkpoint, or fails it after ``max_attempts`` ("worker died N times"). Cancelling a
dead job cancels it at once. A redelivered generate job finds its tasks by its own key and makes none.
A job of an earlier run of its round (the round was started again) can neither advance nor be retried.
"""
