"""Drives a running sluice with Python grpcio, the way operators script relays.

Usage: grpcio_client.py TARGET [TCP_TARGET]
  TARGET      e.g. unix:/run/sluice/control.sock (the default socket kind), no channel options
  TCP_TARGET  optional, e.g. 127.0.0.1:2224: also times 20 Offers over TCP control

Compiles control/proto/sluice.proto with grpc_tools into a temporary directory, then calls
Ping, Offer, Answer, Query, List, Statistics and Delete, and lists the services and methods by
server reflection (grpcio-reflection). Exits non-zero with a message on the first failure.
Prints one `ok ...` line per step and, with TCP_TARGET, the median Offer times.
"""

import importlib
import os
import statistics
import sys
import tempfile
import time

import grpc
from grpc_tools import protoc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

PROTO_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "control", "proto")


def stubs():
    out = tempfile.mkdtemp(prefix="sluice-grpcio-")
    rc = protoc.main(
        ["protoc", f"-I{PROTO_DIR}", f"--python_out={out}", f"--grpc_python_out={out}", "sluice.proto"]
    )
    if rc != 0:
        sys.exit(f"protoc failed ({rc})")
    sys.path.insert(0, out)
    return importlib.import_module("sluice_pb2"), importlib.import_module("sluice_pb2_grpc")


def sdp(port):
    return (
        "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
        f"m=audio {port} RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n"
    )


def check(cond, what):
    if not cond:
        sys.exit(f"FAILED: {what}")


def call(pb, stub, call_id):
    offer = stub.Offer(pb.OfferRequest(call_id=call_id, from_tag="a", sdp=sdp(40000)), timeout=5)
    check("m=audio" in offer.sdp and "127.0.0.1" in offer.sdp, f"Offer SDP: {offer.sdp!r}")
    answer = stub.Answer(
        pb.AnswerRequest(call_id=call_id, from_tag="a", to_tag="b", sdp=sdp(40002)), timeout=5
    )
    check("m=audio" in answer.sdp, f"Answer SDP: {answer.sdp!r}")
    return offer, answer


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    pb, pbg = stubs()
    channel = grpc.insecure_channel(sys.argv[1])
    stub = pbg.ControlStub(channel)

    pong = stub.Ping(pb.PingRequest(), timeout=5)
    check(pong.result == "pong", f"Ping: {pong}")
    print(f"ok Ping version={pong.version}")

    call(pb, stub, "grpcio-1")
    print("ok Offer and Answer")
    q = stub.Query(pb.QueryRequest(call_id="grpcio-1"), timeout=5)
    tags = sorted(leg.tag for leg in q.call.legs)
    check(q.call.call_id == "grpcio-1" and tags == ["a", "b"], f"Query: {q}")
    print("ok Query")
    listed = stub.List(pb.ListRequest(), timeout=5)
    check("grpcio-1" in listed.call_ids, f"List: {listed}")
    st = stub.Statistics(pb.StatisticsRequest(), timeout=5)
    check(st.calls_current == 1 and st.ports_in_use > 0, f"Statistics: {st}")
    print("ok List and Statistics")
    d = stub.Delete(pb.DeleteRequest(call_id="grpcio-1"), timeout=5)
    check(d.call.call_id == "grpcio-1", f"Delete: {d}")
    try:
        stub.Query(pb.QueryRequest(call_id="grpcio-1"), timeout=5)
        check(False, "Query after Delete succeeded")
    except grpc.RpcError as e:
        check(e.code() == grpc.StatusCode.NOT_FOUND, f"Query after Delete: {e.code()}")
    print("ok Delete (then NOT_FOUND)")

    db = ProtoReflectionDescriptorDatabase(channel)
    services = db.get_services()
    check("sluice.v1.Control" in services, f"reflection services: {services}")
    fd = db.FindFileContainingSymbol("sluice.v1.Control")
    methods = sorted(m.name for s in fd.service for m in s.method)
    for m in ["Answer", "Delete", "Offer", "Ping", "Query"]:
        check(m in methods, f"reflection methods: {methods}")
    print(f"ok reflection services={','.join(sorted(services))} methods={','.join(methods)}")

    if len(sys.argv) > 2:
        medians = {}
        for name, target in [("unix", sys.argv[1]), ("tcp", sys.argv[2])]:
            s = pbg.ControlStub(grpc.insecure_channel(target))
            took = []
            for i in range(21):
                t = time.perf_counter()
                s.Offer(pb.OfferRequest(call_id=f"t-{name}-{i}", from_tag="a", sdp=sdp(40000)), timeout=5)
                if i > 0:
                    took.append((time.perf_counter() - t) * 1e3)
                s.Delete(pb.DeleteRequest(call_id=f"t-{name}-{i}"), timeout=5)
            medians[name] = statistics.median(took)
        print(f"median Offer ms: unix={medians['unix']:.2f} tcp={medians['tcp']:.2f}")
        check(medians["tcp"] < 20, f"Offer over TCP took {medians['tcp']:.1f} ms (median of 20)")


if __name__ == "__main__":
    main()
