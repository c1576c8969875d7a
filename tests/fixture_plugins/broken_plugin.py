"""A plugin whose import fails the way a real broken plugin does: a missing dependency."""

import ftk_dependency_that_does_not_exist  # noqa: F401
