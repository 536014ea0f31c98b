"""Offline preparation of real datasets: layouts, resumable decoding, rendering synthetic mp4s."""
