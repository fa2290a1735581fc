"""Benchmarks of the job service against raw RQ and a hello-world Flask app: ``python -m bench``."""
