"""A stand-in for `flask --app webapp certs ...`, speaking exactly the contract in ca/binding.py.

Used as `webapp_command = [python, this file]` so the real subprocess binder is tested without the
web app. State lives in the JSON file named by FAKE_WEBAPP_STATE (inherited environment, as the
real web app finds its database through STRONGROOM_* variables).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes


def main(argv: list[str]) -> int:
    state_path = Path(os.environ["FAKE_WEBAPP_STATE"])
    state = json.loads(state_path.read_text())
    state["argv"].append(argv)
    try:
        if argv[:2] == ["certs", "bind"] and len(argv) == 4:
            name, pem_file = argv[2], argv[3]
            if name not in state["users"]:
                print(f"Error: unknown user '{name}'", file=sys.stderr)
                return 1
            cert = x509.load_pem_x509_certificate(Path(pem_file).read_bytes())
            fp = cert.fingerprint(hashes.SHA256()).hex()
            if fp in state["bindings"]:
                print("Error: fingerprint already bound", file=sys.stderr)
                return 1
            for b in state["bindings"].values():
                if b["user"] == name and b["state"] == "active":
                    b["state"] = "replaced"
            state["bindings"][fp] = {"user": name, "state": "active"}
            return 0
        if argv[:2] == ["certs", "unbind"] and len(argv) == 5 and argv[3] == "--reason":
            fp = argv[2]
            if fp not in state["bindings"]:
                print(f"Error: unknown fingerprint {fp}", file=sys.stderr)
                return 1
            state["bindings"][fp]["state"] = "revoked"
            state["bindings"][fp]["reason"] = argv[4]
            return 0
        print("Usage: flask certs [bind|unbind] ...", file=sys.stderr)
        return 2
    finally:
        state_path.write_text(json.dumps(state))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
