"""keyd: it must answer, and be unsealed (the web app cannot serve cards while it is sealed, and a
sealed keyd nobody sealed on purpose means it restarted)."""

from __future__ import annotations

from keyd.client import KeydClient
from keyd.errors import KeydError, Sealed
from ops.alerts import Alert, Finding
from ops.checks import Context, Result

NAME = "keyd"


def run(ctx: Context) -> Result:
    client = KeydClient(ctx.settings.keyd_socket, timeout=ctx.settings.keyd_timeout)
    try:
        status = client.status()
    except Sealed:
        return Result([Finding(Alert.KEYD_SEALED, resource=str(ctx.settings.keyd_socket), key="sealed")])
    except (KeydError, OSError) as exc:
        return Result(
            [
                Finding(
                    Alert.KEYD_UNREACHABLE,
                    resource=str(ctx.settings.keyd_socket),
                    detail=type(exc).__name__,
                    key="unreachable",
                )
            ]
        )
    finally:
        client.close()
    if status.sealed:
        return Result([Finding(Alert.KEYD_SEALED, resource=str(ctx.settings.keyd_socket), key="sealed")])
    return Result([])
