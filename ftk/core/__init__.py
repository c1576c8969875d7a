"""The minimal core of ftk: config, plugin manager, data pipeline and trainer."""
