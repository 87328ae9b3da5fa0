"""Scan one TLS server with sslyze and check it against Mozilla's "intermediate" profile.

Runs under the separate sslyze venv (`.venv-sslyze`, tests/apache/requirements-sslyze.txt): every
sslyze release pins cryptography below the version the project pins, so it cannot share `.venv`.

    python sslyze_scan.py HOST IP PORT CA_FILE CLIENT_CERT CLIENT_KEY   ("-" "-": no client certificate)

Prints one JSON object: {"compliant": bool, "issues": {name: text}, "error": str | null}.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from sslyze import (  # type: ignore[import-not-found,unused-ignore]
    ClientAuthenticationCredentials,
    Scanner,
    ServerNetworkConfiguration,
    ServerNetworkLocation,
    ServerScanRequest,
    ServerScanStatusEnum,
)
from sslyze.mozilla_tls_profile.tls_config_checker import (  # type: ignore[import-not-found,unused-ignore]
    SCAN_COMMANDS_NEEDED_BY_MOZILLA_CHECKER,
    MozillaTlsConfiguration,
    ServerNotCompliantWithTlsConfiguration,
    ServerScanResultIncomplete,
    TlsConfigurationEnum,
    check_server_against_tls_configuration,
)
from sslyze.plugins.certificate_info.implementation import (  # type: ignore[import-not-found,unused-ignore]
    CertificateInfoExtraArgument,
)
from sslyze.scanner.models import ScanCommandsExtraArguments  # type: ignore[import-not-found,unused-ignore]


def main(argv: list[str]) -> dict[str, object]:
    host, ip, port, ca_file, cert, key = argv
    request = ServerScanRequest(
        server_location=ServerNetworkLocation(hostname=host, port=int(port), ip_address=ip),
        network_configuration=ServerNetworkConfiguration(
            tls_server_name_indication=host,
            tls_client_auth_credentials=None
            if cert == "-"
            else ClientAuthenticationCredentials(certificate_chain_path=Path(cert), key_path=Path(key)),
        ),
        scan_commands=SCAN_COMMANDS_NEEDED_BY_MOZILLA_CHECKER,
        # Our server certificate chains to the private test CA, not to a public root.
        scan_commands_extra_arguments=ScanCommandsExtraArguments(
            certificate_info=CertificateInfoExtraArgument(custom_ca_file=Path(ca_file))
        ),
    )
    scanner = Scanner()
    scanner.queue_scans([request])
    for result in scanner.get_results():
        if result.scan_status != ServerScanStatusEnum.COMPLETED:
            return {"compliant": False, "issues": {}, "error": f"scan status {result.scan_status}"}
        try:
            check_server_against_tls_configuration(
                result, MozillaTlsConfiguration.get(TlsConfigurationEnum.MOZILLA_INTERMEDIATE)
            )
        except ServerNotCompliantWithTlsConfiguration as exc:
            return {"compliant": False, "issues": dict(exc.issues), "error": None}
        except ServerScanResultIncomplete as exc:  # e.g. the server refused every handshake
            return {"compliant": False, "issues": {}, "error": str(exc)}
        return {"compliant": True, "issues": {}, "error": None}
    return {"compliant": False, "issues": {}, "error": "no scan result"}


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1:])))
