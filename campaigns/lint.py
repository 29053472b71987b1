"""``activation templates check``: everything that can be wrong with the templates and the policy, as
``file:line: message`` issues.

Checks: the policy (YAML, schema, unknown segments/schemes, missing template files); every template's syntax;
variables not in the documented context; sandbox violations (``_``-attributes, ``|attr``, ``|safe``,
``{% autoescape false %}``); merge tags no destination provides; a sample render of every template in both
modes (limits, undefined values, runtime errors); and the CAN-SPAM footer — the unsubscribe link and the
brand's postal address must be in the HTML and the text part. Files starting with ``_`` are layouts and
partials: they are parsed and linted but not rendered on their own.
"""

from __future__ import annotations

from datetime import date
from pathlib import Path
from typing import Any

from jinja2 import TemplateSyntaxError, meta, nodes

from activation.settings import Settings
from campaigns.offers import parse_offer
from campaigns.policy import Policy, PolicyIssue, check_segments, parse_policy
from campaigns.render import (
    _JINJA_NAMES,
    CONTEXT_VARIABLES,
    MERGE_FIELDS,
    MERGE_TAG_RE,
    SAMPLE_MEMBER,
    SYSTEM_MERGE_TAGS,
    RenderError,
    RenderLimits,
    build_context,
    compliance_problems,
    environment,
    member_unsubscribe_url,
    render_member,
    render_merge_tags,
    render_subject,
)

Issue = PolicyIssue
SAMPLE_AS_OF = date(2025, 12, 31)
_SAMPLE_OFFER = {"type": "winback_coupon", "percent": 20, "expiry_days": 30}


def _display(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def template_names(settings: Settings) -> list[str]:
    """Every renderable template (a name with both or either .html/.txt, not a ``_`` layout)."""
    root = Path(settings.templates_dir)
    names = {
        p.relative_to(root).with_suffix("").as_posix()
        for p in root.rglob("*")
        if p.suffix in (".html", ".txt")
    }
    return sorted(n for n in names if not Path(n).name.startswith("_"))


def _lint_source(settings: Settings, path: Path, name: str) -> list[Issue]:
    file = _display(path)
    issues: list[Issue] = []
    source = path.read_text(encoding="utf-8")
    env = environment(settings, html=path.suffix == ".html")
    try:
        ast = env.parse(source, name, str(path))
    except TemplateSyntaxError as exc:
        return [
            Issue(file, exc.lineno, f"syntax error: {exc.message}", "correct the Jinja syntax on that line")
        ]
    allowed = set(CONTEXT_VARIABLES) | _JINJA_NAMES | set(env.globals)
    undeclared = meta.find_undeclared_variables(ast) - allowed
    for node in ast.find_all(nodes.Name):
        if node.ctx == "load" and node.name in undeclared:
            issues.append(
                Issue(
                    file,
                    node.lineno,
                    f"unknown variable {node.name!r}",
                    f"use one of: {', '.join(CONTEXT_VARIABLES)}",
                )
            )
            undeclared.discard(node.name)
    for expr in ast.find_all((nodes.Getattr, nodes.Getitem, nodes.Filter)):
        attr = None
        if isinstance(expr, nodes.Getattr):
            attr = expr.attr
        elif (
            isinstance(expr, nodes.Getitem)
            and isinstance(expr.arg, nodes.Const)
            and isinstance(expr.arg.value, str)
        ):
            attr = expr.arg.value
        elif isinstance(expr, nodes.Filter) and expr.name == "attr":
            issues.append(
                Issue(
                    file,
                    expr.lineno,
                    "sandbox violation: the |attr filter is not allowed",
                    "use dotted names such as offer.percent",
                )
            )
            continue
        if attr and (attr.startswith("_") or attr in {"mro", "func_globals", "gi_frame", "f_globals"}):
            issues.append(
                Issue(
                    file,
                    expr.lineno,
                    f"sandbox violation: attribute {attr!r} is not allowed",
                    "templates may only use the documented variables (docs/templates.md)",
                )
            )
    issues.extend(_member_value_issues(file, ast))
    for lineno, line in enumerate(source.splitlines(), start=1):
        for tag in MERGE_TAG_RE.findall(line):
            if tag.upper() not in MERGE_FIELDS and tag.upper() not in SYSTEM_MERGE_TAGS:
                issues.append(
                    Issue(
                        file,
                        lineno,
                        f"merge tag *|{tag}|* is not provided by any destination",
                        f"use a context variable instead, or one of: {', '.join(MERGE_FIELDS)}",
                    )
                )
    return issues


#: Variables a destination fills per member in merge-tag mode (the template only sees ``*|TAG|*`` then).
_MEMBER_VARIABLES = {MERGE_FIELDS[tag]["context"]: tag for tag in ("FNAME", "COUPON")}
#: Where a per-member variable may stand: printed as it is (alone or joined with ``~``), or tested for being set.
_PLAIN_USE = (
    nodes.Output,
    nodes.Concat,
    nodes.If,
    nodes.CondExpr,
    nodes.Test,
    nodes.Not,
    nodes.And,
    nodes.Or,
)


def _member_value_issues(file: str, ast: nodes.Template) -> list[Issue]:
    """``{{ first_name|title }}``, ``first_name == 'x'``, ``coupon_code[:2]``: per-member values changed or
    compared in the template. In merge-tag mode (Mailchimp) they are the tags ``*|FNAME|*``/``*|COUPON|*``,
    so the change would garble the tag and the comparison would decide for the whole segment."""
    issues: list[Issue] = []

    def walk(node: nodes.Node, parent: nodes.Node | None) -> None:
        if isinstance(node, nodes.Name) and node.ctx == "load" and node.name in _MEMBER_VARIABLES:
            if parent is not None and not isinstance(parent, _PLAIN_USE):
                tag = _MEMBER_VARIABLES[node.name]
                what = f"the |{parent.name} filter" if isinstance(parent, nodes.Filter) else "this expression"
                issues.append(
                    Issue(
                        file,
                        node.lineno,
                        f"{node.name} is used in {what}: in merge-tag mode it is the merge tag *|{tag}|*, "
                        "filled per member by the destination, so it cannot be changed or compared here",
                        f"print it as {{{{ {node.name} }}}} (or test it with {{% if {node.name} %}}); "
                        "store the value the way it should appear",
                    )
                )
        for child in node.iter_child_nodes():
            walk(child, node)

    walk(ast, None)
    return issues


def _footer_issues(settings: Settings, name: str, rendered: Any, mode: str, unsub: str) -> list[Issue]:
    root = Path(settings.templates_dir)
    return [
        Issue(_display(root / f"{name}.{part}"), 1, f"{message} ({mode} mode)", fix)
        for part, message, fix in compliance_problems(settings, rendered, unsub)
    ]


def _render_issues(
    settings: Settings, name: str, campaign: dict[str, Any], limits: RenderLimits
) -> list[Issue]:
    root = Path(settings.templates_dir)
    issues: list[Issue] = []
    for mode in ("merge-tag", "per-member"):
        try:
            if mode == "merge-tag":
                rendered = render_merge_tags(settings, campaign, limits=limits)
                unsub = "*|UNSUB|*"
            else:
                rendered = render_member(settings, campaign, SAMPLE_MEMBER, limits=limits)
                unsub = member_unsubscribe_url(settings, campaign, SAMPLE_MEMBER)
        except RenderError as exc:
            if exc.file == "subject":
                break  # reported at the subject's line of the policy
            file = exc.file
            if file:
                file = _display(Path(file)) if Path(file).is_absolute() else _display(root / file)
            issues.append(Issue(file or _display(root / f"{name}.html"), exc.line, exc.detail, exc.fix))
            break
        issues.extend(_footer_issues(settings, name, rendered, mode, unsub))
    return issues


def check_templates(
    settings: Settings, scheme: str | None = None, limits: RenderLimits | None = None
) -> list[Issue]:
    """Every problem of the policy and the templates, as ``file:line`` issues (empty list = all good)."""
    limits = limits or RenderLimits()
    root = Path(settings.templates_dir)
    policy_file = _display(settings.policy_file)
    policy, policy_issues = parse_policy(settings.policy_file)
    issues = [Issue(policy_file, i.line, i.message, i.fix) for i in policy_issues]
    for path in sorted(p for p in root.rglob("*") if p.suffix in (".html", ".txt")):
        issues.extend(_lint_source(settings, path, path.relative_to(root).as_posix()))
    broken = {i.file for i in issues}
    rendered: set[str] = set()
    if policy is not None:
        schemes = [scheme] if scheme else policy.schemes()
        issues.extend(
            Issue(policy_file, i.line, i.message, i.fix) for i in check_segments(policy, settings, schemes)
        )
        issues.extend(_missing_templates(policy, policy_file, root, scheme))
        issues.extend(_policy_renders(settings, policy, schemes, broken, rendered, limits))
    for name in template_names(settings):
        if name not in rendered and not _files_of(root, name) & broken:
            issues.extend(_lone_template_issues(settings, root, name, limits))
    unique: dict[tuple[str, int | None, str], Issue] = {}
    for i in issues:
        unique.setdefault((i.file, i.line, i.message), i)  # the first of each
    return list(unique.values())


def _files_of(root: Path, template: str) -> set[str]:
    return {_display(root / f"{template}.{e}") for e in ("html", "txt")}


def _missing_templates(policy: Policy, policy_file: str, root: Path, scheme: str | None) -> list[Issue]:
    """A template the policy names without its .html or .txt file, at each line that names it."""
    issues = []
    for template, paths in policy.templates_used().items():
        missing = [ext for ext in ("html", "txt") if not (root / f"{template}.{ext}").is_file()]
        if not missing:
            continue
        for p in paths:
            if p[0] == "schemes" and scheme and p[1] != scheme:
                continue
            issues.append(
                Issue(
                    policy_file,
                    policy.line_of(*p),
                    f"template {template!r} has no {' and no '.join('.' + m for m in missing)} file",
                    f"create {template}.html and {template}.txt, or use an existing template",
                )
            )
    return issues


def _sample_campaign(
    scheme: str, segment: str, template: str, subject: str, offer_json: str
) -> dict[str, Any]:
    return {
        "campaign_id": "sample",
        "scheme": scheme,
        "segment": segment,
        "as_of": SAMPLE_AS_OF,
        "template": template,
        "subject": subject,
        "offer": offer_json,
    }


def _policy_renders(
    settings: Settings,
    policy: Policy,
    schemes: list[str],
    broken: set[str],
    rendered: set[str],
    limits: RenderLimits,
) -> list[Issue]:
    """Each entry's subject rendered, and each template rendered once with each offer it is used with
    (templates already broken are not rendered again); ``rendered`` gets the templates rendered."""
    root = Path(settings.templates_dir)
    policy_file = _display(settings.policy_file)
    issues: list[Issue] = []
    tried: set[str] = set()
    entries: list[tuple[str, str]] = [("", "")]
    for sch in schemes:
        entries += [(sch, seg) for seg in policy.listed_segments(sch)]
    for sch, seg in entries:
        resolved = policy.for_segment(sch or "default", seg or "default")
        if resolved.suppress:
            continue
        campaign = _sample_campaign(
            sch or "sample",
            seg or "Sample",
            resolved.template,
            resolved.subject,
            resolved.offer.model_dump_json(),
        )
        subject_path = ("schemes", sch, seg, "subject") if sch else ("default", "subject")
        try:
            render_subject(
                settings, resolved.subject, build_context(settings, campaign, SAMPLE_MEMBER), limits
            )
        except RenderError as exc:
            issues.append(
                Issue(policy_file, policy.line_of(*subject_path), f"subject: {exc.detail}", exc.fix)
            )
        combo = f"{resolved.template}\0{campaign['offer']}"  # each template with each offer it is used with
        if combo in tried or _files_of(root, resolved.template) & broken:
            continue
        if all((root / f"{resolved.template}.{e}").is_file() for e in ("html", "txt")):
            tried.add(combo)
            rendered.add(resolved.template)
            issues.extend(_render_issues(settings, resolved.template, campaign, limits))
    return issues


def _lone_template_issues(settings: Settings, root: Path, name: str, limits: RenderLimits) -> list[Issue]:
    """A template no policy entry rendered: its missing part, or its render with a sample offer."""
    missing = [ext for ext in ("html", "txt") if not (root / f"{name}.{ext}").is_file()]
    if missing:
        return [
            Issue(
                _display(root / f"{name}.{'txt' if 'html' in missing else 'html'}"),
                1,
                f"template {name!r} has no .{missing[0]} part",
                f"every template needs {name}.html and {name}.txt",
            )
        ]
    campaign = _sample_campaign(
        "sample", "Sample", name, "Sample", parse_offer(_SAMPLE_OFFER).model_dump_json()
    )
    return _render_issues(settings, name, campaign, limits)
