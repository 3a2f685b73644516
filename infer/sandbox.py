"""A Jinja sandbox whose renders are bounded in time and memory, for chat templates from
downloaded model files.

Jinja's own sandbox stops a template from reaching Python; it does not stop one from running
forever (nested ``range`` loops) or from asking for gigabytes (``'a' * 4000000000``, a format
width of 2·10^9, ``lipsum(n=10**8)``). :func:`render_bounded` adds, on top of
``ImmutableSandboxedEnvironment``:

* a size limit on every value a template makes: each argument and result of a filter, call or
  intercepted operator (``*``, ``**``, ``+``, ``%``), each ``~`` concatenation and each printed
  value is weighed (about the characters ``str()`` of it needs, shared parts counted as often
  as they would print) and refused past ``limit``. Operations whose result a parameter sizes are
  refused *before* they run: repetition, powers, format widths and repeated fields, ``replace``,
  ``join``, ``indent``, ``wordwrap``, ``lipsum``, ``range`` (at most MAX_RANGE items), and any
  integer argument above ``limit`` given to a filter or to a method of a built-in value;
* a budget on what a render keeps: the output and every buffer (macro bodies, ``{% set %}``
  blocks, filter and call blocks) count what is written to them, at most ``KEPT_FACTOR`` ×
  ``limit`` characters in all, so a loop that writes a large literal 10^5 times inside a macro
  stops at the budget;
* a deadline: after ``seconds``, a timer raises an exception in the rendering thread
  (``PyThreadState_SetAsyncExc``), which Python delivers between two bytecodes — so it also ends
  a tight loop that calls nothing, which no hook would see. Every operation a single bytecode
  can run for long (a C call) is sized in advance by the checks above.

Whatever stops a render becomes one :class:`RenderError` naming why; so do the template's own
errors, a recursion too deep, and ``MemoryError``. Real templates (a few KB, rendering a
conversation in a millisecond) are far inside every limit and render exactly as in Jinja.
"""

from __future__ import annotations

import ctypes
import functools
import re
import string
import threading
import types
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from jinja2 import TemplateError
from jinja2.compiler import CodeGenerator, Frame, optimizeconst
from jinja2.nodes import Concat
from jinja2.runtime import Context
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.utils import Namespace, generate_lorem_ipsum

#: Items a ``range`` may have (Jinja's own sandbox limit).
MAX_RANGE = 100_000
#: Bits an integer a template computes may have (a 20,000-digit number; 2**10**9 is refused).
MAX_INT_BITS = 1 << 16
#: Characters a render may keep in all (output and buffers), as a multiple of the value limit.
KEPT_FACTOR = 8
#: Characters of template source compiled at most (real chat templates are a few KB).
MAX_SOURCE = 256 * 1024
#: Built-in filters with a parameter that sizes their output (a width, a count, an indent).
SIZED_FILTERS = frozenset({"batch", "center", "indent", "slice", "tojson", "truncate", "urlize", "wordwrap"})


class RenderError(Exception):
    """A render stopped: the template failed, or went past a limit (``str()`` says which)."""


class _Limit(Exception):
    """A template went past a size limit (raised inside the render, becomes RenderError)."""


class _Timeout(BaseException):
    """Delivered asynchronously at the deadline; a BaseException so no ``except Exception`` in
    Jinja or in a template's call path swallows it."""


_SEQUENCES: tuple[type, ...] = (list, tuple, set, frozenset, type({}.keys()), type({}.values()), type({}.items()))


def weight(value: object, limit: int) -> int:
    """About how many characters ``str(value)`` needs, counting a part shared by several
    containers as often as it would print; counting stops once past ``limit`` (so the cost is
    bounded by ``limit`` whatever the value, cycles included). Iterators are not consumed."""
    total, stack = 0, [value]
    while stack and total <= limit:
        x: Any = stack.pop()
        kind = type(x)
        if kind is str or kind is bytes:
            total += len(x)
        elif kind in _SEQUENCES:
            total += 2 + 2 * len(x)
            if total <= limit:
                stack.extend(x)
        elif kind is dict:
            total += 2 + 4 * len(x)
            if total <= limit:
                for k, v in x.items():
                    stack += (k, v)
        elif kind is int:
            total += x.bit_length() // 3 + 1
        elif kind is bool or kind is float or x is None:
            total += 5
        elif kind is Namespace:  # before isinstance, which its __getattribute__ makes slow
            total += 16
            stack.append(object.__getattribute__(x, "_Namespace__attrs"))
        elif isinstance(x, str | bytes | bytearray):  # Markup and other subclasses
            total += len(x)
        elif isinstance(x, list | tuple | dict):
            stack.append(list(x.items()) if isinstance(x, dict) else list(x))
        else:  # a macro, an undefined, a loop or an iterator: a short repr
            total += 16
    return total


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _num(n: int) -> str:
    """An integer for a message (str() refuses those of more than 4300 digits)."""
    return str(n) if n.bit_length() < 64 else f"{'-' if n < 0 else ''}more than 2**{n.bit_length() - 1}"


def _range_len(r: range) -> int:
    """len(r) without ``len`` (which overflows past sys.maxsize)."""
    if (r.step > 0 and r.start >= r.stop) or (r.step < 0 and r.start <= r.stop):
        return 0
    return (abs(r.stop - r.start) + abs(r.step) - 1) // abs(r.step)


_PRINTF = re.compile(r"%(?:\([^)]*\))?[#0\- +]*(\*|\d+)?(?:\.(\*|\d+))?[hlL]?([a-zA-Z%])")
_DIGITS = re.compile(r"\d+")


class _Buffer(list[Any]):
    """Where a macro, a ``{% set %}`` block or a filter block collects its output: every piece
    counts towards the render's budget of kept characters."""

    def __init__(self, env: BoundedSandbox) -> None:
        super().__init__()
        self.env = env

    def append(self, item: Any) -> None:
        self.env.keep(len(item) if isinstance(item, str) else weight(item, self.env.limit))
        super().append(item)

    def extend(self, items: Any) -> None:
        items = tuple(items)
        self.env.keep(sum(len(i) if isinstance(i, str) else weight(i, self.env.limit) for i in items))
        super().extend(items)


class _BoundedCodeGenerator(CodeGenerator):
    """Jinja's compiler, with buffers that count what they hold and ``~`` weighed first."""

    def buffer(self, frame: Frame) -> None:
        frame.buffer = self.temporary_identifier()
        self.writeline(f"{frame.buffer} = environment.bounded_buffer()")

    @optimizeconst
    def visit_Concat(self, node: Concat, frame: Frame) -> None:
        if frame.eval_ctx.volatile:
            func_name = "(markup_join if context.eval_ctx.volatile else str_join)"
        elif frame.eval_ctx.autoescape:
            func_name = "markup_join"
        else:
            func_name = "str_join"
        self.write(f"{func_name}(environment.checked_concat((")
        for arg in node.nodes:
            self.visit(arg, frame)
            self.write(", ")
        self.write(")))")


class BoundedSandbox(ImmutableSandboxedEnvironment):
    """ImmutableSandboxedEnvironment with the size checks above; one per render (it holds the
    render's budget)."""

    intercepted_binops = frozenset({"*", "**", "+", "%"})
    code_generator_class = _BoundedCodeGenerator

    def __init__(self, limit: int, **options: Any) -> None:
        super().__init__(**options)
        self.limit = limit
        self.kept_limit = KEPT_FACTOR * limit
        self.kept = 0
        self.globals["range"] = self._range
        self.globals["lipsum"] = self._lipsum
        for name, f in list(self.filters.items()):
            self.filters[name] = self._bounded_filter(name, f)
        self.finalize = self._printed

    # -- budget ------------------------------------------------------------------------------

    def fits(self, size: int, what: str) -> None:
        if size > self.limit:
            raise _Limit(f"{what} would make a value of more than {self.limit} characters")

    def check(self, value: object, what: str) -> object:
        self.fits(weight(value, self.limit), what)
        return value

    def keep(self, size: int) -> None:
        self.kept += size
        if self.kept > self.kept_limit:
            raise _Limit(f"the render would write more than {self.kept_limit} characters")

    # -- hooks Jinja calls -------------------------------------------------------------------

    def _printed(self, value: object) -> object:
        """``finalize``: every ``{{ value }}`` before it becomes text."""
        return self.check(value, "printing a value")

    def checked_concat(self, parts: tuple[Any, ...]) -> tuple[Any, ...]:
        """The operands of a ``~`` concatenation, weighed together before they are joined."""
        self.fits(sum(weight(p, self.limit) for p in parts), "'~'")
        return parts

    def bounded_buffer(self) -> _Buffer:
        return _Buffer(self)

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        what = f"{operator!r}"
        if operator == "*":
            seq, n = (left, right) if _is_int(right) else (right, left)
            if _is_int(left) and _is_int(right):
                if left.bit_length() + right.bit_length() > MAX_INT_BITS:
                    raise _Limit(f"{what} would make an integer of more than {MAX_INT_BITS} bits")
            elif _is_int(n) and isinstance(seq, str | list | tuple) and n > 0:
                self.fits(weight(seq, self.limit) * n if seq else 0, what)
        elif operator == "**":
            if _is_int(left) and _is_int(right) and right > 0 and abs(left) > 1:
                if right * abs(left).bit_length() > MAX_INT_BITS:
                    raise _Limit(f"{what} would make an integer of more than {MAX_INT_BITS} bits")
        elif operator == "+":
            self.fits(weight(left, self.limit) + weight(right, self.limit), what)
        elif operator == "%" and isinstance(left, str):
            self._check_printf(left, right)
        return self.check(super().call_binop(context, operator, left, right), what)

    def call(__self, __context: Context, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        """Every call a template makes (functions, macros, methods)."""
        self = __self
        what = f"calling {getattr(__obj, '__name__', type(__obj).__name__)}"
        args = tuple(self._materialized(a) for a in args)
        self.fits(weight(args, self.limit) + weight(kwargs, self.limit), what)
        owner = getattr(__obj, "__self__", None)
        wrapped = getattr(__obj, "__wrapped__", None)  # the sandbox's wrapper of str.format
        if isinstance(wrapped, types.BuiltinMethodType) and isinstance(wrapped.__self__, str):
            self._check_format(wrapped.__self__, args, kwargs)
        elif isinstance(__obj, types.BuiltinMethodType) and isinstance(owner, str | bytes | int | float | list | dict):
            self._check_sizes(args, kwargs, what)
            if isinstance(owner, str):
                self._check_str_method(owner, __obj.__name__, args, kwargs)
        return self.check(super().call(__context, __obj, *args, **kwargs), what)

    # -- the checks ----------------------------------------------------------------------------

    def _materialized(self, value: Any) -> Any:
        """An iterator (from map, select, batch...) as a list, so that what it holds is weighed
        (a generator of a million references to one big string weighs little otherwise)."""
        if isinstance(value, Iterator):
            items = []
            for item in value:
                items.append(item)
                if len(items) > self.limit:
                    raise _Limit(f"a sequence of more than {self.limit} items")
            return items
        return value

    def _check_sizes(self, args: tuple[Any, ...], kwargs: dict[str, Any], what: str) -> None:
        """Any integer argument above the limit is a size no template needs (widths, counts)."""
        for v in (*args, *kwargs.values()):
            if _is_int(v) and abs(v) > self.limit:
                raise _Limit(f"{what} with {_num(v)} (at most {self.limit} here)")

    def _check_printf(self, fmt: str, values: Any) -> None:
        specs = _PRINTF.findall(fmt)
        for width, precision, _ in specs:
            for n in (width, precision):
                if n.isdigit() and self._too_wide(n):
                    raise _Limit(f"a format width of {n[:20]}")
        if any("*" in (w, p) for w, p, _ in specs):
            self._check_sizes(values if isinstance(values, tuple) else (values,), {}, "a '*' format width")
        self.fits(len(fmt) + len(specs) * weight(values, self.limit), "'%' formatting")

    def _too_wide(self, digits: str) -> bool:
        return len(digits) > 18 or int(digits) > self.limit

    def _check_format(self, fmt: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        fields = 0
        try:
            parsed = list(string.Formatter().parse(fmt))
        except ValueError:
            return  # str.format raises its own error for it
        for _, field, spec, _ in parsed:
            if field is not None:
                fields += 1
            for n in _DIGITS.findall(spec or ""):
                if self._too_wide(n):
                    raise _Limit(f"a format width of {n[:20]}")
        self._check_sizes(args, kwargs, "str.format")
        biggest = max((weight(v, self.limit) for v in (*args, *kwargs.values())), default=0)
        self.fits(len(fmt) + fields * biggest, "str.format")

    def _check_str_method(self, s: str, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        if name == "replace" and len(args) >= 2 and isinstance(args[0], str) and isinstance(args[1], str):
            self._check_replace(s, args[0], args[1], args[2] if len(args) > 2 else kwargs.get("count", -1))
        elif name == "join" and args and isinstance(args[0], list | tuple):
            self.fits(weight(args[0], self.limit) + len(s) * len(args[0]), "str.join")
        elif name == "expandtabs":
            size = args[0] if args and _is_int(args[0]) else kwargs.get("tabsize", 8)
            self.fits(len(s) + s.count("\t") * (size if _is_int(size) else 8), "str.expandtabs")
        elif name == "translate" and args and isinstance(args[0], dict):
            widest = max((weight(v, self.limit) for v in args[0].values()), default=1)
            self.fits(len(s) * max(1, widest), "str.translate")

    def _check_replace(self, s: str, old: str, new: str, count: object) -> None:
        hits = s.count(old) if old else len(s) + 1
        if isinstance(count, int) and not isinstance(count, bool) and count >= 0:
            hits = min(hits, count)
        self.fits(len(s) + hits * max(0, len(new) - len(old)), "replace")

    def _range(self, *args: Any) -> range:
        r = range(*args)
        if _range_len(r) > MAX_RANGE:
            raise _Limit(f"a range of {_num(_range_len(r))} items (at most {MAX_RANGE})")
        return r

    def _lipsum(self, n: Any = 5, html: Any = True, min: Any = 20, max: Any = 100) -> str:
        if not all(_is_int(v) for v in (n, min, max)):
            raise _Limit("lipsum takes integer counts")
        self.fits(n * max * 12, "lipsum")
        return str(generate_lorem_ipsum(n, html, min, max))

    def _bounded_filter(self, name: str, f: Callable[..., Any]) -> Callable[..., Any]:
        """``f`` with its arguments and result weighed, and its size parameters checked."""
        passes = getattr(f, "jinja_pass_arg", None) is not None  # context / eval_ctx / environment first
        what = f"filter {name!r}"

        @functools.wraps(f)
        def bounded(*args: Any, **kwargs: Any) -> Any:
            lead, rest = (args[:1], args[1:]) if passes else ((), args)
            rest = tuple(self._materialized(a) for a in rest)
            self.fits(weight(rest, self.limit) + weight(kwargs, self.limit), what)
            if name in SIZED_FILTERS:  # the value itself may be any number
                self._check_sizes(rest[1:], kwargs, what)
            self._check_filter(name, rest, kwargs)
            return self.check(f(*lead, *rest, **kwargs), what)

        return bounded

    def _check_filter(self, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        """Filters whose output a parameter sizes, estimated before they run."""

        def arg(i: int, key: str, default: Any) -> Any:
            return args[i] if len(args) > i else kwargs.get(key, default)

        value = args[0] if args else None
        text = value if isinstance(value, str) else None
        if name == "replace" and text is not None:
            old, new = arg(1, "old", ""), arg(2, "new", "")
            if isinstance(old, str) and isinstance(new, str):
                self._check_replace(text, old, new, arg(3, "count", None))
        elif name == "join" and isinstance(value, list | tuple):
            self.fits(weight(value, self.limit) + weight(arg(1, "d", ""), self.limit) * len(value), "filter 'join'")
        elif name == "format" and text is not None:
            self._check_printf(text, kwargs or args[1:])
        elif name == "indent" and text is not None:
            width = arg(1, "width", 4)
            size = width if _is_int(width) else weight(width, self.limit)
            self.fits(len(text) + (text.count("\n") + 1) * size, "filter 'indent'")
        elif name == "wordwrap" and text is not None:
            width, wrap = arg(1, "width", 79), arg(3, "wrapstring", None)
            lines = len(text) // width + text.count("\n") + 1 if _is_int(width) and width > 0 else len(text) + 1
            self.fits(len(text) + lines * (weight(wrap, self.limit) if wrap is not None else 1), "filter 'wordwrap'")
        elif name == "urlize" and text is not None:
            extra = weight(arg(3, "target", None), self.limit) + weight(arg(4, "rel", None), self.limit)
            self.fits(len(text) * (2 + extra), "filter 'urlize'")
        elif name == "tojson":
            indent = arg(1, "indent", None)
            if indent is not None and weight(indent, self.limit) > 64:
                raise _Limit(f"tojson with an indent of {indent!r:.20}")
        elif name == "sum" and isinstance(value, list | tuple) and any(isinstance(v, list | tuple) for v in value):
            self.fits(len(value) * weight(value, self.limit), "filter 'sum' of sequences")


@contextmanager
def deadline(seconds: float) -> Iterator[None]:
    """Raise _Timeout in this thread once ``seconds`` have passed, wherever it is in Python
    code; a timeout that fires as the block ends is withdrawn, never raised later."""
    tid = ctypes.c_ulong(threading.get_ident())
    lock = threading.Lock()
    state = {"done": False, "fired": False}

    def fire() -> None:
        with lock:
            if not state["done"]:
                state["fired"] = True
                ctypes.pythonapi.PyThreadState_SetAsyncExc(tid, ctypes.py_object(_Timeout))

    timer = threading.Timer(seconds, fire)
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        with lock:
            state["done"] = True
            if state["fired"]:  # fired but perhaps not yet raised: withdraw it
                ctypes.pythonapi.PyThreadState_SetAsyncExc(tid, None)
        timer.cancel()


def render_bounded(
    source: str, variables: dict[str, Any], globals_: dict[str, Any], limit: int, seconds: float, **options: Any
) -> str:
    """Render ``source`` with ``variables`` in a BoundedSandbox: at most ``limit`` characters
    of output and per value (``KEPT_FACTOR`` × that kept in buffers and output together), at most
    ``seconds`` of work; RenderError otherwise."""
    if len(source) > MAX_SOURCE:
        raise RenderError(f"the template is {len(source)} characters; at most {MAX_SOURCE} are compiled")
    try:
        with deadline(seconds):
            env = BoundedSandbox(limit, **options)
            env.globals.update(globals_)
            out, written = [], 0
            for piece in env.from_string(source).generate(**variables):
                env.keep(len(piece))
                written += len(piece)
                if written > limit:
                    raise _Limit(f"its output would pass {limit} characters")
                out.append(piece)
            return "".join(out)
    except _Timeout:
        raise RenderError(f"it ran for more than {seconds:g} s") from None
    except _Limit as e:
        raise RenderError(f"it went past a limit: {e}") from None
    except TemplateError as e:
        raise RenderError(str(e) or type(e).__name__) from None
    except RecursionError:
        raise RenderError("it recursed too deep") from None
    except MemoryError:
        raise RenderError("it ran out of memory") from None
    except Exception as e:  # the template's own errors: TypeError, ValueError, ZeroDivisionError...
        raise RenderError(f"{type(e).__name__}: {e}"[:300]) from None
