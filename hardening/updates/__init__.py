"""Automatic security updates: apt configuration files shipped for /etc/apt/apt.conf.d/ (docs/hardening.md).

`51strongroom-unattended-upgrades` narrows Debian's unattended-upgrades to Debian-Security alone (its
`#clear` drops the broader default list of 50unattended-upgrades), never reboots, and mails root.
`20auto-upgrades` turns the daily run on. The watchdog's update alerts cover what waits for an admin.
"""

from pathlib import Path

HERE = Path(__file__).parent
UNATTENDED_UPGRADES = HERE / "51strongroom-unattended-upgrades"
AUTO_UPGRADES = HERE / "20auto-upgrades"
FILES = (AUTO_UPGRADES, UNATTENDED_UPGRADES)
