"""Network primitives used everywhere, each once: host names, URL paths, bounded decoding, SSE framing."""
