"""convtune core: conversation model, ingestion, PII redaction, analytics, models, CLI.

Importing this package does no work and loads no models; heavy dependencies
(torch, transformers) are imported inside the functions that need them.
"""

__version__ = "0.1.0"
