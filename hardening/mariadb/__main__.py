"""`python -m hardening.mariadb > /etc/mysql/mariadb.conf.d/90-strongroom.cnf`."""

import sys

from hardening.mariadb import render

sys.stdout.write(render())
