"""`python -m hardening.ssh > /etc/ssh/sshd_config`: the production sshd configuration."""

import sys

from hardening.ssh import render

sys.stdout.write(render())
