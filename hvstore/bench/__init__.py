"""Benchmarks: functions that measure and return figures (never pass/fail); the CLI prints them."""
