"""Model files by hand: ``convert``, ``quantize`` and ``delta make``."""

from __future__ import annotations

from pathlib import Path

import click

from llamashare.cli.base import CONTEXT, cli
from llamashare.ui import byte_progress, human_size


@cli.command(context_settings=CONTEXT)
@click.argument("source", type=click.Path(path_type=Path, file_okay=False, exists=True))
@click.option(
    "-o", "--output", type=click.Path(path_type=Path, dir_okay=False), required=True, help="The GGUF file to write."
)
@click.option(
    "--outtype",
    type=click.Choice(["f32", "f16", "bf16"]),
    default="f16",
    show_default=True,
    help="Type of the weight matrices (norms stay f32).",
)
@click.option(
    "--base",
    type=click.Path(path_type=Path, file_okay=False, exists=True),
    help="SOURCE is a delta: add it to this base model folder, tensor by tensor.",
)
@click.option("-f", "--force", is_flag=True, help="Replace an existing output file.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
def convert(source: Path, output: Path, outtype: str, base: Path | None, force: bool, quiet: bool) -> None:
    """Convert a checkpoint folder to GGUF (for llama.cpp, Ollama, LM Studio and `llamashare
    run`): LLaMA/Mistral, Qwen2/2.5, Qwen3, Gemma 2/3 and Phi-3, as llama.cpp's converter writes
    them. Hugging Face folders (config.json, *.safetensors, tokenizer) and Meta's
    original layout (params.json, consolidated.NN.pth, tokenizer.model) are detected; .pth
    pickles are read with an allow list, never executed. Streams: a few tensors in memory.

    \b
    Examples:
      llamashare convert ./smollm2-135m -o smollm2.gguf
      llamashare convert ./vicuna-7b-delta --base ./llama-7b -o vicuna-7b.gguf
    """
    from llamashare.quant.convert import convert as run_convert

    with byte_progress(f"converting {source.name}", 0, quiet) as bar:
        report = run_convert(
            source,
            output,
            outtype,
            base,
            force,
            progress=bar.advance,
            on_tensor=lambda name: bar.describe(f"converting {name}"),
            on_total=bar.set_total,
        )
    p = report.params
    click.echo(
        f"wrote {report.path} ({report.tensors} tensors, {human_size(report.bytes_written)} of weights, {outtype}): "
        f"{p.n_layer} layers, {p.n_embd} wide, {p.n_head}/{p.n_head_kv} heads, vocabulary {p.n_vocab} "
        f"({'SentencePiece' if report.tokenizer == 'llama' else 'BPE'}), {p.arch}, from the {report.layout} layout"
    )
    if report.left_out:
        click.echo(f"left out the vision tower ({report.left_out} tensors): the GGUF is the text model only")


def _list_quantizations(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if not value or ctx.resilient_parsing:
        return
    from llamashare.quant.presets import describe

    click.echo(f"{'preset':<8} {'main type':<10} {'bits/weight':>11}  notes")
    for name, tname, bpw, note in describe():
        click.echo(f"{name:<8} {tname:<10} {bpw:>11.2f}  {note}")
    click.echo(
        "Norms and other 1-D tensors stay as they are; a row not divisible by 256 takes a "
        "32-value block type (or F16). Q4_K and Q5_K mean Q4_K_M and Q5_K_M."
    )
    ctx.exit(0)


@cli.command(context_settings=CONTEXT)
@click.option(
    "--list",
    "list_",
    is_flag=True,
    expose_value=False,
    is_eager=True,
    callback=_list_quantizations,
    help="List the quantization presets with bits per weight, and exit.",
)
@click.argument("source", type=click.Path(path_type=Path, dir_okay=False, exists=True))
@click.argument("output", type=click.Path(path_type=Path, dir_okay=False))
@click.argument("quant", metavar="TYPE")
@click.option(
    "--allow-requantize", is_flag=True, help="Accept an already quantized input (quality suffers: errors add up)."
)
@click.option(
    "--pure", is_flag=True, help="Every quantizable tensor gets TYPE: no higher types for output/attn_v/ffn_down."
)
@click.option("-t", "--threads", type=click.IntRange(1, 256), help="Threads to use  [default: every core]")
@click.option("-f", "--force", is_flag=True, help="Replace an existing output file.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
def quantize(
    source: Path,
    output: Path,
    quant: str,
    allow_requantize: bool,
    pure: bool,
    threads: int | None,
    force: bool,
    quiet: bool,
) -> None:
    """Quantize a GGUF model (from `llamashare convert`) to TYPE, e.g. Q4_K_M, Q8_0, Q4_0.

    Same presets, per-tensor rules and bytes as llama.cpp's llama-quantize (without an
    importance matrix): the output loads in llama.cpp, Ollama, LM Studio and `llamashare run`.
    Streams slab by slab from a memory map; a failed or interrupted run leaves no OUTPUT.

    \b
    Examples:
      llamashare quantize smollm2.f16.gguf smollm2.Q4_K_M.gguf Q4_K_M
      llamashare quantize --list
    """
    from llamashare.quant.quantize import quantize_file

    with byte_progress(f"quantizing {source.name}", 0, quiet) as bar:
        report = quantize_file(
            source,
            output,
            quant,
            force=force,
            allow_requantize=allow_requantize,
            pure=pure,
            threads=threads,
            progress=bar.advance,
            on_total=bar.set_total,
            on_tensor=lambda t: bar.describe(f"{t.name} {t.src.name}→{t.dst.name}"),
        )
    types = ", ".join(f"{n} {t}" for t, n in sorted(report.types.items(), key=lambda kv: -kv[1]))
    click.echo(
        f"wrote {report.path} ({report.preset.name}, {human_size(report.bytes_in)} → {human_size(report.bytes_out)}, "
        f"{report.bits_per_weight:.2f} bits/weight; tensors: {types})"
    )


@cli.group(context_settings=CONTEXT)
def delta() -> None:
    """Delta weights (target − base), for models whose base may not be redistributed.

    \b
    Example:
      llamashare delta make ./vicuna-7b --base ./llama-7b -o ./vicuna-7b-delta
    """


@delta.command("make", context_settings=CONTEXT)
@click.argument("target", type=click.Path(path_type=Path, file_okay=False, exists=True))
@click.option(
    "--base",
    type=click.Path(path_type=Path, file_okay=False, exists=True),
    required=True,
    help="The base model folder.",
)
@click.option(
    "-o",
    "--output",
    type=click.Path(path_type=Path, file_okay=False),
    required=True,
    help="Folder to write the delta into.",
)
@click.option("-f", "--force", is_flag=True, help="Replace an existing output folder.")
def delta_make(target: Path, base: Path, output: Path, force: bool) -> None:
    """Write TARGET − BASE as a Hugging Face folder (safetensors + TARGET's config and
    tokenizer), ready for `llamashare create`. Users rebuild TARGET with
    `llamashare convert DELTA --base BASE`.

    \b
    Example:
      llamashare delta make ./vicuna-7b --base ./llama-7b -o ./vicuna-7b-delta
    """
    from llamashare.quant.delta import make_delta

    count = make_delta(target, base, output, force)
    click.echo(f"wrote {output} ({count} delta tensors)")
