"""Benchmarks, the demo, and the sample PDFs both use."""
