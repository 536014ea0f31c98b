"""What every floor above uses: sharding, checkpointing, metrics files, plots, timing."""
