"""Gets a token from `tokencache serve` with a vendor's own client library.

    python clients.py azure SCOPE   # azure-identity ManagedIdentityCredential
                                    # (IDENTITY_ENDPOINT + IDENTITY_HEADER)
    python clients.py google        # google-auth compute_engine.Credentials
                                    # (GCE_METADATA_HOST)

Prints the token and one more line (expiry / account e-mail).
"""
import sys


def azure(scope):
    from azure.identity import ManagedIdentityCredential

    token = ManagedIdentityCredential().get_token(scope)
    print(token.token)
    print(token.expires_on)


def google():
    import google.auth.transport.requests
    from google.auth import compute_engine

    credentials = compute_engine.Credentials()
    credentials.refresh(google.auth.transport.requests.Request())
    print(credentials.token)
    print(credentials.service_account_email)


if __name__ == "__main__":
    if sys.argv[1] == "azure":
        azure(sys.argv[2])
    elif sys.argv[1] == "google":
        google()
    else:
        sys.exit("usage: clients.py azure SCOPE | google")
