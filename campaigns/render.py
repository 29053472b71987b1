"""Sandboxed rendering of marketer-edited templates, in two modes.

* **merge-tag mode** (:func:`render_merge_tags`): per-member values become Mailchimp merge tags
  (``*|FNAME|*``, ``*|COUPON|*`` …, see :data:`MERGE_FIELDS`), the unsubscribe link becomes ``*|UNSUB|*``;
  one render serves a whole segment.
* **per-member mode** (:func:`render_member`): the real values of one member, for the local outbox and previews.

Templates are untrusted input. They render in an :class:`~jinja2.sandbox.ImmutableSandboxedEnvironment` with
autoescape for HTML and :class:`~jinja2.StrictUndefined`, plus guards against templates that would take the
service down: every loop iteration, call and attribute access spends from a time budget (``max_seconds``);
output is capped (``max_output_bytes``); string/list repetition, concatenation, padding, ``replace``/``join``,
format widths and ``range`` are capped before they allocate; lists, tuples and dicts a template builds (literals,
operators, filters) are weighed by the characters they would print as, so one big string shared by many items
cannot be joined or printed into gigabytes; ``|safe`` and ``{% autoescape false %}`` are
rejected when the template is parsed. Any failure raises :class:`RenderError` (a ``TemplateError``) naming
the file and line, and nothing is returned.
"""

from __future__ import annotations

import contextvars
import hashlib
import html as html_lib
import json
import re
import string
import time
import traceback
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import date
from functools import lru_cache, update_wrapper
from pathlib import Path
from typing import Any, TypeVar

from jinja2 import FileSystemLoader, StrictUndefined, TemplateNotFound, TemplateSyntaxError, meta, nodes
from jinja2.exceptions import SecurityError, UndefinedError
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.utils import Cycler, Namespace
from jinja2.visitor import NodeTransformer

from activation.emails import RenderedEmail as RenderedEmail  # re-exported: what a render returns
from activation.emails import unsubscribe_url
from activation.errors import TemplateError
from activation.settings import Settings
from campaigns.offers import parse_offer

# ------------------------------------------------------------------------------------------ the contract

#: Merge fields this service fills per member (tag -> description). The Mailchimp destination creates them;
#: ``templates check`` fails on any other merge tag (except Mailchimp's own, :data:`SYSTEM_MERGE_TAGS`).
MERGE_FIELDS: dict[str, dict[str, str]] = {
    "FNAME": {"name": "First name", "type": "text", "context": "first_name", "default": "there"},
    "COUPON": {"name": "Coupon code", "type": "text", "context": "coupon_code", "default": ""},
    "SEGMENT": {"name": "Segment", "type": "text", "context": "segment", "default": ""},
    "OFFER": {"name": "Offer", "type": "text", "context": "offer.description", "default": ""},
    "EXPIRES": {"name": "Offer expires on", "type": "text", "context": "offer.expires_on", "default": ""},
}

#: Merge tags Mailchimp provides itself (no merge field needed).
SYSTEM_MERGE_TAGS = frozenset(
    {
        "UNSUB",
        "EMAIL",
        "UPDATE_PROFILE",
        "ARCHIVE",
        "LIST:ADDRESS",
        "LIST:ADDRESSLINE",
        "LIST:COMPANY",
        "LIST:NAME",
        "LIST:DESCRIPTION",
        "CURRENT_YEAR",
        "DATE:Y",
        "MC:SUBJECT",
        "MC_PREVIEW_TEXT",
        "REWARDS",
    }
)

MERGE_TAG_RE = re.compile(r"\*\|([A-Za-z0-9_:]+)\|\*")

#: Every variable a template may use (documented in docs/templates.md).
CONTEXT_VARIABLES: dict[str, str] = {
    "first_name": "the member's first name; 'there' when unknown (merge tag *|FNAME|*)",
    "coupon_code": "the member's personal coupon code; '' for offers without a coupon (*|COUPON|*)",
    "segment": "the segment name, e.g. 'At Risk' (*|SEGMENT|*)",
    "offer": "the offer: type, description (*|OFFER|*), percent, expiry_days, expires_on (*|EXPIRES|*), "
    "early_access_days, early_access_until",
    "brand": "sender settings: name, from_name, from_email, postal_address, website_url, currency",
    "unsubscribe_url": "the member's own one-click unsubscribe link (*|UNSUB|* in Mailchimp); every email "
    "must contain it",
    "campaign_id": "the campaign id, e.g. rfm11-2025q4-champions-v1",
    "scheme": "the segmentation scheme, e.g. rfm11",
    "as_of": "the snapshot date (YYYY-MM-DD)",
}

# Names Jinja itself provides in templates (not context variables).
_JINJA_NAMES = frozenset(
    {"range", "dict", "cycler", "joiner", "namespace", "loop", "caller", "varargs", "kwargs", "self", "super"}
)


@dataclass(frozen=True)
class RenderLimits:
    """Per-render limits; a template that exceeds one fails alone with a clear message."""

    max_output_bytes: int = 512 * 1024
    max_seconds: float = 2.0
    max_range: int = 10_000
    max_string: int = 1_000_000  # longest string/list a template may build


DEFAULT_LIMITS = RenderLimits()


class RenderError(TemplateError):
    """A template failed to parse, broke a sandbox rule, exceeded a limit or referenced something undefined."""

    def __init__(
        self,
        message: str,
        *,
        file: str | None = None,
        line: int | None = None,
        reason: str = "error",
        fix: str | None = None,
    ) -> None:
        where = f"{file}:{line}: " if file and line else (f"{file}: " if file else "")
        super().__init__(f"{where}{message}", fix=fix)
        self.file = file
        self.line = line
        self.reason = reason
        self.detail = message


class _LimitExceeded(SecurityError):
    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


# ------------------------------------------------------------------------------------------ the sandbox


@dataclass
class _Budget:
    deadline: float
    limits: RenderLimits

    def tick(self) -> None:
        if time.monotonic() > self.deadline:
            raise _LimitExceeded(
                f"render took longer than {self.limits.max_seconds:g} s (endless or very long loop?)",
                "timeout",
            )


_BUDGET: contextvars.ContextVar[_Budget | None] = contextvars.ContextVar("render_budget", default=None)
_WIDTH_RE = re.compile(r"\d{5,}")
_STR_WIDTH_METHODS = frozenset({"center", "ljust", "rjust", "zfill", "expandtabs"})
_STAR_WIDTH_RE = re.compile(r"%[#0 +\-]*(\*|\d*\.\*)")
_TEXT = (str, bytes, bytearray)
_CONTAINERS = (list, tuple, set, frozenset, dict, range, Namespace, Cycler)
_T = TypeVar("_T")


def _tick() -> None:
    budget = _BUDGET.get()
    if budget is not None:
        budget.tick()


def _limits() -> RenderLimits:
    budget = _BUDGET.get()
    return budget.limits if budget is not None else DEFAULT_LIMITS


def _weight(value: Any, limit: int) -> int:
    """About how many characters ``value`` prints or joins as: a string its length; a list, tuple, dict or
    namespace one per item plus the weight of every item (an item shared twice counts twice); anything else 1.
    Stops counting once over ``limit``, so weighing never costs more than ``limit`` steps."""
    total, stack, steps = 0, [value], 0
    while stack and total <= limit:
        v = stack.pop()
        steps += 1
        if steps % 4096 == 0:
            _tick()
        if isinstance(v, _TEXT):
            total += len(v)
        elif isinstance(v, dict):
            total += len(v)
            stack.extend(v.keys())
            stack.extend(v.values())
        elif isinstance(v, range):
            total += len(v)
        elif isinstance(v, Namespace):
            stack.append(object.__getattribute__(v, "_Namespace__attrs"))
        elif isinstance(v, Cycler):
            stack.append(v.items)
        elif isinstance(v, list | tuple | set | frozenset):
            total += len(v)
            stack.extend(v)
        else:
            total += 1
    return total


def _check_size(value: _T, what: str) -> _T:
    limit = _limits().max_string
    if isinstance(value, _TEXT):
        if len(value) > limit:
            raise _LimitExceeded(
                f"{what} builds a value of {len(value):,} items, over the {limit:,} limit", "size"
            )
    elif isinstance(value, _CONTAINERS) and _weight(value, limit) > limit:
        raise _LimitExceeded(
            f"{what} builds a list or mapping of more than {limit:,} characters and items "
            "(a big value repeated many times?)",
            "size",
        )
    return value


def _check_repeat(times: int, size: int, what: str) -> None:
    """Refuse an operation that writes ``size`` characters ``times`` times, before it allocates."""
    if times * size > _limits().max_string:
        raise _LimitExceeded(
            f"{what} would repeat {size:,} characters {times:,} times, over the "
            f"{_limits().max_string:,} limit",
            "size",
        )


def _tallied(items: Any, what: str) -> Iterator[Any]:
    """The items of a generator a filter returned (``map``, ``batch`` …), refused once they weigh too much."""
    limit = _limits().max_string
    total = 0
    for item in items:
        total += 1 + _weight(item, limit)
        if total > limit:
            raise _LimitExceeded(f"{what} yields more than {limit:,} characters and items", "size")
        yield item


def _check_width(n: Any, what: str) -> None:
    if isinstance(n, int) and not isinstance(n, bool) and abs(n) > _limits().max_string:
        raise _LimitExceeded(f"{what} with {n:,} is over the {_limits().max_string:,} limit", "size")


def _check_format(fmt: Any, args: Any = ()) -> None:
    """Refuse a ``%`` / ``str.format`` / ``|format`` call that would build a huge string: wide fixed widths,
    widths taken from an argument (``%*d``, ``{:{}}``), or many fields repeating a big argument."""
    if not isinstance(fmt, str):
        return
    if _WIDTH_RE.search(fmt):
        raise _LimitExceeded("format widths/precisions of 5 digits or more are not allowed", "size")
    if "*" in fmt and _STAR_WIDTH_RE.search(fmt):
        raise _LimitExceeded("format widths taken from an argument (%*d) are not allowed", "size")
    if "{" in fmt:
        try:
            nested = any(spec and "{" in spec for _, _, spec, _ in string.Formatter().parse(fmt))
        except ValueError:
            nested = False  # malformed: the call itself fails with a clear error
        if nested:
            raise _LimitExceeded("format widths taken from an argument ({:{}}) are not allowed", "size")
    fields = fmt.count("%") + fmt.count("{")
    if fields:
        values = list(args.values()) if isinstance(args, Mapping) else list(args)
        limit = _limits().max_string
        biggest = max((_weight(v, limit) for v in values), default=0)
        _check_repeat(fields, biggest, "formatting")


def _guarded_iter(value: Any) -> Iterator[Any]:
    budget = _BUDGET.get()
    for item in value:
        if budget is not None:
            budget.tick()
        yield item


def _cap(value: Any) -> Any:
    _tick()
    return _check_size(value, "string concatenation" if isinstance(value, str) else "a literal")


def _forbid_safe(value: Any, *args: Any, **kwargs: Any) -> Any:
    raise SecurityError("the |safe filter is not allowed: it would bypass HTML escaping")


def _no_check(*args: Any, **kwargs: Any) -> None:
    return None


def _wrap_filter(env: ImmutableSandboxedEnvironment, name: str, check: Callable[..., None]) -> None:
    """Guard a filter: ``check`` sees the filter's own arguments (without Jinja's context/environment argument)
    before it runs; its result is size-checked, and a generator result is weighed item by item."""
    original = env.filters[name]
    skip = 1 if getattr(original, "jinja_pass_arg", None) is not None else 0

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        _tick()
        check(*args[skip:], **kwargs)
        result = original(*args, **kwargs)
        if isinstance(result, Iterator) and not isinstance(result, _TEXT):
            return _tallied(result, f"|{name}")
        return _check_size(result, f"|{name}")

    guarded = update_wrapper(wrapper, original)
    guarded.guarded = True  # type: ignore[attr-defined]
    env.filters[name] = guarded


def _arg(args: tuple[Any, ...], kwargs: dict[str, Any], index: int, name: str) -> Any:
    return args[index] if len(args) > index else kwargs.get(name)


class _CapLiterals(NodeTransformer):
    """Size-check every list, tuple and dict literal a template builds (``[ns.l, ns.l]`` in a loop would
    otherwise double a value until printing it takes forever)."""

    def visit_List(self, node: nodes.Expr) -> nodes.Node:
        self.generic_visit(node)
        return nodes.Filter(node, "_cap", [], [], None, None, lineno=node.lineno)

    visit_Dict = visit_List

    def visit_Tuple(self, node: nodes.Tuple) -> nodes.Node:
        if node.ctx != "load":  # an assignment target such as {% for k, v in … %}
            return self.generic_visit(node)
        return self.visit_List(node)


class _GuardedEnvironment(ImmutableSandboxedEnvironment):
    intercepted_binops = frozenset({"*", "**", "%", "+", "//"})

    def __init__(self, templates_dir: Path, *, autoescape: bool) -> None:
        super().__init__(
            loader=FileSystemLoader(str(templates_dir)),
            autoescape=autoescape,
            undefined=StrictUndefined,
            keep_trailing_newline=True,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self.globals.pop("lipsum", None)
        self.globals["range"] = self._range
        self.filters["safe"] = _forbid_safe
        self.filters["_guarded_iter"] = _guarded_iter
        self.filters["_cap"] = _cap
        self.filters.pop("random", None)  # renders must be reproducible
        _wrap_filter(self, "center", lambda v, width=80: _check_width(width, "|center"))
        _wrap_filter(
            self,
            "indent",
            lambda v, width=4, *a, **k: _check_repeat(
                str(v).count("\n") + 1, width if isinstance(width, int) else len(str(width)), "|indent"
            ),
        )
        _wrap_filter(self, "format", lambda v, *a, **k: _check_format(v, k or a))
        _wrap_filter(self, "batch", lambda v, linecount, *a, **k: _check_width(linecount, "|batch"))
        _wrap_filter(self, "slice", lambda v, slices, *a, **k: _check_width(slices, "|slice"))
        _wrap_filter(self, "truncate", lambda *a, **k: None)
        _wrap_filter(
            self,
            "wordwrap",
            lambda v, width=79, brk=True, wrapstring=None, *a, **k: _check_repeat(
                len(str(v)) + 1, len(str(wrapstring or "\n")), "|wordwrap"
            ),
        )
        _wrap_filter(
            self,
            "urlize",
            lambda v, trim=None, nofollow=False, target=None, rel=None, *a, **k: _check_repeat(
                len(str(v)) + 1, len(str(target or "")) + len(str(rel or "")), "|urlize"
            ),
        )
        _wrap_filter(
            self,
            "tojson",
            lambda v, indent=None: _check_repeat(
                _weight(v, _limits().max_string) + 1, indent if isinstance(indent, int) else 0, "|tojson"
            ),
        )
        _wrap_filter(self, "replace", self._check_replace)
        _wrap_filter(self, "join", self._check_join)
        for name in list(self.filters):  # every other filter: result size-checked, generators weighed
            if (
                not name.startswith("_")
                and name != "safe"
                and not getattr(self.filters[name], "guarded", False)
            ):
                _wrap_filter(self, name, _no_check)

    # -- parse-time rules ------------------------------------------------------------------------------
    def _parse(self, source: str, name: str | None, filename: str | None) -> nodes.Template:
        tree = super()._parse(source, name, filename)
        for node in tree.find_all((nodes.EvalContextModifier, nodes.Filter, nodes.For, nodes.AssignBlock)):
            if isinstance(node, nodes.EvalContextModifier):
                raise TemplateSyntaxError(
                    "{% autoescape %} blocks are not allowed: escaping is always on",
                    node.lineno,
                    name,
                    filename,
                )
            if isinstance(node, nodes.Filter) and node.name == "safe":
                raise TemplateSyntaxError(
                    "the |safe filter is not allowed: it would bypass HTML escaping",
                    node.lineno,
                    name,
                    filename,
                )
            if isinstance(node, nodes.For):
                node.iter = nodes.Filter(node.iter, "_guarded_iter", [], [], None, None, lineno=node.lineno)
            if isinstance(node, nodes.AssignBlock):
                cap = nodes.Filter(None, "_cap", [], [], None, None, lineno=node.lineno)
                if node.filter is None:
                    node.filter = cap
                else:
                    inner = node.filter
                    while isinstance(inner.node, nodes.Filter):
                        inner = inner.node
                    inner.node = cap
        for concat in list(tree.find_all(nodes.Concat)):
            parent_fix = nodes.Concat(concat.nodes, lineno=concat.lineno)
            concat.nodes = [nodes.Filter(parent_fix, "_cap", [], [], None, None, lineno=concat.lineno)]
        _CapLiterals().visit(tree)
        return tree

    # -- run-time guards -------------------------------------------------------------------------------
    def _range(self, *args: int) -> range:
        _tick()
        rng = range(*args)
        if len(rng) > _limits().max_range:
            raise _LimitExceeded(
                f"range() of {len(rng):,} items is over the {_limits().max_range:,} limit", "size"
            )
        return rng

    @staticmethod
    def _check_replace(s: Any, old: Any, new: Any, count: Any = None) -> None:
        s, old, new = str(s), str(old), str(new)
        n = s.count(old) if old else len(s) + 1
        if count is not None and isinstance(count, int):
            n = min(n, count)
        if len(s) + n * max(len(new) - len(old), 0) > _limits().max_string:
            raise _LimitExceeded("|replace would build a string over the size limit", "size")

    @staticmethod
    def _check_join(value: Any, d: Any = "", attribute: Any = None) -> None:
        if isinstance(value, str | list | tuple | range) and len(value) * len(str(d)) > _limits().max_string:
            raise _LimitExceeded("|join would build a string over the size limit", "size")

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        _tick()
        if operator == "**":
            if isinstance(right, int | float) and abs(right) > 256:
                raise _LimitExceeded("exponents above 256 are not allowed", "size")
        elif operator == "*":
            for seq, n in ((left, right), (right, left)):
                if isinstance(seq, (*_TEXT, list, tuple)) and isinstance(n, int) and not isinstance(n, bool):
                    size = len(seq) if isinstance(seq, _TEXT) else _weight(seq, _limits().max_string)
                    if size * n > _limits().max_string:
                        raise _LimitExceeded("repetition builds a value over the size limit", "size")
            if (
                isinstance(left, int)
                and isinstance(right, int)
                and left.bit_length() + right.bit_length() > 4096
            ):
                raise _LimitExceeded("integer too large", "size")
        elif operator == "%" and isinstance(left, str):
            _check_format(left, right if isinstance(right, tuple | Mapping) else (right,))
        result = super().call_binop(context, operator, left, right)
        return _check_size(result, f"operator {operator}")

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        _tick()
        owner = getattr(__obj, "__self__", None)
        name = getattr(__obj, "__name__", "")
        if isinstance(owner, _TEXT):
            if name in _STR_WIDTH_METHODS:
                for a in (*args, *kwargs.values()):
                    _check_width(a, f"str.{name}")
            elif name == "replace" and len(args) >= 2:
                _GuardedEnvironment._check_replace(
                    owner, args[0], args[1], args[2] if len(args) > 2 else None
                )
            elif name == "join" and args:
                seq = args[0]
                if (
                    isinstance(seq, (*_TEXT, list, tuple, range))
                    and len(seq) * len(owner) > _limits().max_string
                ):
                    raise _LimitExceeded("str.join would build a string over the size limit", "size")
            elif name == "translate" and args and isinstance(args[0], Mapping):
                biggest = max((_weight(v, _limits().max_string) for v in args[0].values()), default=0)
                _check_repeat(len(owner), biggest, "str.translate")
        result = super().call(__context, __obj, *args, **kwargs)
        return _check_size(result, f"{name or 'call'}()")

    def getattr(self, obj: Any, attribute: str) -> Any:
        _tick()
        return super().getattr(obj, attribute)

    def getitem(self, obj: Any, argument: Any) -> Any:
        _tick()
        return super().getitem(obj, argument)

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        wrapped = super().wrap_str_format(value)
        if wrapped is None:
            return None
        fmt = value.__self__

        def checked(*args: Any, **kwargs: Any) -> str:
            _tick()
            _check_format(fmt, (*args, *kwargs.values()))
            return _check_size(wrapped(*args, **kwargs), "str.format")

        return checked


_ENVS: dict[tuple[str, bool], _GuardedEnvironment] = {}


def environment(settings: Settings, *, html: bool) -> _GuardedEnvironment:
    """The (cached) sandboxed environment of the settings' templates folder; autoescape when ``html``."""
    key = (str(settings.templates_dir), html)
    env = _ENVS.get(key)
    if env is None:
        env = _GuardedEnvironment(Path(settings.templates_dir), autoescape=html)
        _ENVS[key] = env
    return env


# ------------------------------------------------------------------------------------------ errors


def _template_location(exc: BaseException, fallback: str | None) -> tuple[str | None, int | None]:
    if isinstance(exc, TemplateSyntaxError):
        return exc.filename or exc.name or fallback, exc.lineno
    for frame in reversed(traceback.extract_tb(exc.__traceback__)):
        if frame.filename.endswith((".html", ".txt")) or frame.filename == "<template>":
            name = fallback if frame.filename == "<template>" else frame.filename
            return name, frame.lineno
    return fallback, None


def _to_error(exc: BaseException, source: str | None) -> RenderError:
    if isinstance(exc, TemplateNotFound):
        return RenderError(
            f"template {exc.name!r} not found",
            file=source,
            reason="missing",
            fix=f"create {exc.name} in the templates folder, or fix the name in policy.yaml",
        )
    file, line = _template_location(exc, source)
    if isinstance(exc, _LimitExceeded):
        message, reason, fix = f"render limit exceeded: {exc}", exc.reason, _LIMIT_FIX
    else:
        kind = next((k for t, k in _ERROR_KINDS.items() if isinstance(exc, t)), _runtime_error)
        message, reason, fix = kind(exc)
    return RenderError(message, file=file, line=line, reason=reason, fix=fix)


_LIMIT_FIX = "remove the loop or expression that builds so much output"


def _runtime_error(exc: BaseException) -> tuple[str, str, str]:
    return f"render failed: {type(exc).__name__}: {exc}", "runtime", "correct the expression on that line"


# exception type -> (message, reason, fix) of the RenderError it becomes
_ERROR_KINDS: dict[type[BaseException], Callable[[Any], tuple[str, str, str]]] = {
    TemplateSyntaxError: lambda e: (
        f"syntax error: {e.message}",
        "syntax",
        "correct the Jinja syntax on that line",
    ),
    SecurityError: lambda e: (
        f"sandbox violation: {e}",
        "sandbox",
        "templates may only use the documented variables and filters (docs/templates.md)",
    ),
    UndefinedError: lambda e: (
        f"undefined variable: {e.message}",
        "undefined",
        f"use only the documented variables: {', '.join(CONTEXT_VARIABLES)}",
    ),
    RecursionError: lambda e: (
        "recursion too deep (a macro calling itself?)",
        "recursion",
        "remove the recursive macro call",
    ),
}


def _run(fn: Callable[[], str], limits: RenderLimits, source: str | None) -> str:
    token = _BUDGET.set(_Budget(time.monotonic() + limits.max_seconds, limits))
    try:
        return fn()
    except RenderError:
        raise
    except Exception as exc:
        raise _to_error(exc, source) from None
    finally:
        _BUDGET.reset(token)


def _stream(template: Any, context: dict[str, Any], limits: RenderLimits) -> str:
    parts: list[str] = []
    size = 0
    for chunk in template.generate(context):
        size += len(chunk)
        if size > limits.max_output_bytes:
            raise _LimitExceeded(f"output larger than {limits.max_output_bytes // 1024} KB", "output")
        parts.append(chunk)
    return "".join(parts)


def render_template(
    settings: Settings,
    name: str,
    context: dict[str, Any],
    *,
    html: bool,
    limits: RenderLimits = DEFAULT_LIMITS,
) -> str:
    """Render ``templates/<name>`` with the guards above.

    Raises:
        RenderError: parse, sandbox, limit, undefined-variable or runtime failure (file and line named).
    """
    env = environment(settings, html=html)

    def go() -> str:
        return _stream(env.get_template(name), context, limits)

    return _run(go, limits, name)


_SUBJECTS: dict[tuple[str, str], Any] = {}


def render_subject(
    settings: Settings,
    subject: str,
    context: dict[str, Any],
    limits: RenderLimits = DEFAULT_LIMITS,
    source: str = "subject",
) -> str:
    """Render a subject line (a Jinja string from the policy; plain text, one line)."""
    env = environment(settings, html=False)

    def go() -> str:
        key = (str(settings.templates_dir), subject)
        tpl = _SUBJECTS.get(key)
        if tpl is None:
            tpl = env.from_string(subject)
            if len(_SUBJECTS) > 1000:
                _SUBJECTS.clear()
            _SUBJECTS[key] = tpl
        return " ".join(_stream(tpl, context, limits).split())

    return _run(go, limits, source)


# ------------------------------------------------------------------------------------------ context


def _field(obj: Any, name: str, default: Any = None) -> Any:
    if isinstance(obj, Mapping):
        return obj.get(name, default)
    return getattr(obj, name, default)


@lru_cache(maxsize=256)
def _offer_from_json(data: str) -> Any:
    return parse_offer(data)


def _offer_of(campaign: Any) -> Any:
    offer = _field(campaign, "offer")
    if offer is None:
        return _offer_from_json('{"type": "none"}')
    if hasattr(offer, "variables"):
        return offer
    if isinstance(offer, str):
        return _offer_from_json(offer)
    return parse_offer(offer if isinstance(offer, dict) else json.loads(offer))


def _as_of(campaign: Any) -> date:
    value = _field(campaign, "as_of")
    if isinstance(value, date):
        return value
    return date.fromisoformat(str(value))


def brand_context(settings: Settings) -> dict[str, Any]:
    b = settings.brand
    return {
        "name": b.name,
        "from_name": b.from_name,
        "from_email": b.from_email,
        "reply_to": b.reply_to or "",
        "postal_address": b.postal_address,
        "website_url": b.website_url,
        "currency": b.currency,
    }


def build_context(settings: Settings, campaign: Any, member: Any | None) -> dict[str, Any]:
    """The documented template context (:data:`CONTEXT_VARIABLES`); merge tags when ``member`` is None."""
    offer = _offer_of(campaign)
    as_of = _as_of(campaign)
    offer_vars = offer.variables(as_of)
    ctx: dict[str, Any] = {
        "segment": str(_field(campaign, "segment", "")),
        "brand": brand_context(settings),
        "campaign_id": str(_field(campaign, "campaign_id", "")),
        "scheme": str(_field(campaign, "scheme", "")),
        "as_of": as_of.isoformat(),
    }
    if member is None:
        ctx["first_name"] = "*|FNAME|*"
        ctx["coupon_code"] = "*|COUPON|*" if offer.has_coupon else ""
        ctx["segment"] = "*|SEGMENT|*"
        offer_vars["description"] = "*|OFFER|*"
        if offer_vars.get("expires_on"):
            offer_vars["expires_on"] = "*|EXPIRES|*"
        ctx["unsubscribe_url"] = "*|UNSUB|*"
    else:
        first = _field(member, "first_name")
        ctx["first_name"] = (
            str(first).strip() if first and str(first).strip() else MERGE_FIELDS["FNAME"]["default"]
        )
        code = _field(member, "coupon_code")
        ctx["coupon_code"] = str(code) if code and offer.has_coupon else ""
        # the member's own one-click link, the one the List-Unsubscribe header carries
        ctx["unsubscribe_url"] = member_unsubscribe_url(settings, campaign, member)
    ctx["offer"] = offer_vars
    return ctx


def merge_values(campaign: Any, member: Any) -> dict[str, str]:
    """The per-member values of :data:`MERGE_FIELDS` (what a destination stores for ``member``)."""
    offer = _offer_of(campaign)
    offer_vars = offer.variables(_as_of(campaign))
    first = _field(member, "first_name")
    code = _field(member, "coupon_code")
    return {
        "FNAME": str(first).strip() if first else "",
        "COUPON": str(code) if code and offer.has_coupon else "",
        "SEGMENT": str(_field(campaign, "segment", "")),
        "OFFER": offer_vars["description"],
        "EXPIRES": offer_vars.get("expires_on") or "",
    }


# ------------------------------------------------------------------------------------------ compliance

#: The made-up member that checks render per-member mode with (templates check, plan, a sync's pre-flight).
SAMPLE_MEMBER = {
    "customer_id": "sample",
    "email": "alex@example.com",
    "first_name": "Alex",
    "coupon_code": "WB-ABCDE-FGHJK",
}


def compliance_problems(
    settings: Settings, rendered: RenderedEmail, unsubscribe: str
) -> list[tuple[str, str, str]]:
    """What the law requires of every commercial email (CAN-SPAM; the EU's ePrivacy rules) and ``rendered``
    lacks: the unsubscribe link ``unsubscribe`` and the brand's postal address, in the HTML and in the text
    part. Returns ``(part, message, fix)`` for each gap (``part`` is ``html`` or ``txt``)."""
    out: list[tuple[str, str, str]] = []
    address = settings.brand.postal_address
    for part, body in (("html", rendered.html), ("txt", rendered.text)):
        link = html_lib.escape(unsubscribe) if part == "html" else unsubscribe
        if link not in body and unsubscribe not in body:
            out.append(
                (
                    part,
                    f"no unsubscribe link in the {part} part",
                    "extend the base layout or add {{ unsubscribe_url }}",
                )
            )
        if html_lib.escape(address) not in body and address not in body:
            out.append(
                (
                    part,
                    f"no postal address in the {part} part",
                    "extend the base layout or add {{ brand.postal_address }}",
                )
            )
    return out


def require_compliance(
    settings: Settings, campaign: Any, rendered: RenderedEmail, unsubscribe: str, mode: str
) -> None:
    """Raise :class:`RenderError` (``reason="compliance"``) when :func:`compliance_problems` finds a gap:
    such an email must not be planned, written or sent."""
    problems = compliance_problems(settings, rendered, unsubscribe)
    if problems:
        template = str(_field(campaign, "template"))
        part, message, fix = problems[0]
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise RenderError(
            f"template {template!r} ({mode} mode): {message}{more}; an email without it may not be sent",
            file=f"{template}.{part}",
            reason="compliance",
            fix=f"{fix}; `activation templates check` lists every problem",
        )


def member_unsubscribe_url(settings: Settings, campaign: Any, member: Any) -> str:
    """The link :func:`build_context` gives ``member`` of ``campaign`` as ``unsubscribe_url``."""
    return unsubscribe_url(
        settings.brand.unsubscribe_url, _field(member, "email"), str(_field(campaign, "campaign_id", ""))
    )


# ------------------------------------------------------------------------------------------ hashing

_HASHES: dict[tuple[str, str], tuple[tuple[Any, ...], list[Path], str]] = {}


def _find_template_files(settings: Settings, template: str) -> list[Path]:
    root = Path(settings.templates_dir)
    seen: list[Path] = []
    todo = [f"{template}.html", f"{template}.txt"]
    env = environment(settings, html=False)
    while todo:
        name = todo.pop(0)
        path = root / name
        if path in seen or not path.is_file():
            continue
        seen.append(path)
        try:
            ast = env.parse(path.read_text(encoding="utf-8"), name, str(path))
        except TemplateSyntaxError:
            continue
        todo.extend(ref for ref in meta.find_referenced_templates(ast) if ref)
    return seen


def _stamp(files: list[Path]) -> tuple[Any, ...]:
    out: list[tuple[Any, ...]] = []
    for p in files:
        try:
            st = p.stat()
            out.append((str(p), st.st_mtime_ns, st.st_size))
        except FileNotFoundError:
            out.append((str(p), None, None))
    return tuple(out)


def template_files(settings: Settings, template: str) -> list[Path]:
    """The files a template renders from: its .html and .txt and every layout/include they reference."""
    template_hash(settings, template)
    return list(_HASHES[(str(settings.templates_dir), template)][1])


def template_hash(settings: Settings, template: str) -> str:
    """SHA-256 over the content of every file the template renders from (layouts included).

    Cached per file set; a change to any of the files (mtime or size) recomputes it. Adding an include means
    editing one of the files, so the set is re-discovered then.
    """
    key = (str(settings.templates_dir), template)
    cached = _HASHES.get(key)
    if cached and _stamp(cached[1]) == cached[0] and all(p.is_file() for p in cached[1][:1]):
        return cached[2]
    files = _find_template_files(settings, template)
    h = hashlib.sha256()
    for p in sorted(files):
        h.update(p.name.encode() + b"\0" + p.read_bytes() + b"\0")
    digest = h.hexdigest()
    _HASHES[key] = (_stamp(files), files, digest)
    return digest


# ------------------------------------------------------------------------------------------ public API


def _render(settings: Settings, campaign: Any, member: Any | None, limits: RenderLimits) -> RenderedEmail:
    template = str(_field(campaign, "template"))
    recorded = _field(campaign, "template_hash")
    if recorded:
        current = template_hash(settings, template)
        if current != recorded:
            raise RenderError(
                f"template {template!r} changed since campaign {_field(campaign, 'campaign_id')} was planned",
                file=f"{template}.html",
                reason="changed",
                fix="run `activation plan` again: it creates a new campaign version for the new template",
            )
    ctx = build_context(settings, campaign, member)
    subject = render_subject(settings, str(_field(campaign, "subject")), ctx, limits)
    html = render_template(settings, f"{template}.html", ctx, html=True, limits=limits)
    text = render_template(settings, f"{template}.txt", ctx, html=False, limits=limits)
    return RenderedEmail(subject=subject, html=html, text=text)


def render_merge_tags(
    settings: Settings, campaign: Any, *, limits: RenderLimits = DEFAULT_LIMITS
) -> RenderedEmail:
    """One render for a whole segment, per-member values as Mailchimp merge tags (:data:`MERGE_FIELDS`).

    ``campaign`` is a row of ``campaigns`` (or a mapping with its columns).

    Raises:
        RenderError: the template fails (file:line named), changed since the campaign was planned, or its
            output carries a merge tag no destination fills (e.g. ``*|fname|*`` from ``first_name|lower``).
    """
    rendered = _render(settings, campaign, None, limits)
    for part, body in (("subject", rendered.subject), ("html", rendered.html), ("txt", rendered.text)):
        bad = sorted(
            {t for t in MERGE_TAG_RE.findall(body) if t not in MERGE_FIELDS and t not in SYSTEM_MERGE_TAGS}
        )
        if bad:
            name = _field(campaign, "template")
            raise RenderError(
                f"the merge-tag render of {name!r} ({part}) carries *|{bad[0]}|*, which no destination fills "
                "(a per-member value changed by a filter?)",
                file="subject" if part == "subject" else f"{name}.{part}",
                reason="merge-tag",
                fix="print first_name and coupon_code as they are; `activation templates check` shows the line",
            )
    return rendered


def render_member(
    settings: Settings, campaign: Any, member: Any, *, limits: RenderLimits = DEFAULT_LIMITS
) -> RenderedEmail:
    """The email of one member (``customer_id``, ``email``, ``first_name``, ``coupon_code``) of ``campaign``.

    Raises:
        RenderError: the template fails (file:line named) or changed since the campaign was planned.
    """
    return _render(settings, campaign, member, limits)
