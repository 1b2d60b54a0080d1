"""The error type for mistakes a user fixes by changing a command, a config or a file.

Launchers (gmseg.cli) print a `UserError`'s message alone, one line and no
traceback; every other exception keeps its traceback, since it points at a
bug. Library code raises subclasses that also derive from the built-in type
callers already catch (ValueError, FileNotFoundError, ...).
"""


class UserError(Exception):
  """A problem with the input, named together with its fix."""
