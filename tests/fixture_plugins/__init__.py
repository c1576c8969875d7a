"""Plugins used by the tests, loaded through a config's ``plugins:`` list or an entry point."""
