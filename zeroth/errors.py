"""One exception type for mistakes a user can fix; the CLI prints it on one line and exits 2."""


class UserError(Exception):
    """Bad input (config, paths, data rows). The message says what is wrong and how to fix it."""
