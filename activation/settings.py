"""All configuration, in one place.

Every setting can come from the environment (prefix ``ACTIVATION_``, nested with ``__``, e.g.
``ACTIVATION_MAILCHIMP__API_KEY``) or a ``.env`` file in the working directory. Nothing else in the
project reads ``os.environ`` for its own configuration.
"""

from __future__ import annotations

import json
import re
import secrets
from datetime import date, datetime
from functools import cached_property
from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, Field, SecretStr, ValidationError, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict, SettingsError

from activation import statuses
from activation.defaults import REPO_ROOT as REPO_ROOT  # the clone's root (tests and benches)
from activation.defaults import default_templates_dir
from activation.errors import ConfigError


class OrdersSource(BaseModel):
    """Where segmentation reads orders: the ingested ``orders`` table by default, or the user's own
    table / view with its own column names (``ACTIVATION_ORDERS__TABLE=analytics.fct_orders``)."""

    table: str = "orders"
    order_id: str = "order_id"
    customer_id: str = "customer_id"
    ordered_at: str = "ordered_at"
    amount: str = "amount"
    status: str | None = "status"
    coupon_code: str | None = "coupon_code"


class CustomersSource(BaseModel):
    """Where customer contact data lives (email, first name, consent)."""

    table: str = "customers"
    customer_id: str = "customer_id"
    email: str | None = "email"
    first_name: str | None = "first_name"
    unsubscribed: str | None = "unsubscribed"


class BrandSettings(BaseModel):
    """Sender identity rendered into every email (CAN-SPAM needs the postal address)."""

    name: str = "Northwind Goods"
    from_name: str = "Northwind Goods"
    from_email: str = "hello@example.com"
    reply_to: str | None = None
    postal_address: str = "Northwind Goods, 1 Example Street, Springfield, EX 00000"
    website_url: str = "https://shop.example.com"
    unsubscribe_url: str = "https://shop.example.com/unsubscribe"
    currency: str = "USD"


class MailchimpSettings(BaseModel):
    api_key: SecretStr | None = None
    server_prefix: str | None = None
    list_id: str | None = None
    base_url: str | None = Field(default=None, description="Override the API host (tests, proxies).")
    max_connections: int = Field(default=10, ge=1, le=10)
    batch_size: int = Field(default=500, ge=1, le=500)
    timeout_s: float = 30.0
    max_retries: int = 6


class HubSpotSettings(BaseModel):
    token: SecretStr | None = None
    base_url: str = "https://api.hubapi.com"
    api_version: str = Field(
        default="2026-03",
        pattern=r"^(v3|\d{4}-(0[1-9]|1[0-2])(-beta)?)$",
        description="A dated HubSpot API version (YYYY-MM: /crm/objects/2026-03/...) or v3 (/crm/v3/...).",
    )
    max_connections: int = Field(default=5, ge=1, le=10)
    batch_size: int = Field(default=100, ge=1, le=100)
    timeout_s: float = 30.0
    max_retries: int = 6


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="ACTIVATION_",
        env_nested_delimiter="__",
        env_file=".env",
        extra="ignore",
    )

    data_dir: Path = Path("data")
    warehouse_url: str | None = Field(
        default=None,
        description="Where the orders live and segmentation runs: a SQLAlchemy URL, or sc://HOST:PORT for "
        "Spark (Spark Connect, also Databricks). Default: a DuckDB file under data_dir.",
    )
    state_url: str | None = Field(
        default=None,
        description="Where everything this project writes lives (snapshots, campaigns, sync state, "
        "outcomes): a DuckDB or PostgreSQL URL. Default: the warehouse, when it is DuckDB or PostgreSQL.",
    )
    templates_dir: Path = Field(
        default_factory=default_templates_dir,
        description="The marketer's templates and policy.yaml. Default: ./templates when it exists, "
        "else the packaged defaults.",
    )
    schemes_dir: Path | None = Field(default=None, description="Extra folder of scheme YAML files.")
    outbox_dir: Path | None = None

    orders: OrdersSource = OrdersSource()
    customers: CustomersSource = CustomersSource()
    # order statuses, compared trimmed and case-insensitively; any other value blocks the data checks
    counted_statuses: Annotated[list[str], NoDecode] = list(statuses.COUNTED)  # "A, B" or JSON
    excluded_statuses: Annotated[list[str], NoDecode] = list(statuses.EXCLUDED)
    allow_negative_amounts: bool = Field(
        default=False, description="Segment even when orders have a negative amount (net refunds)."
    )
    future_tolerance_hours: float = Field(
        default=24.0, ge=0, description="Orders dated later than now plus this block the data checks."
    )
    default_scheme: str = "rfm11"
    lookback_days: int | None = Field(
        default=730, ge=1, description="Days ending with as_of; null: all history."
    )

    coupon_secret: SecretStr | None = Field(
        default=None, description="HMAC key for coupon codes. Default: generated once under data_dir."
    )
    attribution_window_days: int = Field(default=30, ge=1)
    gross_margin: float = Field(default=0.4, ge=0, le=1)
    cost_per_send: float = Field(default=0.0, ge=0)
    min_group_size: int = Field(default=100, ge=1, description="Below this, lift is flagged inconclusive.")

    guardrail_max_change_share: float = Field(default=0.5, gt=0)
    schedule_timezone: str = "UTC"
    warehouse_lock_wait_seconds: float | None = Field(
        default=None,
        ge=0,
        description="How long to wait for a DuckDB warehouse file held by another process. "
        "Default: commands fail at once, flows wait 30 minutes.",
    )

    brand: BrandSettings = BrandSettings()
    mailchimp: MailchimpSettings = MailchimpSettings()
    hubspot: HubSpotSettings = HubSpotSettings()

    @field_validator("counted_statuses", "excluded_statuses", mode="before")
    @classmethod
    def _split_csv(cls, v: object) -> object:
        if isinstance(v, str):
            if v.strip().startswith("["):
                return json.loads(v)
            return [s.strip() for s in v.split(",") if s.strip()]
        return v

    @field_validator("excluded_statuses")
    @classmethod
    def _no_status_in_both(cls, v: list[str], info: ValidationInfo) -> list[str]:
        both = set(statuses.normalized(v)) & set(statuses.normalized(info.data.get("counted_statuses") or []))
        if both:
            raise ValueError(
                f"{', '.join(sorted(both))} cannot be both counted and excluded; remove it from one of "
                "ACTIVATION_COUNTED_STATUSES and ACTIVATION_EXCLUDED_STATUSES"
            )
        return v

    @field_validator("lookback_days", mode="before")
    @classmethod
    def _null(cls, v: object) -> object:
        if isinstance(v, str) and v.strip().lower() in ("null", "none"):
            return None
        return v

    @cached_property
    def resolved_warehouse_url(self) -> str:
        if self.warehouse_url:
            return self.warehouse_url
        return f"duckdb:///{(self.data_dir / 'warehouse.duckdb').resolve()}"

    @property
    def warehouse_is_spark(self) -> bool:
        """Whether the warehouse is a Spark Connect endpoint (``sc://``)."""
        return self.resolved_warehouse_url.strip().lower().startswith("sc://")

    @cached_property
    def resolved_state_url(self) -> str:
        """The state store's URL (see ``state_url``).

        Raises:
            ConfigError: no state store can be derived (a Spark or other read-only warehouse without
                ``ACTIVATION_STATE_URL``), the state URL is not DuckDB/PostgreSQL, or it differs from a
                DuckDB/PostgreSQL warehouse (segmentation there writes its snapshot in the same database).
        """
        warehouse = self.resolved_warehouse_url
        if not self.state_url:
            if _backend(warehouse) in STATE_BACKENDS or "://" not in warehouse:
                return warehouse  # (not a URL at all: opening it says so)
            raise ConfigError(
                f"the warehouse {_shown(warehouse)} cannot hold the project's state (snapshots, campaigns, "
                "sync state, outcomes) and ACTIVATION_STATE_URL is not set",
                fix="set ACTIVATION_STATE_URL to a DuckDB or PostgreSQL URL, e.g. duckdb:///data/state.duckdb "
                "or postgresql+psycopg://user:pass@host:5432/db",
            )
        state = self.state_url.strip()
        if _backend(state) not in STATE_BACKENDS:
            raise ConfigError(
                f"ACTIVATION_STATE_URL must be a DuckDB or PostgreSQL URL, got {_shown(state)}",
                fix="use e.g. duckdb:///data/state.duckdb or postgresql+psycopg://user:pass@host:5432/db",
            )
        if state != warehouse and not self.warehouse_is_spark:
            raise ConfigError(
                f"ACTIVATION_STATE_URL ({_shown(state)}) differs from the SQL warehouse {_shown(warehouse)}: "
                "a separate state store is supported for a Spark warehouse (sc://) only",
                fix="unset ACTIVATION_STATE_URL (the state then lives in the warehouse) or set it to "
                "ACTIVATION_WAREHOUSE_URL",
            )
        return state

    @property
    def resolved_outbox_dir(self) -> Path:
        return self.outbox_dir or self.data_dir / "outbox"

    @property
    def policy_file(self) -> Path:
        return self.templates_dir / "policy.yaml"

    def coupon_key(self) -> bytes:
        """The coupon HMAC key; generated once (0600) under data_dir when not configured."""
        if self.coupon_secret is not None:
            return self.coupon_secret.get_secret_value().encode()
        path = self.data_dir / ".coupon_secret"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            tmp.write_text(secrets.token_hex(32))
            tmp.chmod(0o600)
            tmp.replace(path)
        return path.read_text().strip().encode()


#: the backends a state store can be (the project's writes use their SQL: ON CONFLICT, advisory locks, COPY)
STATE_BACKENDS = ("duckdb", "postgresql", "postgres")


def _backend(url: str) -> str:
    """The URL's scheme before any ``+driver`` (``postgresql+psycopg`` → ``postgresql``), lower-case."""
    return url.strip().split(":", 1)[0].split("+", 1)[0].lower()


def _shown(url: str) -> str:
    """The URL's scheme and host part only, for messages (no password, token or path parameters)."""
    if _backend(url) == "duckdb":
        return url.strip()
    scheme, _, rest = url.strip().partition("://")
    host = rest.split("/", 1)[0].split(";", 1)[0].rsplit("@", 1)[-1]
    return f"{scheme}://{host}" + ("/…" if rest[len(host) :] else "")


def get_settings(**overrides: object) -> Settings:
    """Settings from the environment (and .env), with explicit overrides on top.

    Raises:
        ConfigError: a value does not fit its setting (names the ``ACTIVATION_…`` variable).
    """
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = [str(x) for x in err["loc"]]
        got = "" if _is_secret(loc) else f" (got {err.get('input')!r})"
        raise _setting_error(loc, f"{err['msg']}{got}") from None
    except SettingsError as exc:
        found = re.search(r'field "([^"]+)"', str(exc))
        raise _setting_error([found.group(1) if found else "?"], "cannot be parsed") from None


def _is_secret(loc: list[str]) -> bool:
    return any(w in part.lower() for part in loc for w in ("key", "token", "secret", "password"))


def _setting_error(loc: list[str], problem: str) -> ConfigError:
    var = "ACTIVATION_" + "__".join(loc).upper()
    return ConfigError(
        f"setting {'.'.join(loc)} ({var}) is invalid: {problem}",
        fix=f"correct {var} in the environment or the .env file",
    )


def today_in(settings: Settings) -> date:
    """Today's date in the schedule's time zone (``ACTIVATION_SCHEDULE_TIMEZONE``; a quarter ends at midnight
    there): the default ``as_of`` of the commands and the flows is the end of the last full quarter before it.

    Raises:
        ConfigError: the setting is not a known IANA time zone.
    """
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        tz = ZoneInfo(settings.schedule_timezone)
    except (ZoneInfoNotFoundError, ValueError, OSError) as exc:  # unknown, malformed, or a folder of zones
        raise ConfigError(
            f"ACTIVATION_SCHEDULE_TIMEZONE={settings.schedule_timezone!r} is not a known time zone",
            fix="use an IANA name such as UTC or Europe/Berlin",
        ) from exc
    return datetime.now(tz).date()
