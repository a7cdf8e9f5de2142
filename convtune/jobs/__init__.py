"""Fine-tuning as a service: uploaded files, a persistent job queue, a worker, job processes.

    db.py       the metadata database (SQLAlchemy Core: SQLite default, PostgreSQL by URL)
    files.py    uploads: size limit, validation, PII redaction, per-tenant storage
    service.py  job requests -> queued jobs; cancel / pause / resume; OpenAI objects
    worker.py   claims queued jobs, runs each in its own process, recovers dead ones
    runner.py   one job's process: heartbeat, training, events, checkpoints as models

The server's ``/v1/files`` and ``/v1/fine_tuning/jobs`` routes are thin
wrappers over these; ``convtune worker`` runs :class:`worker.Worker`.
"""
