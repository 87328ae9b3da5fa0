"""The CRM's door: a JSON API at /api/v1 for service accounts (docs/crm-api.md).

Importing this package adds nothing: the blueprint is `webapp.api.views.bp`, registered by the app
factory with `webapp.api.views.init_app`.
"""
