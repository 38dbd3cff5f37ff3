"""Errors a user can cause. The CLI prints them as one line and exits with code 2."""


class UserError(Exception):
    """A mistake in the user's input: say what was wrong, where, and what to do instead."""
