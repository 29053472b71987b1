"""Commands for the model-based schemes: ``activation clv fit`` (and ``clv show``).

The ``kmeans`` and ``clv_tier`` snapshots themselves are made by ``activation segment --scheme …``.
"""

from __future__ import annotations

from typing import Any

import typer
from rich.table import Table

from activation import console
from activation.dates import parse_date

clv_app = typer.Typer(help="Predicted customer value: fit and inspect models.", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    """Add the ``clv`` command group to ``app``."""
    app.add_typer(clv_app, name="clv")


def _metrics_table(title: str, metrics: dict[str, Any]) -> Table:
    table = Table(title=title, show_header=True)
    table.add_column("predictor")
    for col in ("MAE", "RMSE", "Spearman", "top-decile capture"):
        table.add_column(col, justify="right")
    for key, label in (
        ("model", "model (gradient boosting)"),
        ("last_period_spend", "baseline: last period's spend"),
        ("rfm11_segment_mean", "baseline: rfm11 segment mean"),
    ):
        m = metrics[key]
        table.add_row(
            label,
            f"{m['mae']:.2f}",
            f"{m['rmse']:.2f}",
            f"{m['spearman']:.3f}",
            f"{m['top_decile_capture']:.1%}",
        )
    return table


@clv_app.command("fit")
def fit_command(
    train_until: str = typer.Option(
        ..., "--train-until", help="Cut-off T (YYYY-MM-DD): the model sees orders ≤ T."
    ),
    horizon_days: int = typer.Option(90, "--horizon-days", help="Predict spend over the next N days."),
) -> None:
    """Fit the CLV model on data up to T, backtest it on (T, T+N], store it for the clv_tier scheme."""
    from activation.settings import get_settings
    from activation.warehouse import get_engine
    from segments.clv import fit_clv

    until = parse_date(train_until, "--train-until")
    settings = get_settings()
    result = fit_clv(get_engine(settings, create=False), settings, until, horizon_days)
    m = result.metrics
    console.out.print(
        f"model {result.model_id}: trained on features as of {', '.join(m['train']['features_as_of'])} "
        f"({m['train']['rows']} rows), backtest on {m['test_customers']} customers, "
        f"spend in ({m['backtest']['period'][0]}, {m['backtest']['period'][1]}]"
    )
    console.out.print(_metrics_table("CLV backtest", m))
    console.out.print(
        f"actual spend {m['actual_total']:,.2f}, expected {m['expected_total']:,.2f}; "
        f"beats both baselines on every metric: {'yes' if result.beats_baselines else 'no'} "
        f"({result.seconds:.1f} s)"
    )


@clv_app.command("show")
def show_command(
    as_of: str | None = typer.Option(None, "--as-of", help="Latest model trained on or before this date."),
) -> None:
    """Print the latest stored CLV model and its backtest."""
    from activation.settings import get_settings
    from activation.warehouse import get_engine
    from segments.clv import latest_model

    day = parse_date(as_of, "--as-of")
    settings = get_settings()
    model = latest_model(get_engine(settings, create=False), day)
    console.out.print(
        f"model {model.model_id}: train_until {model.train_until}, horizon {model.horizon_days} days, "
        f"{len(model.params['spend']['trees'])} + {len(model.params['purchase']['trees'])} trees "
        f"(expected spend + purchase probability, cut at {model.params['threshold']}) "
        f"on {', '.join(model.params['features'])}"
    )
    console.out.print(_metrics_table("CLV backtest", model.metrics))


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
            f"clv_tier: model {model['model_id']} (train_until {model['train_until']}, horizon "
            f"{model['horizon_days']} days); tier cut-points {model['tier_cutpoints']} on expected spend",
            f"  mean expected spend per tier: {means}",
        ]
    return [f"model {key}: {value}" for key, value in model.items()]
