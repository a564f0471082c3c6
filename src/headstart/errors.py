"""User-facing errors.

Anything a user can cause by pointing headstart at the wrong thing (a missing folder, a dataset with one
class, an unknown model) raises `HeadstartError`. The CLI prints its message on one line and exits non-zero
with no traceback; library users catch it like any exception. Bugs stay ordinary exceptions.
"""


class HeadstartError(Exception):
    """A problem with the user's input, with a message that says what to do about it."""
