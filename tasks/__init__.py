"""Registered conversation tasks (summary, action items, intent, sentiment, ...).

Each task is a small declarative object: instruction, output schema, how the
gold label is rendered, a tolerant parser and a metric. Filled in by the SFT
issue; sits above ``convtune`` core and below ``serve``.
"""
