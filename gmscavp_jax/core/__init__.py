"""The method: config validation, the pure training steps, the bidirectional (a2v) half."""
