"""The bulk import call of the API (H8, issue 18): routes added to `webapp.api.views.bp`.

Empty until the import engine (webapp/records/bulk.py) offers its function; see
/work/coord/api-skeleton.md for how a route here uses the API's building blocks.
"""

from __future__ import annotations
