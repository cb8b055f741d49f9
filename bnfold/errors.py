"""bnfold's own error types; the CLI maps them to exit codes."""

from __future__ import annotations


class BnfoldError(Exception):
    """Base class of every error bnfold raises on purpose."""

    exit_code = 2


class InputError(BnfoldError):
    """The input model, an option, or the output location cannot be used."""

    exit_code = 2


class OutputError(BnfoldError):
    """The output cannot be written (full disk, permissions); nothing was written."""

    exit_code = 2


class RuntimeUnavailableError(BnfoldError):
    """onnxruntime cannot run the original model, so equivalence cannot be checked."""

    exit_code = 2


class CheckFailedError(BnfoldError):
    """The folded model does not compute what the original computes."""

    exit_code = 1

    def __init__(self, message: str, report=None) -> None:
        super().__init__(message)
        self.report = report  # the FoldReport, with the failed check in it


class Terminated(BaseException):
    """SIGTERM arrived: like KeyboardInterrupt for SIGINT, it unwinds the run, removing what was staged."""

    exit_code = 143  # 128 + SIGTERM


def terminate_on_sigterm() -> None:
    """SIGTERM raises Terminated in a process bnfold owns (the CLI's, a batch worker), so the run unwinds and
    removes what it staged."""
    import signal

    def handler(signum, frame) -> None:
        raise Terminated()

    signal.signal(signal.SIGTERM, handler)


def first_line(error: BaseException, limit: int = 300) -> str:
    """The first line of an exception's message, for one-line error reports."""
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0][:limit]
