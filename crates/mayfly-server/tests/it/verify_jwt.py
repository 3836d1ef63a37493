#!/usr/bin/env python3
"""An independent verifier of the broker's JWTs, with PyJWT (run by tests/it/exchange.rs).

Usage: verify_jwt.py JWKS_URL TOKEN AUDIENCE ISSUER

Fetches the JWKS, picks the key named by the token's `kid`, and verifies the signature (EdDSA
or ES256 only), `exp` against the wall clock (no leeway), `aud` and `iss`. Exits 0 and prints the
claims as JSON when the token is valid; exits 1 with the reason on stderr when it is not; exits 2
when the check itself could not run (bad usage, JWKS unreachable, PyJWT missing).
"""

import json
import sys

try:
    import jwt
except ImportError as error:  # scripts/services.sh installs pyjwt[crypto]
    print(f"PyJWT is not installed: {error}", file=sys.stderr)
    sys.exit(2)


def main(argv):
    if len(argv) != 5:
        print(__doc__, file=sys.stderr)
        return 2
    jwks_url, token, audience, issuer = argv[1:]
    client = jwt.PyJWKClient(jwks_url, cache_jwk_set=False, timeout=10)
    try:
        key = client.get_signing_key_from_jwt(token)
    except jwt.PyJWKClientConnectionError as error:
        print(f"cannot fetch the JWKS: {error}", file=sys.stderr)
        return 2
    except jwt.PyJWTError as error:
        print(f"invalid: {type(error).__name__}: {error}", file=sys.stderr)
        return 1
    try:
        claims = jwt.decode(
            token,
            key.key,
            algorithms=["EdDSA", "ES256"],
            audience=audience,
            issuer=issuer,
            leeway=0,
            options={"require": ["exp", "iat", "aud", "iss", "sub"]},
        )
    except jwt.PyJWTError as error:
        print(f"invalid: {type(error).__name__}: {error}", file=sys.stderr)
        return 1
    print(json.dumps(claims))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
