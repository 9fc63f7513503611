"""The one error type for bad user input; the CLI prints its message on one line and exits 2."""


class FastinvError(Exception):
    """A problem with what the user handed us (paths, images, options), stated in one line."""


def one_line(message: str) -> FastinvError:
    """A FastinvError whose message is `message` with its line breaks turned into spaces."""
    return FastinvError(" ".join(message.splitlines()))


def reason(exc: BaseException) -> str:
    """The short cause of `exc` for an error line: an OSError's strerror, else its message on one line,
    else its type name."""
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return " ".join(str(exc).split()) or type(exc).__name__
