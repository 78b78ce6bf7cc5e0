"""Recordings of every flow, the hash-chained audit log, and the verify and audit readers."""
