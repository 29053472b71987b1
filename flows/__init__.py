"""The Prefect flows (the only package that imports Prefect); see docs/operations.md."""

from flows.logs import install as _install_log_filter

_install_log_filter()
