"""Benchmarks of icm: SDR speed and memory, diagnostics and training overheads, as ratios
measured within one run (`python -m benchmarks.run`, see benchmarks/README.md)."""
