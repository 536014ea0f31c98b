"""A trained workdir put to use: video to audio, audio to video, retrieval queries, demo page."""
