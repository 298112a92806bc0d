"""The web console at /console: server-rendered pages for API consumers, node operators and admins."""
