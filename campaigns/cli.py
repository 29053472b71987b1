"""Commands of this package, registered on the ``activation`` app:
``templates check``, ``templates preview``, ``plan`` and ``campaigns export``.

Settings, the warehouse and the campaign logic (pydantic, SQLAlchemy, Jinja) are imported inside each
command, so ``activation --help`` does not load them.
"""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from activation import console
from activation.dates import parse_date
from activation.display import add_columns


def _mde_text(metric: str, mde: float | None) -> str:
    if mde is None:
        return "n/a"
    return f"{mde * 100:.1f}pp" if metric == "conversion" else f"{mde:,.2f}/member"


templates_app = typer.Typer(
    help="Check and preview the email templates and the offer policy.", no_args_is_help=True
)
campaigns_app = typer.Typer(help="Planned campaigns.", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    """Add this package's commands to ``app``."""
    app.add_typer(templates_app, name="templates")
    app.add_typer(campaigns_app, name="campaigns")
    app.command("plan")(plan)


@templates_app.command("check")
def templates_check(
    scheme: str | None = typer.Option(None, "--scheme", help="Only check this scheme's policy entries."),
) -> None:
    """Lint every template and the policy; print file:line: message; exit 1 on any error."""
    from activation.settings import get_settings
    from campaigns.lint import check_templates, template_names

    settings = get_settings()
    issues = check_templates(settings, scheme=scheme)
    for issue in issues:
        console.out.print(str(issue), highlight=False, soft_wrap=True, markup=False)
    if issues:
        console.out.print(f"{len(issues)} problem(s) found", highlight=False)
        raise typer.Exit(console.EXIT_PROBLEMS)
    console.out.print(
        f"ok: {len(template_names(settings))} templates and {settings.policy_file.name} checked",
        highlight=False,
    )


@templates_app.command("preview")
def templates_preview(
    out: Path = typer.Option(..., "--out", help="Folder to write the previews and index.html into."),
    scheme: str | None = typer.Option(None, "--scheme", help="Scheme (default: the default scheme)."),
    segment: str | None = typer.Option(None, "--segment", help="Only this segment."),
) -> None:
    """Render one email per segment for a sample customer, plus OUT/index.html linking them."""
    from activation.settings import get_settings
    from activation.warehouse import engine_if_exists
    from campaigns.preview import write_previews

    settings = get_settings()
    items = write_previews(settings, out, engine=engine_if_exists(settings), scheme=scheme, segment=segment)
    failed = [i for i in items if i.error]
    for it in items:
        status = "FAILED" if it.error else (it.file or "suppressed")
        console.out.print(f"{it.segment}: {status}  {it.subject}", highlight=False, markup=False)
    for it in failed:
        console.err.print(f"{it.segment}: {it.error}", highlight=False, markup=False)
    console.out.print(f"index: {out / 'index.html'}", highlight=False)
    if failed:
        raise typer.Exit(console.EXIT_PROBLEMS)


def plan(
    as_of: str = typer.Option(..., "--as-of", help="Snapshot date YYYY-MM-DD."),
    scheme: str | None = typer.Option(None, "--scheme", help="Scheme (default: the default scheme)."),
    as_json: bool = console.JSON_OPTION,
) -> None:
    """Plan one campaign per active segment: holdout split, coupons, template version."""
    from activation.settings import get_settings
    from activation.warehouse import get_engine
    from campaigns.plan import plan_campaigns

    day = parse_date(as_of, "--as-of")
    settings = get_settings()
    scheme_name = scheme or settings.default_scheme
    result = plan_campaigns(get_engine(settings, create=False), settings, day, scheme_name)
    if as_json:
        console.print_json(
            "plan", {"as_of": result.as_of, "scheme": result.scheme, "segments": result.segments}
        )
        return
    table = Table(title=f"{scheme_name} campaigns as of {as_of}")
    cells, reasons = [], []
    methods: dict[str, list[str]] = {}
    for sp in result.segments:
        version = sp.campaign_id.rsplit("-", 1)[-1] if sp.campaign_id else ""
        if sp.excluded:
            reasons.append(
                f"{sp.segment}: " + ", ".join(f"{k.replace('_', ' ')} {v:,}" for k, v in sp.excluded.items())
            )
        cells.append(
            [
                sp.segment,
                f"{sp.status} {version}".strip(),
                f"{sp.treated:,}",
                f"{sp.holdout:,}" + (f" ({sp.holdout_share:.0%})" if sp.status != "suppressed" else ""),
                f"{sum(sp.excluded.values()):,}",
                sp.offer,
            ]
        )
        if sp.holdout_method:
            methods.setdefault(sp.holdout_method, []).append(
                f"{sp.segment} {_mde_text(sp.mde_metric, sp.holdout_mde)}"
            )
    add_columns(
        table,
        ("segment", "status", "treated", "holdout", "excluded", "offer"),
        cells,
        left=(0, 1, 5),
        wrap=(0, 1, 5),
        grow=5,
    )
    for row in cells:
        table.add_row(*row)
    console.print_table(table)
    if reasons:
        console.out.print("excluded: " + "; ".join(reasons), highlight=False)
    if methods:
        console.out.print(
            "MDE, the smallest lift each holdout (share) detects at 95 % with 80 % power unless the "
            "policy's target says otherwise: "
            + "; ".join(f"{', '.join(segs)} ({how})" for how, segs in methods.items()),
            highlight=False,
        )
    ids = [sp.campaign_id for sp in result.segments if sp.campaign_id]
    if ids:
        console.out.print(
            f"one campaign per segment, with ids like {ids[0]}; `activation campaigns export` "
            "lists their members",
            highlight=False,
        )


@campaigns_app.command("export")
def campaigns_export(
    as_of: str = typer.Option(..., "--as-of", help="Snapshot date YYYY-MM-DD."),
    out: Path = typer.Option(..., "--out", help="CSV file to write."),
    scheme: str | None = typer.Option(None, "--scheme", help="Scheme (default: the default scheme)."),
) -> None:
    """Write the current campaigns' members as CSV
    (campaign_id, segment, customer_id, group, offer, coupon_code, template_version)."""
    from activation.settings import get_settings
    from activation.warehouse import get_engine
    from campaigns.plan import export_campaigns

    day = parse_date(as_of, "--as-of")
    settings = get_settings()
    n = export_campaigns(get_engine(settings, create=False), day, scheme or settings.default_scheme, out)
    console.out.print(f"wrote {n:,} rows to {out}", highlight=False)
