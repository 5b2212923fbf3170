"""User-facing data errors: one line naming the file or case and what is wrong."""


class DataError(ValueError):
    """Bad input data (file, case, store, split). The CLI prints it as one line, exit code 2."""
