"""Helpers for the gateway's own tests and benchmarks (never used by the running gateway).

- `postgres`: a throwaway PostgreSQL server of a test's or a benchmark's own.
- `certificates`: a throwaway CA and the server and client certificates it signs (TLS tests).
"""
