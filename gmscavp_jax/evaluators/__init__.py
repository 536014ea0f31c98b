"""Evaluators: pure metrics on arrays, and the evaluators that produce their inputs."""
