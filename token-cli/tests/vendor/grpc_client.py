"""A gRPC client for the sidecar's gRPC tests (token-cli/tests/grpc.rs):
grpcio on a plain channel (h2c with prior knowledge) to the sidecar, generic
stubs (bytes in, bytes out: no codegen).

    python grpc_client.py [--tls CA_FILE] TARGET SERVICE CALL...

With `--tls CA_FILE` the channel is a TLS one that trusts only CA_FILE (the
sidecar's forward-proxy CA, when the environment's `https_proxy` sends the
channel through the sidecar with CONNECT).

Each CALL is one of Unary, ServerStream, Bidi, UnauthHead, UnauthTrailer,
or Concurrent: 16 Peer calls at once, their answers (the connections the
upstream saw them on).
Every call sends its own `authorization: Bearer client-token-must-not-pass`,
which the sidecar must replace. Prints one JSON line per call:
{"call", "code", "details", "answers", "trailers"}; a failed call is a line
too (its code), never an exception.
"""
import json
import sys

import grpc

CLIENT_METADATA = (("authorization", "Bearer client-token-must-not-pass"),)


def run(channel, service, call):
    path = "/%s/%s" % (service, call)
    answers = []
    try:
        if call in ("Unary", "UnauthHead"):
            stub = channel.unary_unary(path)
            answer, c = stub.with_call(b"hello", metadata=CLIENT_METADATA, timeout=20)
            answers.append(answer)
        elif call in ("ServerStream", "UnauthTrailer"):
            c = channel.unary_stream(path)(b"hello", metadata=CLIENT_METADATA, timeout=20)
            for answer in c:
                answers.append(answer)
        elif call == "Concurrent":
            stub = channel.unary_unary("/%s/Peer" % service)
            calls = [stub.future(b"", metadata=CLIENT_METADATA, timeout=20) for _ in range(16)]
            answers = [f.result() for f in calls]
            c = calls[0]
        elif call == "Bidi":
            c = channel.stream_stream(path)(
                iter([b"one", b"two", b"three"]), metadata=CLIENT_METADATA, timeout=20
            )
            for answer in c:
                answers.append(answer)
        else:
            sys.exit("unknown call %s" % call)
        code, details, trailers = c.code(), c.details(), c.trailing_metadata()
    except grpc.RpcError as e:
        code, details, trailers = e.code(), e.details(), e.trailing_metadata()
    return {
        "call": call,
        "code": code.name,
        "details": details or "",
        "answers": [a.decode() for a in answers],
        "trailers": {k: v for k, v in (trailers or ()) if isinstance(v, str)},
    }


def main():
    args = sys.argv[1:]
    ca = None
    if args[:1] == ["--tls"]:
        ca, args = args[1], args[2:]
    target, service, calls = args[0], args[1], args[2:]
    if ca is None:
        channel = grpc.insecure_channel(target)
    else:
        with open(ca, "rb") as f:
            roots = f.read()
        channel = grpc.secure_channel(target, grpc.ssl_channel_credentials(root_certificates=roots))
    with channel:
        for call in calls:
            print(json.dumps(run(channel, service, call)), flush=True)


if __name__ == "__main__":
    main()
