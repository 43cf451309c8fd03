"""The one exception type the kit raises for problems a user can fix.

The command line prints its message and exits with status 2 instead of a traceback, so every message must name
the file / field / value at fault and say what to do.
"""


class KitError(Exception):
    """A problem with the user's input or environment, explained in the message."""
