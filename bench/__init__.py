"""Benchmarks of herbsync.

``python -m bench`` mirrors the same objects with herbsync, rclone, s5cmd and
the AWS CLI from a local SeaweedFS server, and ``--help`` lists its options.
BENCHMARKS.md has the recorded results and the commands that produced them.
"""
