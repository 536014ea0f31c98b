"""Data: audio features, the synthetic benchmark, media and input pipelines."""
