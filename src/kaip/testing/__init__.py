"""Helpers for tests and benchmarks: throwaway PostgreSQL, live servers."""
