"""``clv export``: one row per customer known at a date with the stored model's predictions, and a
sidecar JSON naming the model and horizon. Written whole or not at all."""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from sqlalchemy.engine import Engine

from activation.errors import InputError
from activation.files import atomic_write_all, output_file, safe_frame
from activation.settings import Settings
from segments.clv.features import data_range
from segments.clv.store import PREDICTION_COLUMNS, latest_model, predict_customers
from segments.snapshots import STALE_DATA_DAYS

FORMATS = {".csv": "csv", ".parquet": "parquet"}


@dataclass(frozen=True)
class ExportResult:
    path: Path
    sidecar: Path
    customers: int
    model_id: str
    horizon_days: int
    warnings: list[str]


def sidecar_for(path: Path) -> Path:
    """Where the description of an export goes: ``FILE.csv`` → ``FILE.csv.json``."""
    return path.with_name(path.name + ".json")


def export_predictions(
    engine: Engine, settings: Settings, as_of: date, out: str | Path, model_id: str | None = None
) -> ExportResult:
    """Write :data:`PREDICTION_COLUMNS` for every customer with an order on or before ``as_of``, from the
    latest model trained on or before it (or ``model_id``), to ``out`` (``.csv`` or ``.parquet``) and its
    sidecar.

    Raises:
        InputError: ``out`` has another extension or cannot be written. NotFoundError: no usable model.
        Nothing is written in either case.
    """
    path = output_file(out, example=f"clv-{as_of.isoformat()}.csv")
    kind = FORMATS.get(path.suffix.lower())
    if kind is None:
        raise InputError(
            f"--out {path}: unknown format {path.suffix or '(no extension)'!r}",
            fix=f"end the file name with .csv or .parquet, e.g. --out clv-{as_of.isoformat()}.csv",
        )
    sidecar = sidecar_for(path)
    if sidecar.is_dir():
        raise InputError(
            f"--out {path}: the file that describes it, {sidecar}, would replace a folder",
            fix=f"remove or rename the folder {sidecar}, or choose another --out",
        )
    output_file(sidecar, flag=f"the description next to --out {path}:")
    model = latest_model(engine, as_of, model_id)
    preds = predict_customers(engine, settings, model, as_of)[list(PREDICTION_COLUMNS)]
    warnings = _date_warnings(engine, settings, as_of)
    about = {
        "model_id": model.model_id,
        "model": model.params["choice"],
        "train_until": model.train_until.isoformat(),
        "horizon_days": model.horizon_days,
        "as_of": as_of.isoformat(),
        "period": f"({as_of.isoformat()}, +{model.horizon_days} days]",
        "customers": len(preds),
        "columns": list(PREDICTION_COLUMNS),
        "warnings": warnings,
    }
    if kind == "csv":
        data: bytes = safe_frame(preds).to_csv(index=False).encode("utf-8")
    else:
        table = pa.Table.from_pandas(preds, preserve_index=False)
        table = table.replace_schema_metadata(
            {**(table.schema.metadata or {}), b"clv": json.dumps(about).encode()}
        )
        buf = io.BytesIO()
        pq.write_table(table, buf)
        data = buf.getvalue()
    atomic_write_all([(path, data), (sidecar, json.dumps(about, indent=2) + "\n")])
    return ExportResult(path, sidecar, len(preds), model.model_id, model.horizon_days, warnings)


def _date_warnings(engine: Engine, settings: Settings, as_of: date) -> list[str]:
    """An ``as_of`` well after the newest order: every customer's recency then includes the gap, so the
    predictions are for customers who have gone quiet since, which is rarely what was meant."""
    span = data_range(engine, settings)
    if span is None or (as_of - span[1]).days <= STALE_DATA_DAYS:
        return []
    return [
        f"--as-of {as_of} is {(as_of - span[1]).days} days after the newest order ({span[1]}): every "
        "customer's recency includes that gap (orders not loaded up to the date?)"
    ]
