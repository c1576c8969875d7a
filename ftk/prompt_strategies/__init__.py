"""Prompt strategies: pure functions that turn one dataset row into input_ids and labels."""
