"""The ``tether`` command: ``tether demo``, ``tether run "PROMPT"`` and ``tether serve [MODULE:ATTR]``.

``tether run`` streams the answer to the terminal; Ctrl-C stops the run gracefully, prints what
was kept and the final status, and exits 130. ``tether demo`` is the "Stop button" scenario: a
streaming run that another thread cancels after a few seconds. Both run offline (on the built-in
loopback model) when no ``OPENAI_API_KEY``/``OPENAI_BASE_URL`` is set. ``tether serve`` serves agents
over HTTP (see ``tether.server._serve``); SIGTERM or Ctrl-C cancels its live runs and exits 0.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
import threading
import uuid
from collections.abc import Iterator, Sequence

from ._agent import Agent
from ._run import RunEvent, RunOutput, RunStatus
from .models.openai import OpenAIChat
from .testing import demo_model

EXIT_INTERRUPTED = 130
EXIT_USAGE = 2
DEMO_PROMPT = (
    "Write a very long story about a dragon who learns to code. "
    "Make it at least 2000 words with detailed descriptions and dialogue."
)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``tether`` console script; returns the exit code."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command == "demo":
        return _demo(args.cancel_after)
    if args.command == "serve":
        return _serve(args)
    return _run(args)


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
        help="what a streaming run does when its client goes away (default: cancel)",
    )
    serve.add_argument(
        "--redis-url",
        default=None,
        metavar="URL",
        help="cancel runs across workers and hosts through Redis (default: $TETHER_REDIS_URL)",
    )


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1 (got {value})")
    return value


def _serve(args: argparse.Namespace) -> int:
    try:  # fastapi and uvicorn come with the optional server extra
        from .server._serve import ServeSettings, serve
    except ModuleNotFoundError as exc:
        _say(f"tether serve needs the server extra (pip install 'tether[server]'): {exc}")
        return EXIT_USAGE
    if args.redis_url:
        os.environ["TETHER_REDIS_URL"] = args.redis_url  # read by create_app, in every worker too
    settings = ServeSettings(args.target, args.storage, args.security_key, args.on_disconnect)
    return serve(settings, host=args.host, port=args.port, workers=args.workers)


def _run(args: argparse.Namespace) -> int:
    with _model(args) as (model, where):
        _say(f"tether: {where}")
        agent = Agent(name="tether-cli", model=model, instructions=args.instructions)
        output = asyncio.run(_stream(agent, args.prompt))
    return _report(output)


def _demo(cancel_after: float) -> int:
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
            output = asyncio.run(_stream(agent, DEMO_PROMPT, run_id=run_id))
        finally:
            stop.set()
            canceller.join()
    return _report(output)


@contextlib.contextmanager
def _model(args: argparse.Namespace) -> Iterator[tuple[OpenAIChat, str]]:
    if args.base_url or args.api_key or args.model:
        model = OpenAIChat(id=args.model or "gpt-5-mini", base_url=args.base_url, api_key=args.api_key)
        yield model, f"model {model.id} at {args.base_url or 'the OpenAI API'}"
    else:
        with demo_model() as found:
            yield found


async def _stream(agent: Agent, prompt: str, run_id: str | None = None) -> RunOutput:
    stream = agent.arun(prompt, stream=True, run_id=run_id)
    loop = asyncio.get_running_loop()
    with contextlib.suppress(NotImplementedError, RuntimeError):  # no signal handlers off the main thread
        loop.add_signal_handler(
            signal.SIGINT, lambda: agent.cancel_run(stream.run_id, reason="interrupted from the terminal")
        )
    try:
        async for event in stream:
            if event.event == RunEvent.run_content:
                sys.stdout.write(event.content or "")
                sys.stdout.flush()
    finally:
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.remove_signal_handler(signal.SIGINT)
    assert stream.output is not None
    return stream.output


def _report(output: RunOutput) -> int:
    _say(f"\n\n--- run {output.run_id}: {output.status.value}")
    if output.status is RunStatus.cancelled:
        kept = len(output.content)
        _say(f"--- cancelled by {output.cancel_source} ({output.cancel_reason}); kept {kept} chars")
        return EXIT_INTERRUPTED if output.cancel_reason == "interrupted from the terminal" else 0
    if output.status is RunStatus.error:
        _say(f"--- error ({output.error_type}): {output.error}")
        return 1
    return 0


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
