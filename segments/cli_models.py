"""Commands for the model-based schemes: ``activation clv fit``, ``clv show`` and ``clv export``.

The ``kmeans`` and ``clv_tier`` snapshots themselves are made by ``activation segment --scheme …``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import typer
from rich.table import Table

from activation import console
from activation.dates import parse_date

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

    from activation.settings import Settings

clv_app = typer.Typer(help="Predicted customer value: fit, inspect and export models.", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    """Add the ``clv`` command group to ``app``."""
    app.add_typer(clv_app, name="clv")


def _context() -> tuple[Settings, Engine]:
    """The settings and warehouse of a command (imported here, as the models are in each command: the
    ``activation --help`` of every other command does not load them)."""
    from activation.settings import get_settings
    from activation.warehouse import get_engine

    settings = get_settings()
    return settings, get_engine(settings, create=False)


PREDICTORS: tuple[tuple[str, str], ...] = (
    ("model", "project model"),
    ("btyd", "BG/NBD + Gamma-Gamma"),
    ("last_period_spend", "baseline: last period's spend"),
    ("rfm11_segment_mean", "baseline: rfm11 segment mean"),
    ("all_zero", "baseline: 0 for everyone"),
)


def _metrics_table(title: str, metrics: dict[str, Any]) -> Table:
    table = Table(title=title, show_header=True)
    table.add_column("predictor")
    for col in (
        "MAE",
        "RMSE",
        "Spearman",
        "top-decile capture",
        "predicted / actual",
        "buyer AUC",
        "Spearman, buyers",
    ):
        table.add_column(col, justify="right")
    for key, label in PREDICTORS:
        s = metrics[key]
        table.add_row(
            label,
            f"{s['mae']:.2f}",
            f"{s['rmse']:.2f}",
            f"{s['spearman']:.3f}",
            f"{s['top_decile_capture']:.1%}",
            f"{s['total_ratio']:.3f}",
            # a model stored before these two were scored has neither
            f"{s['buyer_auc']:.3f}" if "buyer_auc" in s else "—",
            f"{s['buyers_spearman']:.3f}" if "buyers_spearman" in s else "—",
        )
    return table


def _calibration_tables(cal: dict[str, list[dict[str, Any]]]) -> list[Table]:
    spend = Table(title="calibration by decile of predicted spend (means per customer)", show_header=True)
    for col in (
        "decile",
        "customers",
        "predicted spend",
        "actual spend",
        "predicted orders",
        "actual orders",
    ):
        spend.add_column(col, justify="right")
    for row in cal["by_spend_decile"]:
        spend.add_row(
            str(row["decile"]),
            f"{row['customers']:,}",
            f"{row['predicted_spend']:,.2f}",
            f"{row['actual_spend']:,.2f}",
            f"{row['predicted_orders']:.3f}",
            f"{row['actual_orders']:.3f}",
        )
    buy = Table(title="P(buying in the period) = P(alive) x P(the purchase process fires)", show_header=True)
    for col in ("decile", "customers", "predicted", "share who bought"):
        buy.add_column(col, justify="right")
    for row in cal["p_buy"]:
        buy.add_row(
            str(row["decile"]), f"{row['customers']:,}", f"{row['predicted']:.3f}", f"{row['actual']:.3f}"
        )
    return [spend, buy]


@clv_app.command("fit")
def fit_command(
    train_until: str = typer.Option(
        ..., "--train-until", help="Cut-off T (YYYY-MM-DD): the model sees orders ≤ T."
    ),
    horizon_days: int = typer.Option(90, "--horizon-days", help="Predict spend over the next N days."),
) -> None:
    """Fit the CLV model on data up to T, backtest it on (T, T+N], store it for the clv_tier scheme."""
    from segments.clv import fit_clv

    until = parse_date(train_until, "--train-until")
    settings, engine = _context()
    result = fit_clv(engine, settings, until, horizon_days)
    m = result.metrics
    tr = m["train"]
    console.out.print(
        f"model {result.model_id} ({m['choice']}): trained on {tr['window_days']}-day windows as of "
        f"{', '.join(tr['features_as_of'])} ({tr['rows']} rows), backtest on {m['test_customers']} customers, "
        f"spend in ({m['backtest']['period'][0]}, {m['backtest']['period'][1]}]"
    )
    cv = m["cross_validation"]
    if cv:
        scores = ", ".join(f"{k} {v['rmse']:.2f}" for k, v in cv["scores"].items())
        console.out.print(
            f"chosen on the windows as of {', '.join(cv['validation_as_of'])} (pooled RMSE): {scores}"
        )
    console.out.print(_metrics_table("CLV backtest", m))
    for table in _calibration_tables(m["calibration"]):
        console.out.print(table)
    labels = dict(PREDICTORS)
    verdicts = {**m["against"]}
    if m["choice"] == "btyd":
        verdicts["btyd"] = "kept"
    against = "; ".join(
        f"{labels[b].removeprefix('baseline: ')}: {_VERDICTS[v]}" for b, v in verdicts.items()
    )
    console.out.print(
        f"actual spend {m['actual_total']:,.2f}, expected {m['expected_total']:,.2f}; on RMSE, Spearman "
        f"and top-decile capture against {against}; beats all three: "
        f"{'yes' if result.beats_baselines else 'no'} ({result.seconds:.1f} s)"
    )


def _params(params: dict[str, float]) -> str:
    return ", ".join(f"{k}={v:.4g}" for k, v in params.items())


_VERDICTS = {
    "better": "better",
    "same": "the same scores",
    "kept": "the same model (the validation kept it)",
    "worse": "worse",
    "mixed": "better on some, worse on others",
}


@clv_app.command("show")
def show_command(
    as_of: str | None = typer.Option(None, "--as-of", help="Latest model trained on or before this date."),
    model_id: str | None = typer.Option(None, "--model", help="This stored model (e.g. clv_20250331_90d)."),
) -> None:
    """Print the latest stored CLV model and its backtest."""
    from segments.clv import latest_model

    day = parse_date(as_of, "--as-of")
    _, engine = _context()
    model = latest_model(engine, day, model_id)
    model.load()  # refuses a model this release cannot use, with the fix
    bg = model.params["btyd"]["bgnbd"]["params"]
    gg = model.params["btyd"]["gamma_gamma"]["params"]
    console.out.print(
        f"model {model.model_id} ({model.params['choice']}): train_until {model.train_until}, horizon "
        f"{model.horizon_days} days, {model.params['window_days']}-day feature windows; "
        f"BG/NBD {_params(bg)}; Gamma-Gamma {_params(gg)}"
    )
    seasonal = model.params.get("season")
    if seasonal is not None:
        console.out.print(
            f"predicted orders and P(alive) come from BG/NBD in the shop's seasonal time: "
            f"{_params(seasonal['btyd']['bgnbd']['params'])}"
        )
    console.out.print(_metrics_table("CLV backtest", model.metrics))


@clv_app.command("export")
def export_command(
    as_of: str = typer.Option(..., "--as-of", help="Predict for the customers known on this date."),
    out: str = typer.Option(
        ..., "--out", help="FILE.csv or FILE.parquet (a FILE.<ext>.json names the model)."
    ),
    model_id: str | None = typer.Option(
        None, "--model", help="This stored model (e.g. clv_20250331_90d) instead of the latest by --as-of."
    ),
) -> None:
    """Write predicted orders, spend and P(alive) per customer from the latest model trained by --as-of."""
    from segments.clv import export_predictions

    day = parse_date(as_of, "--as-of")
    settings, engine = _context()
    res = export_predictions(engine, settings, day, out, model_id)
    for warning in res.warnings:
        console.err.print(f"warning: {warning}")
    console.out.print(
        f"{res.customers:,} customers -> {res.path} (model {res.model_id}, next {res.horizon_days} days; "
        f"described in {res.sidecar})"
    )


def model_lines(model: dict[str, Any]) -> list[str]:
    """Human-readable lines for the model recorded with a snapshot (``cutpoints['model']``), printed by
    ``activation segment`` for model-based schemes."""
    kind = model.get("kind")
    if kind == "kmeans":
        how = "fixed in the scheme" if not model.get("candidates") else "chosen by silhouette"
        lines = [f"kmeans: k={model['k']} ({how}), silhouette {model['silhouette']}, {model['algorithm']}"]
        for c in model.get("candidates", []):
            mark = " <- chosen" if c["k"] == model["k"] else ""
            lines.append(f"  k={c['k']}: silhouette {c['silhouette']:.4f}, inertia {c['inertia']:,.1f}{mark}")
        lines.append(
            f"  {'cluster':<8}{'name':<18}{'customers':>11}{'recency (d)':>13}{'frequency':>11}{'monetary':>11}"
            f"   centroid z (r, f, m)"
        )
        for c in model["clusters"]:
            z = ", ".join(f"{v:+.2f}" for v in c["z"])
            lines.append(
                f"  {c['cluster']:<8}{c['name']:<18}{c['customers']:>11,}{c['recency_days']:>13,.1f}"
                f"{c['frequency']:>11,.2f}{c['monetary']:>11,.2f}   ({z})"
            )
        return lines
    if kind == "clv_tier":
        means = ", ".join(f"{k} {v:,.2f}" for k, v in model["expected_mean"].items() if v is not None)
        return [
            f"clv_tier: model {model['model_id']} ({model.get('choice', '')}, train_until {model['train_until']}, horizon "
            f"{model['horizon_days']} days); tier cut-points {model['tier_cutpoints']} on expected spend",
            f"  mean expected spend per tier: {means}",
        ]
    return [f"model {key}: {value}" for key, value in model.items()]
