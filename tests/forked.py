"""Test processes forked from a server that has already imported the heavy modules.

A test that needs a real process (one to kill with SIGKILL, stop with Ctrl-C or SIGTERM, or
several that share limits through Redis) would pay about a second of CPU for each fresh
``python``, nearly all of it importing `openai`. `Popen` and `run` here take the same command
lines as `subprocess` (``[sys.executable, "-m", MODULE, ...]``, ``[sys.executable, SCRIPT,
...]``, ``[sys.executable, "-c", CODE, ...]``) and start them instead in a process forked from
multiprocessing's fork server, which has imported `openai` and this package once (per test
worker). The child is a process of its own, with its own pid, memory, standard streams,
environment and folder, which takes signals as a fresh interpreter would, runs the command as
``__main__``, and ends as ``python`` ends: non-daemon threads joined, ``atexit`` functions run,
streams flushed, the exit status of `sys.exit` (-SIGINT after an uncaught KeyboardInterrupt).

What a forked child cannot show is what happens at import time (warnings, side effects of
importing the package, the environment read by an import): tests of that start ``python``
itself with `subprocess`.
"""

from __future__ import annotations

import atexit
import builtins
import io
import multiprocessing
import multiprocessing.connection
import os
import runpy
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import IO, Any

PIPE = subprocess.PIPE
DEVNULL = subprocess.DEVNULL
STDOUT = subprocess.STDOUT

# Imported once by the fork server, so that no child pays for them.
PRELOAD = [
    "openai",
    "openai_parallel_toolkit",
    "openai_parallel_toolkit.cli",  # not __main__: runpy would warn that it ran already
    "openai_parallel_toolkit.jobs.distributed",
    "redis",
    "forked",
]

_context = multiprocessing.get_context("forkserver")
_context.set_forkserver_preload(PRELOAD)
_started = False


@dataclass(frozen=True, slots=True)
class _Command:
    """What ``python ARGS`` runs: a module (-m), a script or code (-c), with its argv."""

    kind: str  # "module", "script" or "code"
    target: str
    argv: list[str]
    env: dict[str, str]
    cwd: str | None

    @classmethod
    def parse(cls, args: Sequence[str], env: Mapping[str, str] | None, cwd: str | None) -> _Command:
        if not args or args[0] != sys.executable or len(args) < 2:
            raise ValueError(f"not a command line of this Python: {args!r}")
        environ = dict(os.environ if env is None else env)
        rest = [str(arg) for arg in args[1:]]
        if rest[0] == "-m":
            return cls("module", rest[1], [rest[1], *rest[2:]], environ, cwd)
        if rest[0] == "-c":
            return cls("code", rest[1], ["-c", *rest[2:]], environ, cwd)
        if rest[0].startswith("-"):
            raise ValueError(f"unsupported interpreter option: {rest[0]!r}")
        return cls("script", rest[0], rest, environ, cwd)

    def run(self) -> None:
        if self.kind == "module":
            sys.path.insert(0, os.getcwd())  # as ``python -m`` does
            runpy.run_module(self.target, run_name="__main__", alter_sys=True)
        elif self.kind == "script":
            sys.path.insert(0, os.path.dirname(os.path.abspath(self.target)))
            runpy.run_path(self.target, run_name="__main__")
        else:
            sys.path.insert(0, "")
            main = {"__name__": "__main__", "__builtins__": builtins}
            exec(compile(self.target, "<string>", "exec"), main)


def _std_stream(fd: int, write: bool, unbuffered: bool) -> IO[str]:
    """A standard stream on `fd` as a fresh interpreter makes it (see Python's create_stdio)."""
    original = (sys.__stdout__ if fd == 1 else sys.__stderr__) if write else sys.__stdin__
    encoding = original.encoding if original is not None else "utf-8"
    errors = original.errors if original is not None else "strict"
    if fd == 2:
        errors = "backslashreplace"
    stream = open(  # noqa: SIM115 - the process's stream, open until it ends
        fd, "w" if write else "r", encoding=encoding, errors=errors, closefd=False
    )
    if write:
        stream.reconfigure(
            line_buffering=fd == 2 or os.isatty(fd), write_through=unbuffered or None
        )
    return stream


def _child(command: _Command, stdio: list[multiprocessing.connection.Connection]) -> None:
    """In the forked process: become ``python ARGS`` and end as it would (never returns)."""
    for fd, connection in enumerate(stdio):
        os.dup2(connection.fileno(), fd)
        connection.close()
    signal.signal(signal.SIGINT, signal.default_int_handler)
    for number in (signal.SIGTERM, signal.SIGHUP, signal.SIGCHLD):
        signal.signal(number, signal.SIG_DFL)
    os.environ.clear()
    os.environ.update(command.env)
    if command.cwd is not None:
        os.chdir(command.cwd)
    unbuffered = bool(command.env.get("PYTHONUNBUFFERED"))
    sys.stdin = _std_stream(0, False, unbuffered)
    sys.stdout = _std_stream(1, True, unbuffered)
    sys.stderr = _std_stream(2, True, unbuffered)
    sys.argv = list(command.argv)
    # multiprocessing as in a fresh interpreter: no start method chosen yet (here it would be
    # the fork server's, and tqdm's lock would then go through its resource tracker).
    multiprocessing.set_start_method(None, force=True)
    status = 0
    try:
        command.run()
    except SystemExit as exc:
        if exc.code is None:
            status = 0
        elif isinstance(exc.code, int):
            status = exc.code
        else:
            print(exc.code, file=sys.stderr)
            status = 1
    except KeyboardInterrupt as exc:
        _report(exc)
        status = -signal.SIGINT
    except BaseException as exc:
        _report(exc)
        status = 1
    _end(status)


def _report(exc: BaseException) -> None:
    """Print the traceback of an uncaught exception without this module's own frames."""
    traceback = exc.__traceback__
    while traceback is not None and traceback.tb_frame.f_code.co_filename == __file__:
        traceback = traceback.tb_next
    sys.excepthook(type(exc), exc, traceback)


def _end(status: int) -> None:
    """What the interpreter does at exit: wait for non-daemon threads, run ``atexit``, flush."""
    main = threading.current_thread()
    for thread in threading.enumerate():
        if thread is not main and not thread.daemon:
            thread.join()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            status = status or 120  # as Python does when it cannot flush
    if status < 0:  # killed by the signal, as Python ends after an uncaught KeyboardInterrupt
        signal.signal(-status, signal.SIG_DFL)
        os.kill(os.getpid(), -status)
    os._exit(status & 0xFF)


def _child_end(spec: Any, number: int, text: bool) -> tuple[int, IO[Any] | None]:
    """The descriptor the child gets as stream `number`, and this side's end if a pipe."""
    if spec is None:
        return os.dup(number), None
    if spec == DEVNULL:
        return os.open(os.devnull, os.O_RDWR), None
    if spec == PIPE:
        read, write = os.pipe()
        if number:
            return write, open(read, "r" if text else "rb")
        stream = open(write, "w" if text else "wb")  # noqa: SIM115 - the caller's
        if isinstance(stream, io.TextIOWrapper):
            stream.reconfigure(write_through=True)  # as subprocess: each write goes out
        return read, stream
    if isinstance(spec, int):
        return os.dup(spec), None
    return os.dup(spec.fileno()), None


class Popen:
    """The part of `subprocess.Popen` the tests use, for a forked child (see the module)."""

    def __init__(
        self,
        args: Sequence[str],
        *,
        stdin: Any = None,
        stdout: Any = None,
        stderr: Any = None,
        env: Mapping[str, str] | None = None,
        cwd: str | os.PathLike[str] | None = None,
        text: bool = False,
    ) -> None:
        global _started
        self.args = list(args)
        command = _Command.parse(args, env, None if cwd is None else os.fspath(cwd))
        ends: list[int] = []
        streams: list[IO[Any] | None] = []
        for number, spec in enumerate((stdin, stdout, stderr)):
            if number == 2 and spec == STDOUT:
                ends.append(os.dup(ends[1]))
                streams.append(None)
                continue
            child, parent = _child_end(spec, number, text)
            ends.append(child)
            streams.append(parent)
        self.stdin, self.stdout, self.stderr = streams
        stdio = [multiprocessing.connection.Connection(fd) for fd in ends]
        # Daemonic: a child a failed test left running is ended when the test worker exits.
        self._process = _context.Process(target=_child, args=(command, stdio), daemon=True)
        try:
            self._process.start()
            _started = True
        finally:
            for connection in stdio:  # the fork server has its own copies now
                connection.close()
        assert self._process.pid is not None
        self.pid: int = self._process.pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            self.returncode = self._process.exitcode
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        self._process.join(timeout)
        if self.poll() is None:
            assert timeout is not None
            raise subprocess.TimeoutExpired(self.args, timeout)
        assert self.returncode is not None
        return self.returncode

    def send_signal(self, number: int) -> None:
        if self.poll() is None:
            os.kill(self.pid, number)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def communicate(self, input: Any = None, timeout: float | None = None) -> tuple[Any, Any]:
        """Send `input`, read both outputs to their end and wait for the exit, as `subprocess`."""
        deadline = None if timeout is None else time.monotonic() + timeout
        if self.stdin is not None:
            try:
                if input:
                    self.stdin.write(input)
                self.stdin.close()
            except BrokenPipeError:
                pass  # the child ended without reading: as subprocess, not an error
        read: dict[int, Any] = {}

        def drain(index: int, stream: IO[Any]) -> None:
            read[index] = stream.read()
            stream.close()

        readers = [
            threading.Thread(target=drain, args=(index, stream), daemon=True)
            for index, stream in ((1, self.stdout), (2, self.stderr))
            if stream is not None
        ]
        for reader in readers:
            reader.start()
        for reader in readers:
            reader.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
            if reader.is_alive():
                assert timeout is not None
                raise subprocess.TimeoutExpired(self.args, timeout)
        self.wait(None if deadline is None else max(0.0, deadline - time.monotonic()))
        return read.get(1), read.get(2)

    def __enter__(self) -> Popen:
        return self

    def __exit__(self, *exc_info: object) -> None:
        for stream in (self.stdin, self.stdout, self.stderr):
            if stream is not None:
                stream.close()
        self.wait()


def run(
    args: Sequence[str],
    *,
    input: Any = None,
    capture_output: bool = False,
    text: bool = False,
    env: Mapping[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
    timeout: float | None = None,
    check: bool = False,
) -> subprocess.CompletedProcess[Any]:
    """`subprocess.run` for a forked child: on a timeout the child is killed, then it raises."""
    out = PIPE if capture_output else None
    process = Popen(
        args, stdin=PIPE if input is not None else None, stdout=out, stderr=out, env=env,
        cwd=cwd, text=text,
    )  # fmt: skip
    try:
        stdout, stderr = process.communicate(input, timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        raise
    assert process.returncode is not None
    if check and process.returncode:
        raise subprocess.CalledProcessError(process.returncode, process.args, stdout, stderr)
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def start_server() -> None:
    """Start this worker's fork server now, without waiting for it: it imports `PRELOAD` while
    the tests are collected, rather than while the first test that forks waits for it."""
    global _started
    from multiprocessing import forkserver

    forkserver.ensure_running()
    _started = True


def stop_server() -> None:
    """Stop this worker's fork server and wait for it, so that the CPU it and its children
    used is counted as the test run's (``time pytest``) instead of leaving with an orphan."""
    if not _started:
        return
    from multiprocessing import forkserver, resource_tracker

    for server in (forkserver._forkserver, resource_tracker._resource_tracker):
        stop = getattr(server, "_stop", None)  # private: kept by CPython for its own tests
        if stop is not None:
            stop()
