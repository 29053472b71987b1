"""Build a destination by name from settings."""

from __future__ import annotations

from activation.errors import ConfigError
from activation.files import output_dir
from activation.settings import Settings
from connectors.base import Destination
from connectors.hubspot import HubSpotApi, HubSpotDestination
from connectors.mailchimp import MailchimpApi, MailchimpDestination
from connectors.outbox import OutboxDestination

NAMES = ("outbox", "mailchimp", "hubspot")


def get_destination(name: str, settings: Settings) -> Destination:
    """``outbox`` (default, no credentials), ``mailchimp`` or ``hubspot``.

    Raises:
        ConfigError: unknown name or missing credentials.
    """
    if name == "outbox":
        return OutboxDestination(settings)
    if name == "mailchimp":
        return MailchimpDestination(settings.mailchimp, settings.brand)
    if name == "hubspot":
        return HubSpotDestination(settings.hubspot)
    raise ConfigError(f"unknown destination {name!r}", fix=f"use one of: {', '.join(NAMES)}")


def check_destination(name: str, settings: Settings) -> None:
    """Refuse an unknown destination or one whose credentials are not set, without any request.

    Flows call it first, so a wrong ``destination`` parameter stops the run before it waits, plans or syncs.

    Raises:
        ConfigError: unknown name, or the setting to set.
        InputError: the outbox folder is a file or cannot be written.
    """
    if name == "outbox":
        # a file where the outbox folder goes would stop the sync half-way (InputError, exit 2, before any write)
        output_dir(settings.resolved_outbox_dir, flag="the outbox folder (ACTIVATION_OUTBOX_DIR)")
        return
    if name == "mailchimp":
        MailchimpApi(settings.mailchimp).close()
        return
    if name == "hubspot":
        HubSpotApi(settings.hubspot).close()
        return
    get_destination(name, settings)
