"""Raw audio: reading, 8-bit quantisation and model inputs (see codec)."""
