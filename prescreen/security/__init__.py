"""Security: who may do what (roles, permissions), what they may see (masking), how they prove it
(TOTP), and the national cryptography that keeps the record honest (SM3 hash chain, SM2 signatures).

Pure functions and small file-backed key helpers; no database, no HTTP. The store writes the audit
records these functions chain, and the HTTP edge checks the permissions they define.
"""
