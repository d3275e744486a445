"""Benchmarks of the streaming recognizer (`python -m bench.run`)."""
