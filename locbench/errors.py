"""The one exception type that the CLI turns into a single line instead of a traceback."""


class UserError(ValueError):
    """Bad input from the user: the message says what is wrong and what is accepted."""
