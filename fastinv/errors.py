"""The one error type for bad user input; the CLI prints its message on one line and exits 2."""


class FastinvError(Exception):
    """A problem with what the user handed us (paths, images, options), stated in one line."""
