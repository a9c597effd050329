"""The one exception type whose message is meant for the user, as one readable line."""


class SparsegateError(Exception):
    """A problem the user can act on (bad input, missing file, name clash...)."""

    exit_code = 2


class Interrupted(SparsegateError):
    """Ctrl-C or SIGTERM during a job, after it cleaned up."""

    exit_code = 130
