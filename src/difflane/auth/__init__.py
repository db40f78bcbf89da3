"""Identity: who a caller is and what it may do, from OpenID Connect / Entra ID access tokens.

``caller`` holds the result (principal + permissions), ``keys`` the provider metadata and signing
keys, ``tokens`` the validation rules. The HTTP glue lives in ``difflane.api.auth``.
"""
