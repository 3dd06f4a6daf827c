"""Errors a user can cause.

A `UserError` carries one line that names the problem and the fix. The CLI prints it as
`error: <message>` and exits with status 2, without a traceback; the Python API lets it propagate
like any other exception.
"""


class UserError(Exception):
    """Bad input from the user: a missing file, an unknown config key, an out-of-range option."""

    exit_code = 2
