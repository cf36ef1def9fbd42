"""SIGINT and SIGTERM end a command the same way: as a KeyboardInterrupt in the main thread, which
the command turns into one line saying what was kept and how to resume, with exit status
128 + the signal's number. SIGTERM is what `kill`, `timeout` and schedulers send; without this it
would end the process silently, or (once Ray is started, whose C++ failure handler takes it) with
a stack dump and exit 134."""
import os
import signal
import sys
import threading

CAUGHT = (signal.SIGINT, signal.SIGTERM)


class Signals:
    """`with Signals() as s:` installs the handlers (main thread only) and restores the old ones
    after; `s.received` is the signal that came, `s.said` says it, `s.exit_code` 128 + its number.
    install() takes them back from a library that replaced them (ray.init takes SIGTERM)."""

    def __init__(self):
        self.received, self._old, self._timer = None, {}, None
        self.grace, self.last_words = None, None

    def give_up_after(self, seconds, last_words):
        """Where a graceful stop can hang (Ray Tune's, when SIGTERM also ended Ray's own processes and
        it waits for them), end the process after `seconds` anyway, printing `last_words()` first."""
        self.grace, self.last_words = seconds, last_words

    def handler(self, signum, frame):
        self.received = signum
        current = signal.getsignal(signal.SIGINT)
        if signum != signal.SIGINT and callable(current) and current not in (self.handler, signal.default_int_handler):
            if self.grace is not None and self._timer is None:
                self._timer = threading.Timer(self.grace, self._give_up)
                self._timer.daemon = True
                self._timer.start()
            return current(signal.SIGINT, frame)  # someone's graceful stop for Ctrl-C (Ray Tune's): the same for SIGTERM
        raise KeyboardInterrupt

    def _give_up(self):
        print(f"\n{self.last_words()}", file=sys.stderr, flush=True)
        os._exit(self.exit_code)

    def install(self):
        if threading.current_thread() is not threading.main_thread():
            return  # only the main thread may set handlers (a command run from a thread keeps Python's)
        for s in CAUGHT:
            current = signal.getsignal(s)  # ray.init sets its own for SIGTERM (sys.exit, then a C++ stack dump)
            if current is not signal.SIG_IGN and (s == signal.SIGTERM or current in (None, signal.default_int_handler,
                                                                                    signal.SIG_DFL, self.handler)):
                signal.signal(s, self.handler)  # an ignored signal (SIG_IGN: a background job's SIGINT) stays ignored

    def __enter__(self):
        self.received = None
        self._old = {s: signal.getsignal(s) for s in CAUGHT}
        self.install()
        return self

    def __exit__(self, *exc):
        if self._timer is not None:
            self._timer.cancel()
        self._timer, self.grace, self.last_words = None, None, None
        if threading.current_thread() is threading.main_thread():
            for s, old in self._old.items():
                signal.signal(s, old if old is not None else signal.SIG_DFL)
        return False

    @property
    def said(self) -> str:
        """'interrupted (SIGTERM)', or plain 'interrupted' where a library's own handler took the
        signal (Ray Tune's, for SIGINT and SIGUSR1)."""
        return f"interrupted ({signal.Signals(self.received).name})" if self.received else "interrupted"

    @property
    def exit_code(self) -> int:
        return 128 + (self.received or signal.SIGINT)
