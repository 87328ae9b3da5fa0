"""The alert mailer: delivers the outbox's pending events by SMTP as bare notifications.

One short mail per event name per delivery pass ("Strongroom: account locked, 3 events since 02:14
UTC, check the audit log on the server"): never the event's details, never customer data, never an
actor name or an IP. `flask --app webapp mail send` runs one pass, `mail run` loops. See docs/alerts.md.
"""
