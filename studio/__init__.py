"""The email studio: a local web app showing every segment's email, live while the templates are edited
(``activation studio``; docs/templates.md)."""
