"""Serving models over HTTP: ``serve``."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

import click

from llamashare.cli.base import CONTEXT, cli
from llamashare.ui import err

if TYPE_CHECKING:
    from llamashare.daemon.home import Home


@cli.command(context_settings=CONTEXT)
@click.argument("models", nargs=-1)
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=click.IntRange(0, 65535), default=8080, show_default=True, help="Port (0: any free one).")
@click.option("--api-key", help="Require 'Authorization: Bearer KEY' (needed for a --host other machines reach).")
@click.option(
    "--parallel",
    type=click.IntRange(1, 64),
    default=4,
    show_default=True,
    help="Requests decoded together per model; more wait their turn.",
)
@click.option(
    "-c", "--ctx", "ctx_size", type=click.IntRange(16), help="Context per request [default: the model's, at most 4096]."
)
@click.pass_obj
def serve(
    home: Home, models: tuple[str, ...], host: str, port: int, api_key: str | None, parallel: int, ctx_size: int | None
) -> None:
    """Serve MODELS (release names in the store, or GGUF files; none: every release with a GGUF)
    over OpenAI's API (/v1/chat/completions, /v1/completions, /v1/models) and Ollama's (/api/chat,
    /api/generate, /api/tags, /api/show), for editors, chat front-ends and the openai/ollama
    client libraries. A model loads on first use; up to --parallel requests per model are decoded
    together, each step reading the weights once for all of them. Ctrl-C stops it.

    \b
    Examples:
      llamashare serve                                   # every model in the store, on 127.0.0.1:8080
      llamashare serve smollm2-135m-instruct --port 11434 --parallel 8
      llamashare serve ./model.Q4_K_M.gguf --host 0.0.0.0 --api-key "$KEY"
    Then, from Python: openai.OpenAI(base_url="http://127.0.0.1:8080/v1", api_key="unused")
    """
    import asyncio  # here, not at the top: every other command starts ~20 ms sooner

    from llamashare.serve.models import Models, offers
    from llamashare.serve.server import check_exposure, link_url, report, start
    from llamashare.store import Store

    check_exposure(host, api_key)
    offered = offers(Store(home.models_dir), list(models))
    if not offered:
        err.print("nothing to serve: the store has no release with a GGUF (llamashare fetch, or give a GGUF file)")
        raise SystemExit(1)
    pool = Models(offered, n_ctx=ctx_size, parallel=parallel)

    async def main() -> None:
        runner, bound = await start(pool, host, port, api_key)
        shown = f"[{host}]" if ":" in host else host
        err.print(
            f"serving {', '.join(offered)} on http://{shown}:{bound} (OpenAI: /v1, Ollama: /api); Ctrl-C stops",
            markup=False,
            highlight=False,
        )
        reporting = asyncio.create_task(report(home.root, bound, pool, link_url(host, bound)))  # for the dashboard
        try:
            await asyncio.Event().wait()
        finally:
            reporting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reporting
            await runner.cleanup()

    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
    finally:
        pool.close()
