"""Built-in plugins: each module implements hooks from ``ftk.core.hookspecs``, like a third party would."""
