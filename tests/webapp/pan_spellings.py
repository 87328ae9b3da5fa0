"""Card numbers as an attacker (or a hurried employee) would write them, and text that is no card
number: the tables shared by the detector's tests and the free-text fields' tests.

Every number here is made up: a fixed body per brand and length, completed with its Luhn digit.
"""

from __future__ import annotations

from webapp.redact import luhn_ok


def with_check_digit(body: str) -> str:
    return next(body + d for d in "0123456789" if luhn_ok(body + d))


# (brand, length): one made-up Luhn-valid number for every length each brand issues.
BRAND_NUMBERS = {
    "visa-13": with_check_digit("428371059284"),
    "visa-16": with_check_digit("428371059284617"),
    "visa-19": with_check_digit("428371059284617305"),
    "mastercard-16": with_check_digit("537291046183925"),
    "mastercard-2-series-16": with_check_digit("227104938261735"),
    "amex-15": with_check_digit("37284619305718"),
    "discover-16": with_check_digit("601173829104657"),
    "discover-19": with_check_digit("645182930746152839"),
    "jcb-16": with_check_digit("353810294657381"),
    "jcb-19": with_check_digit("358920471638290475"),
    "diners-14": with_check_digit("3018472930561"),
    "diners-16": with_check_digit("361847293056184"),
    "maestro-13": with_check_digit("675938271046"),
    "maestro-19": with_check_digit("630472918365029184"),
    "unionpay-16": with_check_digit("621984730561829"),
    "unionpay-17": with_check_digit("6219847305618293"),
    "unionpay-18": with_check_digit("62198473056182937"),
    "unionpay-19": with_check_digit("621984730561829374"),
}
PAN = BRAND_NUMBERS["visa-16"]


def _groups(digits: str, size: int = 4) -> list[str]:
    return [digits[i : i + size] for i in range(0, len(digits), size)]


def _script(digits: str, zero: str) -> str:
    return "".join(chr(ord(zero) + int(d)) for d in digits)


def joined(sep: str, digits: str = PAN) -> str:
    return sep.join(_groups(digits))


FULLWIDTH, ARABIC_INDIC, DEVANAGARI = "\uff10", "\u0660", "\u0966"

# Hostile spellings of PAN, by name. Those holding a control character (newline, tab) are refused
# by the input guard before any field rule sees them; the detector still finds them (audit, logs).
HOSTILE = {
    "dots": joined("."),
    "slashes": joined("/"),
    "underscores": joined("_"),
    "commas": joined(","),
    "colons": joined(":"),
    "plus signs": joined("+"),
    "pipes": joined("|"),
    "asterisks": joined("*"),
    "spaces": joined(" "),
    "dashes": joined("-"),
    "spaced dashes": joined(" - "),
    "several dots": joined("...."),
    "nbsp": joined("\u00a0"),
    "thin space": joined("\u2009"),
    "narrow nbsp": joined("\u202f"),
    "em space": joined("\u2003"),
    "ideographic space": joined("\u3000"),
    "fullwidth full stop": joined("\uff0e"),
    "en dash": joined("\u2013"),
    "zero-width space": joined("\u200b"),
    "soft hyphen": joined("\u00ad"),
    "fullwidth digits": _script(PAN, FULLWIDTH),
    "fullwidth digits, ideographic space": joined("\u3000", _script(PAN, FULLWIDTH)),
    "arabic-indic digits": _script(PAN, ARABIC_INDIC),
    "devanagari digits, dots": joined(".", _script(PAN, DEVANAGARI)),
    "mixed digits and separators": (
        PAN[:4]
        + "."
        + _script(PAN[4:8], FULLWIDTH)
        + "/"
        + _script(PAN[8:12], ARABIC_INDIC)
        + "\u00a0"
        + PAN[12:]
    ),
    "no separator": PAN,
    "in a sentence": f"please call back, card {joined('.')} thanks",
    "embedded in words": f"card{PAN}x",
    "between letters, dotted": f"ref{joined('.')}end",
    "pairs": " ".join(PAN[i : i + 2] for i in range(0, 16, 2)),
    "pairs with colons": ":".join(PAN[i : i + 2] for i in range(0, 16, 2)),
    "one digit at a time": ".".join(PAN),
    "amex grouping 4-6-5": "{}.{}.{}".format(
        BRAND_NUMBERS["amex-15"][:4], BRAND_NUMBERS["amex-15"][4:10], BRAND_NUMBERS["amex-15"][10:]
    ),
    "after other numbers": f"room 12, {joined('/')}",
    "newlines": joined("\n"),
    "tabs": joined("\t"),
    "crlf": joined("\r\n"),
}
GUARDED = {"newlines", "tabs", "crlf"}  # control characters: the input guard refuses them first

# Text that is no card number, with why.
HARMLESS = {
    "short numbers": "order 12345 of 2024, 3 items, room 101",
    "an amount": "refund EUR 1,234,567.89 approved",
    "a Luhn-invalid 16 digits": "ticket 4111 1111 1111 1112",
    "12 digits": "contract 4111 1111 1111",
    "20 digits in one piece": "reference 12345678901234567890",
    "a date": "since 2024-05-06",
    "dates listed": "on 2024-05-06, 2024-06-30, 2024-07-14",
    "european dates listed": "06.05.2024, 30.06.2024 and 14.07.2024",
    "us dates listed": "05/06/2024, 12/31/2024",
    "a timestamp": "called 2024-05-06 10:30:00",
    "timestamps listed": "2024-05-06 10:30:00, 2024-05-07 11:45:30",
    "a timestamp with microseconds": "2024-05-06 10:30:00.123456",
    "an iso timestamp": "2024-05-06T10:30:00.000000Z",
    "a log format time": "[06/May/2024:10:30:00 +0000]",
    "times listed": "open 08:30-12:00, 13:30-17:45",
    "a CRM reference": "see C1234567",
    "CRM references listed": "C1234567, C7654321, C2345678901",
    "a phone number": "+49 30 1234567",
    "an IPv4 address": "from 192.168.100.200",
    "an IPv6 address": "from 2001:db8::1",
    "words only": "customer asked about a disputed charge",
}
