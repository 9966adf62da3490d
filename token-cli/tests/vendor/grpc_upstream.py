"""A gRPC upstream for the sidecar's gRPC tests (token-cli/tests/grpc.rs):
grpcio's own server, generic handlers (bytes in, bytes out: no codegen).

    python grpc_upstream.py PORTFILE [--tls DIR]

Serves every service `test.*` on a free loopback port, written to PORTFILE
once listening. With --tls, serves TLS only (HTTP/2 only, as every gRPC
server) with a leaf for 127.0.0.1 and localhost signed by a CA of its own,
written to DIR/ca.pem.

Every call checks its `authorization` metadata: there must be exactly one,
and never the test client's own (`Bearer client-token-must-not-pass`);
otherwise the call fails with FAILED_PRECONDITION naming what it saw. The
answers carry the token seen (`auth=<value>`), and trailing metadata
`x-upstream-trailer: kept`. Methods:

    Unary            one request, one answer `auth=... msg=<request>`
    ServerStream     one request, three answers `auth=... n=<i>`
    Bidi             an answer per request, as they come
    UnauthHead       UNAUTHENTICATED at once (grpc-status in the response
                     head: a trailers-only response) for the first token it
                     sees, OK for any other
    UnauthTrailer    one answer, then UNAUTHENTICATED in the trailers for the
                     first token it sees; OK for any other
    Peer             after 0.2 s, the caller's address (`ipv4:127.0.0.1:PORT`):
                     which connection the call came on
"""
import datetime
import os
import sys
import time
from concurrent import futures

import grpc

CLIENT_TOKEN = "Bearer client-token-must-not-pass"
_first_token = {}


def _auth(context):
    values = [v for k, v in context.invocation_metadata() if k == "authorization"]
    if len(values) != 1 or values[0] == CLIENT_TOKEN:
        context.abort(
            grpc.StatusCode.FAILED_PRECONDITION,
            "the upstream saw authorization %r" % (values,),
        )
    return values[0]


def _trailer(context):
    context.set_trailing_metadata((("x-upstream-trailer", "kept"),))


def _first(method, auth):
    first = _first_token.setdefault(method, auth)
    return first == auth


def unary(request, context):
    auth = _auth(context)
    _trailer(context)
    return b"auth=" + auth.encode() + b" msg=" + request


def server_stream(request, context):
    auth = _auth(context)
    _trailer(context)
    for i in range(3):
        yield ("auth=%s n=%d" % (auth, i)).encode()


def bidi(requests, context):
    auth = _auth(context)
    _trailer(context)
    for r in requests:
        yield b"auth=" + auth.encode() + b" echo=" + r


def unauth_head(request, context):
    auth = _auth(context)
    if _first("head", auth):
        context.abort(grpc.StatusCode.UNAUTHENTICATED, "token rejected")
    return b"auth=" + auth.encode()


def unauth_trailer(request, context):
    auth = _auth(context)
    yield b"auth=" + auth.encode()
    if _first("trailer", auth):
        context.abort(grpc.StatusCode.UNAUTHENTICATED, "token rejected")


def peer(request, context):
    _auth(context)
    time.sleep(0.2)
    return context.peer().encode()


class Handler(grpc.GenericRpcHandler):
    METHODS = {
        "Unary": grpc.unary_unary_rpc_method_handler(unary),
        "ServerStream": grpc.unary_stream_rpc_method_handler(server_stream),
        "Bidi": grpc.stream_stream_rpc_method_handler(bidi),
        "UnauthHead": grpc.unary_unary_rpc_method_handler(unauth_head),
        "UnauthTrailer": grpc.unary_stream_rpc_method_handler(unauth_trailer),
        "Peer": grpc.unary_unary_rpc_method_handler(peer),
    }

    def service(self, handler_call_details):
        service, _, method = handler_call_details.method.lstrip("/").partition("/")
        if not service.startswith("test."):
            return None
        return self.METHODS.get(method)


def tls_credentials(directory):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID
    import ipaddress

    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "grpc test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.DNSName("localhost"),
                    x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                ]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    with open(os.path.join(directory, "ca.pem"), "wb") as f:
        f.write(ca.public_bytes(pem))
    key_pem = key.private_bytes(
        pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return grpc.ssl_server_credentials(((key_pem, leaf.public_bytes(pem)),))


def main():
    port_file = sys.argv[1]
    tls_dir = sys.argv[3] if len(sys.argv) > 3 and sys.argv[2] == "--tls" else None
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
    server.add_generic_rpc_handlers((Handler(),))
    if tls_dir:
        port = server.add_secure_port("127.0.0.1:0", tls_credentials(tls_dir))
    else:
        port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    tmp = port_file + ".tmp"
    with open(tmp, "w") as f:
        f.write(str(port))
    os.replace(tmp, port_file)
    server.wait_for_termination()


if __name__ == "__main__":
    main()
