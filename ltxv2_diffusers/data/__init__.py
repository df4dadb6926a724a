"""Data: dataset.toml, media decoding, log-mel, item listing, caching jobs, cache stores, batching."""
