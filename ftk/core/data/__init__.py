"""The data pipeline: load sources, tokenize with each dataset's strategy, cache, collate."""
