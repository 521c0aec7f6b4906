"""Benchmarks that print figures; run with `make bench`. CI does not time anything."""
