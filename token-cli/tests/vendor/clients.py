"""Gets a token from `tokencache serve` with a vendor's own client library.

    python clients.py azure SCOPE   # azure-identity ManagedIdentityCredential
                                    # (IDENTITY_ENDPOINT + IDENTITY_HEADER)
    python clients.py google        # google-auth compute_engine.Credentials
                                    # (GCE_METADATA_HOST)
    python clients.py google-default SCOPE...
                                    # google.auth.default(scopes=...): the
                                    # metadata server's ping (GCE_METADATA_IP),
                                    # project id, account info, scoped token

Prints the token and one more line (expiry / account e-mail); google-default
prints the token, the project id and the account e-mail.
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


def google_default(scopes):
    import google.auth
    import google.auth.transport.requests

    credentials, project = google.auth.default(scopes=scopes)
    credentials.refresh(google.auth.transport.requests.Request())
    print(credentials.token)
    print(project)
    print(credentials.service_account_email)


if __name__ == "__main__":
    if sys.argv[1] == "azure":
        azure(sys.argv[2])
    elif sys.argv[1] == "google":
        google()
    elif sys.argv[1] == "google-default":
        google_default(sys.argv[2:])
    else:
        sys.exit("usage: clients.py azure SCOPE | google | google-default SCOPE...")
