"""The CA tool's few named failures.

Every refusal is a `CAError` whose message is shown to the admin as is: it names what was wrong and
what to do, and never contains a key, a passphrase or a bundle password. The CLI maps the classes to
exit codes: 1 = refused, nothing changed; 3 = the change was made but a follow-up step (web app
unbind, Apache reload) failed and must be retried.
"""

from __future__ import annotations


class CAError(Exception):
    """Refused: the message says why; nothing was changed."""

    exit_code = 1


class UnsafeEnvironment(CAError):
    """Permissions, ownership or locking make it unsafe to run at all."""


class CorruptIndex(CAError):
    """The index does not parse or validate: refuse rather than guess."""


class WrongPassphrase(CAError):
    """A CA key could not be decrypted with the passphrase given."""


class WeakSecret(CAError):
    """A typed password or passphrase is too weak."""


class BindingFailed(CAError):
    """The web app refused or failed to bind the certificate: nothing was recorded."""


class FollowUpFailed(CAError):
    """The main change stands (e.g. the CRL is published) but a follow-up step failed: retry it."""

    exit_code = 3
