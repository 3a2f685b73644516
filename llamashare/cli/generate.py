"""Running models: ``run`` and ``perplexity``."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import click

from llamashare.cli.base import CONTEXT, cli
from llamashare.ui import err, human_size

if TYPE_CHECKING:
    from llamashare.daemon.home import Home
    from llamashare.infer.model import Llama
    from llamashare.infer.tokenizer import GGUFTokenizer


def _sampling_options(f):  # type: ignore[no-untyped-def]
    """Sampler flags, with llama.cpp's defaults."""
    opts = [
        click.option(
            "--temp",
            type=click.FloatRange(0),
            default=0.8,
            show_default=True,
            help="Temperature; 0 = greedy (always the likeliest token).",
        ),
        click.option("--top-k", type=int, default=40, show_default=True, help="Keep the K likeliest tokens (0 = all)."),
        click.option(
            "--top-p",
            type=click.FloatRange(0, 1, min_open=True),
            default=0.95,
            show_default=True,
            help="Keep the likeliest tokens up to this total probability.",
        ),
        click.option(
            "--min-p",
            type=click.FloatRange(0, 1),
            default=0.05,
            show_default=True,
            help="Drop tokens less likely than this × the likeliest.",
        ),
        click.option(
            "--repeat-penalty",
            type=click.FloatRange(0, min_open=True),
            default=1.0,
            show_default=True,
            help="Penalize the last 64 tokens (1.0 = off; 1.1 is common).",
        ),
        click.option("--seed", type=int, help="Random seed, for a reproducible run [default: random]."),
    ]
    for opt in reversed(opts):
        f = opt(f)
    return f


WEIGHTS_OPTION = click.option(
    "--weights",
    type=click.Choice(["auto", "f32", "streamed"]),
    default="auto",
    show_default=True,
    help="F16, BF16, Q8_0, Q4_0, Q5_0, Q4_1, Q5_1, Q4_K, Q5_K and Q6_K matrices are multiplied on "
    "the file's blocks, prompts too, and keep no copy. For other types (F32, Q2_K, Q3_K), f32: keep "
    "a float32 copy for prompts (fastest prompts, 4 bytes per weight); streamed: prompts dequantize "
    "rows per use (fits big models); auto picks by free memory.",
)


def model_path(home: Home, model: str) -> Path:
    """A GGUF path as given, or the best GGUF the store built for release ``model``."""
    path = Path(model)
    if path.exists() or path.suffix == ".gguf" or "/" in model:
        return path
    from llamashare.errors import InferenceError
    from llamashare.store import Store

    entry = Store(home.models_dir).get(model)
    best = entry.best_gguf()
    if best is None:
        raise InferenceError(
            f"{model} has no GGUF file yet (fetched with --no-convert?): run llamashare fetch {entry.manifest_path}"
        )
    return best


def _read_text(path: Path) -> str:
    """A prompt or text file as ``Path.read_text`` reads it (UTF-8, universal newlines), or one
    line naming the file and the first byte that is not UTF-8."""
    from llamashare.errors import InferenceError

    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise InferenceError(
            f"{path}: is not UTF-8 text: byte 0x{data[e.start]:02x} at offset {e.start} ({e.reason})"
        ) from None
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _load_model(
    home: Home, model_arg: str, ctx_size: int | None, weights: str, quiet: bool
) -> tuple[Llama, GGUFTokenizer]:
    from llamashare.infer.model import Llama
    from llamashare.infer.tokenizer import GGUFTokenizer

    model = model_path(home, model_arg)
    t0 = time.perf_counter()
    llm = Llama(model, n_ctx=ctx_size, weights=weights)
    tok = GGUFTokenizer(llm.file)
    if not quiet:
        c = llm.cfg
        err.print(
            f"loaded {model.name}: {c.n_layer} layers, width {c.n_embd}, vocabulary {c.n_vocab}, context "
            f"{llm.n_ctx}; weights {llm.weights_kind} ({human_size(llm.weight_bytes)}) in "
            f"{time.perf_counter() - t0:.1f} s",
            markup=False,
            highlight=False,
        )
    return llm, tok


@cli.command(context_settings=CONTEXT)
@click.argument("model")
@click.option("-p", "--prompt", help="Text to continue (or, with --chat, the first message).")
@click.option(
    "-f",
    "--file",
    "prompt_file",
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    help="Read the prompt from this file.",
)
@click.option(
    "-n",
    "--n-predict",
    type=int,
    default=128,
    show_default=True,
    help="Tokens to generate at most (-1 = until the context is full).",
)
@click.option(
    "-c",
    "--ctx",
    "ctx_size",
    type=click.IntRange(1),
    help="Context size in tokens [default: the model's, at most 4096].",
)
@click.option("--ignore-eos", is_flag=True, help="Never stop at an end-of-generation token (for benchmarks).")
@click.option(
    "--chat", is_flag=True, help="Interactive chat with the model's chat template; an empty line or Ctrl-D ends it."
)
@click.option("--system", help="System message for --chat.")
@_sampling_options
@WEIGHTS_OPTION
@click.option("-q", "--quiet", is_flag=True, help="Only the generated text: no load line, no speeds.")
@click.pass_obj
def run(
    home: Home,
    model: str,
    prompt: str | None,
    prompt_file: Path | None,
    n_predict: int,
    ctx_size: int | None,
    ignore_eos: bool,
    chat: bool,
    system: str | None,
    temp: float,
    top_k: int,
    top_p: float,
    min_p: float,
    repeat_penalty: float,
    seed: int | None,
    weights: str,
    quiet: bool,
) -> None:
    """Generate text with MODEL, a GGUF file or the name of a release in the store (LLaMA,
    Qwen2/2.5, Qwen3, Gemma 2/3, Phi-3; F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1 and Q2_K to
    Q6_K tensors). Tokens print as they come; speeds follow on stderr.

    The NumPy engine gives llama.cpp's tokens and, with --temp 0, its greedy output. Special
    tokens written in the prompt (<|im_start|>) are parsed, as llama-cli does. A prompt
    longer than the context is refused; generation stops when the context is full. Ctrl-C
    stops generating and still prints the speeds.

    \b
    Examples:
      llamashare run smollm2.Q8_0.gguf -p "The capital of France is" -n 32 --temp 0
      llamashare run smollm2-135m-instruct --chat --system "Answer briefly."
    """
    from llamashare.infer.chat import Chat, converse
    from llamashare.infer.generate import Stats, generate
    from llamashare.infer.sampling import Sampler, SamplingParams

    if prompt_file is not None:
        prompt = _read_text(prompt_file)
    if prompt is None and not chat:
        raise click.UsageError("give a prompt (-p TEXT or -f FILE), or --chat")
    try:
        sampler = Sampler(SamplingParams(temp, top_k, top_p, min_p, repeat_penalty, seed=seed))
    except ValueError as e:
        raise click.UsageError(str(e)) from None
    llm, tok = _load_model(home, model, ctx_size, weights, quiet)
    out = sys.stdout

    def emit(piece: str) -> None:
        out.write(piece)
        out.flush()

    def report(stats: Stats) -> None:
        if not quiet:
            end = {"context": " (context full)", "limit": "", "eog": ""}.get(stats.stop, " (interrupted)")
            err.print(f"\n{stats.summary()}{end}", markup=False, highlight=False)

    if not chat:
        assert prompt is not None  # checked above: without --chat a prompt is required
        stats = Stats()
        try:
            for _, piece in generate(
                llm, tok, tok.encode(prompt, parse_special=True), n_predict, sampler, stats, ignore_eos
            ):
                emit(piece)
        except KeyboardInterrupt:
            stats.stop = "interrupted"
        emit("\n")
        report(stats)
        if stats.stop == "interrupted":
            sys.exit(130)
        return

    def read() -> str | None:
        try:
            return str(click.prompt("you", prompt_suffix="> ", default="", show_default=False))
        except (EOFError, click.Abort):
            return None

    converse(Chat(llm, tok, sampler, system), prompt, read, n_predict, emit, report)


@cli.command(context_settings=CONTEXT)
@click.argument("model")
@click.option(
    "-f",
    "--file",
    "text_file",
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    required=True,
    help="The text to score (e.g. wiki.test.raw).",
)
@click.option(
    "-c",
    "--ctx",
    "ctx_size",
    type=click.IntRange(4),
    default=512,
    show_default=True,
    help="Tokens per chunk (llama-perplexity's -c).",
)
@WEIGHTS_OPTION
@click.option("-q", "--quiet", is_flag=True, help="Only the result line.")
@click.pass_obj
def perplexity(home: Home, model: str, text_file: Path, ctx_size: int, weights: str, quiet: bool) -> None:
    """Perplexity of MODEL on a text file, chunked exactly as llama.cpp's llama-perplexity does
    (chunks of --ctx tokens, the second half of each scored), so the numbers compare.

    \b
    Example:
      llamashare perplexity smollm2.Q4_K_M.gguf -f wiki.test.raw -c 512
    """
    from llamashare.infer.perplexity import perplexity as measure

    text = _read_text(text_file)  # before the model: a wrong file fails at once
    llm, tok = _load_model(home, model, ctx_size, weights, quiet)

    def progress(chunk: int, total: int, ppl: float) -> None:
        if not quiet:
            err.print(f"[{chunk}/{total}] {ppl:.4f}", markup=False, highlight=False)

    r = measure(llm, tok, text, ctx_size, progress)
    click.echo(f"perplexity {r.ppl:.4f} ± {r.stderr:.4f} ({r.chunks} chunks of {r.n_ctx} tokens, {r.scored} scored)")
