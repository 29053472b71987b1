"""Test doubles that are real implementations: HTTP servers speaking the Mailchimp Marketing API and the
HubSpot CRM API subsets this project uses (with their rules and injectable faults), and plan data."""
