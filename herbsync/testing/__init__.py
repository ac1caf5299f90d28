"""Test infrastructure: a throwaway SeaweedFS S3 server for tests, demos and benchmarks."""
