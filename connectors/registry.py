"""Build a destination by name from settings."""

from __future__ import annotations

from activation.errors import ConfigError
from activation.settings import Settings
from connectors.base import Destination

NAMES = ("outbox", "mailchimp", "hubspot")


def get_destination(name: str, settings: Settings) -> Destination:
    """``outbox`` (default, no credentials), ``mailchimp`` or ``hubspot``.

    Raises:
        ConfigError: unknown name or missing credentials.
    """
    if name == "outbox":
        from connectors.outbox import OutboxDestination

        return OutboxDestination(settings)
    if name == "mailchimp":
        from connectors.mailchimp import MailchimpDestination

        return MailchimpDestination(settings.mailchimp, settings.brand)
    if name == "hubspot":
        from connectors.hubspot import HubSpotDestination

        return HubSpotDestination(settings.hubspot)
    raise ConfigError(f"unknown destination {name!r}", fix=f"use one of: {', '.join(NAMES)}")
