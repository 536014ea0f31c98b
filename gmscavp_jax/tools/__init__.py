"""Commands beside the main ones: the ablation and studies runners, benchmarks, data tools."""
