#!/usr/bin/env python3
"""Mints a token the chat's gateways and archiver accept in AUTH_MODE=token.

This is what an application backend does after it has logged a user in: sign a short-lived
JWT whose `sub` is the user's stable id and hand it to the page (which presents it in its
first websocket frame, never in a URL). Two ways to sign:

  HS256 with the shared secret (the services have the same AUTH_SECRET):
    AUTH_SECRET=... ./mint_token.py --sub alice --name Alice --ttl 3600

  EdDSA or RS256 with a private key (the services have only the public half, as
  AUTH_PUBLIC_KEY, so they cannot mint):
    ./mint_token.py --sub alice --name Alice --private-key ed25519-private.pem

Claims (docs/protocol.md, "Identity and private rooms"): sub (required), name, exp
(required), iat, aud and iss when the services are configured with AUTH_AUDIENCE /
AUTH_ISSUER, and admin (read every room through the archiver's API).
"""

import argparse
import os
import sys
import time

import jwt  # PyJWT; `pip install -r requirements.txt`


def claims(sub, name=None, ttl=3600, audience=None, issuer=None, admin=False):
    """The claims of a token for `sub`, valid for `ttl` seconds from now."""
    now = int(time.time())
    out = {"sub": sub, "iat": now, "exp": now + ttl}
    if name:
        out["name"] = name
    if audience:
        out["aud"] = audience
    if issuer:
        out["iss"] = issuer
    if admin:
        out["admin"] = True
    return out


def mint(payload, secret=None, private_key_pem=None):
    """Signs with HS256 and the shared secret, or with the private key (Ed25519: EdDSA,
    RSA: RS256)."""
    if private_key_pem is None:
        if not secret or len(secret.encode()) < 32:
            raise ValueError("AUTH_SECRET must be at least 32 bytes")
        return jwt.encode(payload, secret, algorithm="HS256")
    from cryptography.hazmat.primitives.serialization import load_pem_private_key
    from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

    key = load_pem_private_key(private_key_pem, password=None)
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return jwt.encode(payload, key, algorithm="EdDSA")
    if isinstance(key, rsa.RSAPrivateKey):
        return jwt.encode(payload, key, algorithm="RS256")
    raise ValueError("the private key must be Ed25519 or RSA")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sub", required=True, help="the user's stable id")
    parser.add_argument("--name", help="the display name")
    parser.add_argument("--ttl", type=int, default=3600, help="seconds of validity")
    parser.add_argument("--audience", default=os.environ.get("AUTH_AUDIENCE"))
    parser.add_argument("--issuer", default=os.environ.get("AUTH_ISSUER"))
    parser.add_argument("--admin", action="store_true", help="may read every room")
    parser.add_argument("--private-key", help="PEM private key (else AUTH_SECRET, HS256)")
    args = parser.parse_args()
    payload = claims(args.sub, args.name, args.ttl, args.audience, args.issuer, args.admin)
    try:
        if args.private_key:
            with open(args.private_key, "rb") as f:
                token = mint(payload, private_key_pem=f.read())
        else:
            token = mint(payload, secret=os.environ.get("AUTH_SECRET"))
    except (OSError, ValueError) as err:
        print("error: %s" % err, file=sys.stderr)
        return 1
    print(token)
    return 0


if __name__ == "__main__":
    sys.exit(main())
