"""Customer records (keyed by CRM reference) and their cards: PAN and cardholder name only through keyd."""
