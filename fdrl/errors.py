"""The one exception type for user mistakes: the CLI prints its message on one line and exits 2."""


class UserError(Exception):
    """Bad input from the user: a missing file, a bad flag, a malformed manifest line.

    The message names the thing and the fix; the CLI shows it without a traceback.
    """
