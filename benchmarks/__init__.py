"""Benchmarks: the library without HTTP, the service under load, and the compatibility matrix built from both."""
