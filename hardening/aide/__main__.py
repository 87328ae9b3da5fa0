"""`python -m hardening.aide > /etc/strongroom/aide.conf`: the production AIDE configuration."""

import sys

from hardening.aide import render

sys.stdout.write(render())
