"""Benchmarks of ri_jax against straightforward peers (run as ``python -m benchmarks.<name>``)."""
