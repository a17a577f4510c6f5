"""What a run prints: lines that never stop the run, for any name the file system holds.

The results are files; the printout only lists them. So nothing that happens to standard output
may end a run half-way or turn it into a traceback:

* a closed pipe (``... | head -1``): the rest of the printout is dropped, silently, and the run
  goes on and exits as it would have;
* any other failed write (``> /dev/full``): the same, and one line on stderr says so at the end
  (exit status 1: the printout the user asked for is incomplete);
* a file name that is not valid in the locale's encoding (a Latin-1 name on a UTF-8 desktop):
  Python holds its undecodable bytes as surrogates (PEP 383); they are printed as the bytes the
  name holds, as ``ls`` would, and any other character the stream cannot encode as an escape.
"""
import codecs
import errno
import os
import sys
from contextlib import contextmanager

NAMES = "deit-explain-names"  # the error handler below, by the name codecs knows it by


def _bytes_or_escape(error):
    """An encoding error handler: surrogates from a file name's undecodable bytes go out as those
    bytes; any other character the encoding lacks as a backslash escape."""
    if isinstance(error, UnicodeEncodeError):
        text = error.object[error.start:error.end]
        if all(0xDC80 <= ord(c) <= 0xDCFF for c in text):
            return bytes(ord(c) - 0xDC00 for c in text), error.end
    return codecs.backslashreplace_errors(error)


codecs.register_error(NAMES, _bytes_or_escape)


@contextmanager
def names_printable():
    """For the block, sys.stdout and sys.stderr print any file name (NAMES), then as before."""
    streams = [s for s in (sys.stdout, sys.stderr) if hasattr(s, "reconfigure")]
    before = [s.errors for s in streams]
    for stream in streams:
        stream.reconfigure(errors=NAMES)
    try:
        yield
    finally:
        for stream, errors in zip(streams, before):
            try:
                stream.reconfigure(errors=errors)
            except (OSError, ValueError):  # a stream that can no longer be flushed keeps NAMES
                pass


class Printout:
    """A run's standard output: ``line(text)`` prints and flushes at once, so a failure shows
    here, inside the run, not at exit. After the first failure the rest is dropped and the file
    descriptor is pointed at /dev/null (so Python's flush at exit cannot fail either)."""

    def __init__(self, stream=None):
        self.stream = stream if stream is not None else sys.stdout
        self.lost = None  # the OSError that ended the printout

    def line(self, text):
        if self.lost is not None:
            return
        try:
            self.stream.write(text + "\n")
            self.stream.flush()
        except OSError as error:
            self.lost = error
            _to_devnull(self.stream)

    def failure(self):
        """-> the line to report on stderr where the printout was cut short by anything but a
        closed pipe (that one is the reader's choice), else None."""
        if self.lost is None or self.lost.errno == errno.EPIPE:
            return None
        reason = self.lost.strerror or type(self.lost).__name__
        return f"standard output: {reason.lower()}: the printout stopped there; the results were written all the same"


def _to_devnull(stream):
    """Point ``stream``'s file descriptor at /dev/null, dropping what its buffer still holds."""
    try:
        descriptor = stream.fileno()
    except (OSError, ValueError, AttributeError):
        return  # not a file (e.g. a test's capture)
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, descriptor)
    finally:
        os.close(null)
