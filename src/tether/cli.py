"""The ``tether`` command: ``tether demo``, ``tether run "PROMPT"`` and ``tether serve [MODULE:ATTR]``.

``tether run`` streams the answer to the terminal; Ctrl-C stops the run gracefully, prints what
was kept and the final status, and exits 130 (a second Ctrl-C stops at once). ``tether demo`` is
the "Stop button" scenario: a streaming run that another thread cancels after a few seconds. Both
run offline (on the built-in loopback model) when no ``OPENAI_API_KEY``/``OPENAI_BASE_URL`` is set.
``tether serve`` serves agents over HTTP (see ``tether.server._serve``); SIGTERM or Ctrl-C cancels
its live runs and exits 0.

A failure is one line on stderr (``tether: ...``), never a traceback, and a non-zero exit code:

- 1: the run ended in error, or something failed unexpectedly;
- 2: bad usage, option or ``MODULE:ATTR``, or a missing extra;
- 3: the server could not start (storage unreachable, port in use, a bad Redis URL; an
  unreachable Redis is logged in one line and the server starts: local runs and cancels go on);
- 130: interrupted (Ctrl-C before the run started; after, the run is stopped and reported);
- 141: the output was closed (``tether run ... | head``): the run is cancelled and stored, as a
  program killed by SIGPIPE would exit in a shell (128 + 13).

Only the standard library is imported here: the rest is imported inside :func:`main`, so a Ctrl-C
while it loads is reported like any other. ``tether/__init__`` imports its names lazily, so what
loads before ``main`` exists takes a few tens of milliseconds (Python's own start-up: a Ctrl-C
there is still Python's KeyboardInterrupt, as for any program).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import os
import signal
import sys
import threading
import uuid
from collections.abc import Callable, Coroutine, Iterator, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from ._agent import Agent
    from ._run import RunOutput
    from .models.base import Model

T = TypeVar("T")
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141
INTERRUPTED = "interrupted from the terminal"
OUTPUT_CLOSED = "the output was closed"
DEMO_PROMPT = (
    "Write a very long story about a dragon who learns to code. "
    "Make it at least 2000 words with detailed descriptions and dialogue."
)


def main(argv: Sequence[str] | None = None, *, early_interrupts: list[int] | None = None) -> int:
    """The ``tether`` command; returns the exit code (see the module doc).

    ``early_interrupts``: Ctrl-Cs counted by the console script (``tether._console``) until now; one
    that comes before :class:`_Interrupts` takes over is acted on at its first safe point.
    """
    _INTERRUPTS.early = early_interrupts if early_interrupts is not None else []
    try:
        args = _parser().parse_args(argv)
        command: Callable[[argparse.Namespace], int] = {"demo": _demo, "serve": _serve, "run": _run}[
            args.command
        ]
        if args.command == "serve":  # it handles its signals itself once the server starts
            _INTERRUPTS.check()
            return command(args)
        with _INTERRUPTS.installed():
            return command(args)
    except KeyboardInterrupt:
        _say("tether: interrupted")
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        _detach_stdout()
        _say(f"tether: stopped: {OUTPUT_CLOSED}")
        return EXIT_BROKEN_PIPE
    except Exception as exc:
        from .exceptions import TetherError

        if isinstance(exc, TetherError):
            _say(f"tether: {exc}")
        else:
            _say(f"tether: unexpected error: {type(exc).__name__}: {exc}")
        return EXIT_FAILURE


class _Interrupts:
    """Ctrl-C for ``tether run`` and ``tether demo``, handled at points of our choosing.

    Python's own handler raises KeyboardInterrupt wherever the main thread is, even inside asyncio
    building its event loop, which then complains at exit. This one only counts, and while a run
    is live asks the run's event loop to cancel it (``call_soon_threadsafe``: a signal handler must
    not take the locks a cancel takes). Before the run, :meth:`check` raises at the next safe point.
    A second Ctrl-C raises KeyboardInterrupt at once, for a run that will not stop.
    """

    def __init__(self) -> None:
        self.count = 0
        self.early: list[int] = []  # counted by the console script before this took over
        self._cancel: Callable[[], object] | None = None

    def __call__(self, sig: int, frame: object) -> None:
        self.count += 1
        if self.count > 1:
            raise KeyboardInterrupt
        if self._cancel is not None:
            self._cancel()

    def check(self) -> None:
        if self.count or self.early:
            raise KeyboardInterrupt

    def live(self, cancel: Callable[[], object] | None) -> None:
        """``cancel`` is what a Ctrl-C does now (None: the run is over); done at once if one came."""
        self._cancel = cancel
        if cancel is not None and self.count:
            cancel()

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield  # only the main thread has signal handlers
            return
        previous = signal.signal(signal.SIGINT, self)
        self.count += len(self.early)  # the console script's count, up to the switch
        self.early = []
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, previous)


_INTERRUPTS = _Interrupts()


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tether", description="Cancellable agent runs.")
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="stream a long story and cancel it from another thread")
    demo.add_argument("--cancel-after", type=float, default=3.0, metavar="SECONDS")
    run = commands.add_parser("run", help="stream one answer to the terminal (Ctrl-C stops it)")
    run.add_argument("prompt")
    run.add_argument("--model", default=None, help="model id (default: gpt-5-mini)")
    run.add_argument("--base-url", default=None, help="an OpenAI-compatible endpoint (Ollama, vLLM, ...)")
    run.add_argument("--api-key", default=None)
    run.add_argument("--instructions", default=None)
    _serve_parser(commands.add_parser("serve", help="serve agents over HTTP (SIGTERM cancels live runs)"))
    return parser


def _serve_parser(serve: argparse.ArgumentParser) -> None:
    serve.add_argument(
        "target",
        nargs="?",
        default=None,
        metavar="MODULE:ATTR",
        help="an Agent, a list of Agents, or an app from create_app (default: a demo agent)",
    )
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=7777)
    serve.add_argument("--workers", type=_positive, default=1, metavar="N", help="worker processes")
    serve.add_argument(
        "--storage",
        default=None,
        metavar="URL",
        help="sqlite:///path or postgresql://... (default: $TETHER_STORAGE_URL, else sqlite:///tether.db)",
    )
    serve.add_argument(
        "--security-key",
        default=None,
        metavar="KEY",
        help="require Authorization: Bearer KEY (default: $TETHER_SECURITY_KEY)",
    )
    serve.add_argument(
        "--on-disconnect",
        choices=("cancel", "continue"),
        default=None,
        help="what a run does when its client goes away before it ended, streaming or not (default: cancel)",
    )
    serve.add_argument(
        "--redis-url",
        default=None,
        metavar="URL",
        help="cancel runs across workers and hosts through Redis (default: $TETHER_REDIS_URL)",
    )
    serve.add_argument(
        "--sse-keepalive",
        type=_seconds,
        default=None,
        metavar="SECONDS",
        help="an SSE comment on event streams silent for this long; 0: none "
        "(default: $TETHER_SSE_KEEPALIVE, else 15)",
    )


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1 (got {value})")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number of seconds (got {text!r})") from None
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a number of seconds >= 0 (got {text!r})")
    return value


def _serve(args: argparse.Namespace) -> int:
    try:  # fastapi and uvicorn come with the optional server extra
        from .server._serve import ServeSettings, serve
    except ModuleNotFoundError as exc:
        _say(f"tether: serve needs the server extra: pip install 'tether[server]' ({exc})")
        return EXIT_USAGE
    if args.redis_url:
        os.environ["TETHER_REDIS_URL"] = args.redis_url  # read by create_app, in every worker too
    if args.sse_keepalive is not None:
        os.environ["TETHER_SSE_KEEPALIVE"] = repr(args.sse_keepalive)  # idem
    settings = ServeSettings(args.target, args.storage, args.security_key, args.on_disconnect)
    return serve(settings, host=args.host, port=args.port, workers=args.workers)


def _run(args: argparse.Namespace) -> int:
    from ._agent import Agent

    with _model(args) as (model, where):
        _say(f"tether: {where}")
        agent = Agent(name="tether-cli", model=model, instructions=args.instructions)
        output = _until_done(_stream(agent, args.prompt))
    return _report(output)


def _demo(args: argparse.Namespace) -> int:
    from ._agent import Agent
    from .testing import demo_model

    cancel_after: float = args.cancel_after
    with demo_model() as (model, where):
        _say(f"tether demo: {where}")
        agent = Agent(
            name="StorytellerAgent", model=model, description="An agent that writes detailed stories"
        )
        run_id = f"demo-{uuid.uuid4().hex[:12]}"

        def cancel_later() -> None:
            if not stop.wait(cancel_after):
                _say(
                    f"\n\ntether demo: cancelling run {run_id} from thread {threading.current_thread().name}"
                )
                _say(
                    f"tether demo: cancel_run returned {agent.cancel_run(run_id, reason='demo: stop button')}"
                )

        stop = threading.Event()
        canceller = threading.Thread(target=cancel_later, name="CancelThread")
        canceller.start()
        try:
            output = _until_done(_stream(agent, DEMO_PROMPT, run_id=run_id))
        finally:
            stop.set()
            canceller.join()
    return _report(output)


@contextlib.contextmanager
def _model(args: argparse.Namespace) -> Iterator[tuple[Model, str]]:
    from .models.openai import OpenAIChat
    from .testing import demo_model

    if args.base_url or args.api_key or args.model:
        model = OpenAIChat(id=args.model or "gpt-5-mini", base_url=args.base_url, api_key=args.api_key)
        yield model, f"model {model.id} at {args.base_url or 'the OpenAI API'}"
    else:
        with demo_model() as found:
            yield found


async def _stream(agent: Agent, prompt: str, run_id: str | None = None) -> RunOutput:
    """Print the run's text to stdout; Ctrl-C, or stdout closed by its reader, cancels the run."""
    from ._run import RunEvent

    _INTERRUPTS.check()
    stream = agent.arun(prompt, stream=True, run_id=run_id)
    loop = asyncio.get_running_loop()
    cancel = functools.partial(agent.cancel_run, stream.run_id, reason=INTERRUPTED)
    _INTERRUPTS.live(lambda: loop.call_soon_threadsafe(cancel))
    writing = True
    try:
        async for event in stream:
            if writing and event.event == RunEvent.run_content:
                try:
                    sys.stdout.write(event.content or "")
                    sys.stdout.flush()
                except BrokenPipeError:  # e.g. `| head`: stop the run, keep what was written, say so
                    writing = False
                    _detach_stdout()
                    agent.cancel_run(stream.run_id, reason=OUTPUT_CLOSED)
    finally:
        _INTERRUPTS.live(None)
    assert stream.output is not None
    return stream.output


def _until_done(coro: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run(coro)``; a Ctrl-C before the loop started it leaves no "never awaited" warning."""
    try:
        return asyncio.run(coro)
    finally:
        coro.close()  # a no-op once it ran


def _report(output: RunOutput) -> int:
    from ._run import RunStatus

    if output.status is RunStatus.cancelled and output.cancel_reason == OUTPUT_CLOSED:
        _say(f"tether: stopped run {output.run_id}: {OUTPUT_CLOSED}; kept {len(output.content)} chars")
        return EXIT_BROKEN_PIPE
    _say(f"\n\n--- run {output.run_id}: {output.status.value}")
    if output.status is RunStatus.cancelled:
        kept = len(output.content)
        _say(f"--- cancelled by {output.cancel_source} ({output.cancel_reason}); kept {kept} chars")
        return EXIT_INTERRUPTED if output.cancel_reason == INTERRUPTED else 0
    if output.status is RunStatus.error:
        _say(f"--- error ({output.error_type}): {output.error}")
        return EXIT_FAILURE
    return 0


def _detach_stdout() -> None:
    """Point stdout at /dev/null: what is still buffered for a closed pipe cannot fail again at exit."""
    with contextlib.suppress(OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)


def _say(text: str) -> None:
    with contextlib.suppress(OSError):  # stderr closed too: nothing left to tell
        print(text, file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
