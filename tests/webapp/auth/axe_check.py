"""axe-core on a page Playwright has open: the account pages' accessibility, checked where they are
driven in Chromium (the e2e console test checks every page of every role through Apache)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

AXE_JS = Path(__file__).resolve().parents[2] / "e2e" / "axe" / "node_modules" / "axe-core" / "axe.min.js"
AXE_RUN = """async () => {
  const r = await axe.run(document, {resultTypes: ['violations']});
  return r.violations.filter(v => v.impact === 'serious' || v.impact === 'critical')
    .map(v => v.id + ': ' + v.nodes.slice(0, 3).map(n => n.html.slice(0, 120)).join(' | '));
}"""


def blocking_axe_violations(page: Any) -> list[str]:
    """axe-core's serious and critical findings on the page as it is now (run through the DevTools
    protocol, which the page's CSP does not govern: the CSP stays on); none where axe is not installed
    (`make test` installs it; the e2e console test requires it)."""
    if not AXE_JS.exists():
        return []
    page.evaluate(AXE_JS.read_text())
    found: list[str] = page.evaluate(AXE_RUN)
    return found
