"""Security: the local PKI (certificates, CRL) and the TLS contexts built from it."""
