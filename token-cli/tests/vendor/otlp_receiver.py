"""A real OTLP/HTTP trace receiver for token-cli/tests/observe.rs.

Listens on 127.0.0.1 (port 0: the OS picks), prints `listening PORT` on
stdout, decodes every POST /v1/traces body as an
opentelemetry.proto ExportTraceServiceRequest (protobuf, as OTLP/HTTP
sends it) and appends one JSON line per span to the file named by argv[1]:
name, trace_id, span_id, parent_span_id (hex), kind, attributes (string
values), and the service.name of its resource. Answers 200 with an empty
ExportTraceServiceResponse; anything it cannot decode gets a 400.
"""

import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

OUT = sys.argv[1]
MAX_BODY = 16 * 1024 * 1024


def value(v):
    kind = v.WhichOneof("value")
    return str(getattr(v, kind)) if kind else ""


class Handler(BaseHTTPRequestHandler):
    timeout = 10

    def do_POST(self):
        length = int(self.headers.get("content-length", "0"))
        if self.path != "/v1/traces" or not 0 < length <= MAX_BODY:
            self.send_error(400, "want POST /v1/traces with a body")
            return
        if self.headers.get("content-type") != "application/x-protobuf":
            self.send_error(400, "want application/x-protobuf")
            return
        req = ExportTraceServiceRequest()
        try:
            req.ParseFromString(self.rfile.read(length))
        except Exception as e:  # noqa: BLE001 - any decode error is a 400
            self.send_error(400, f"not an ExportTraceServiceRequest: {e}")
            return
        with open(OUT, "a", encoding="utf-8") as f:
            for rs in req.resource_spans:
                service = {a.key: value(a.value) for a in rs.resource.attributes}.get(
                    "service.name", ""
                )
                for ss in rs.scope_spans:
                    for s in ss.spans:
                        f.write(
                            json.dumps(
                                {
                                    "service": service,
                                    "name": s.name,
                                    "trace_id": s.trace_id.hex(),
                                    "span_id": s.span_id.hex(),
                                    "parent_span_id": s.parent_span_id.hex(),
                                    "kind": s.kind,
                                    "attributes": {
                                        a.key: value(a.value) for a in s.attributes
                                    },
                                }
                            )
                            + "\n"
                        )
        body = ExportTraceServiceResponse().SerializeToString()
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


if __name__ == "__main__":
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    print(f"listening {server.server_address[1]}", flush=True)
    server.serve_forever()
