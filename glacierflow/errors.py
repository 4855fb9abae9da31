"""User-facing errors: one line, naming the bad value and the way out."""


class GlacierflowError(Exception):
    """A mistake the user can fix (bad name, bad path, server down, ...).

    The CLI prints ``str(error)`` on one line and exits non-zero, without a traceback.
    """
