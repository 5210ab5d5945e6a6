"""A Python client of blue-authz: a decision, a batch, and a membership write.

The gRPC stubs are generated from ../../proto at start (grpcio-tools), so they always match the
service. Run by run.sh (and by .ci/run) against a live server on the demo data:

    python client.py --authz unix:/tmp/authz.sock --data unix:/tmp/data.sock --token TOKEN

Exits non-zero if any answer is not the one the demo data and Blue's policies give.
"""

import argparse
import importlib
import os
import sys
import tempfile
import time

import grpc
from grpc_tools import protoc

HERE = os.path.dirname(os.path.abspath(__file__))
PROTO_ROOT = os.path.join(HERE, "..", "..", "proto")
PROTO = "blue/authz/v1/authz.proto"


def load_stubs():
    """Generates authz_pb2 / authz_pb2_grpc from the proto into a temporary directory."""
    out = tempfile.mkdtemp(prefix="blue-authz-stubs-")
    include = os.path.join(os.path.dirname(protoc.__file__), "_proto")
    code = protoc.main(
        [
            "grpc_tools.protoc",
            f"-I{PROTO_ROOT}",
            f"-I{include}",
            f"--python_out={out}",
            f"--grpc_python_out={out}",
            PROTO,
        ]
    )
    if code != 0:
        sys.exit(f"protoc failed on {PROTO} ({code})")
    sys.path.insert(0, out)
    pb = importlib.import_module("blue.authz.v1.authz_pb2")
    rpc = importlib.import_module("blue.authz.v1.authz_pb2_grpc")
    return pb, rpc


pb, rpc = load_stubs()


def uid(type_, id_):
    return pb.EntityUid(type=type_, id=id_)


def ask(user, action, rtype, rid, context="", min_revision=0):
    return pb.IsAuthorizedRequest(
        principal=uid("Blue::User", user),
        action=uid("Blue::Action", action),
        resource=uid(rtype, rid),
        context_json=context,
        min_revision=min_revision,
    )


def expect(what, got, want):
    print(f"{what}: {got}")
    if got != want:
        sys.exit(f"FAIL {what}: expected {want}, got {got}")


def wait_until_serving(authz, seconds=30.0):
    """Retries a decision while the server is still loading (UNAVAILABLE)."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            return authz.IsAuthorized(ask("alice", "viewProject", "Blue::Project", "website"), timeout=5)
        except grpc.RpcError as e:
            if time.monotonic() > deadline or e.code() not in (
                grpc.StatusCode.UNAVAILABLE,
            ):
                raise
            time.sleep(0.1)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--authz", default="127.0.0.1:50051", help="decision service target")
    parser.add_argument("--data", default="127.0.0.1:50052", help="data service target")
    parser.add_argument("--token", default=os.environ.get("BLUE_AUTHZ_DATA_TOKEN", ""))
    parser.add_argument(
        "--after-readme-write",
        action="store_true",
        help="first make the README's own write (frank joins website as a member), as a reader "
        "who followed the README would have",
    )
    args = parser.parse_args()

    # Over a Unix socket grpcio sends the socket path as :authority, which the server's HTTP/2
    # stack refuses as malformed; name an authority explicitly.
    options = [("grpc.default_authority", "localhost")]
    authz = rpc.AuthorizerStub(grpc.insecure_channel(args.authz, options=options))
    data = rpc.EntityStoreStub(grpc.insecure_channel(args.data, options=options))
    auth = [("authorization", f"Bearer {args.token}")]
    ALLOW, DENY = "ALLOW", "DENY"

    def decision(response):
        return pb.Decision.Name(response.decision)

    # One decision, with its explanation.
    d = wait_until_serving(authz)
    if args.after_readme_write:
        frank = '{"uid": {"type": "Blue::User", "id": "frank"}, "attrs": {}, "parents": []}'
        member = pb.Edge(
            child=uid("Blue::User", "frank"), parent=uid("Blue::Role", "website/member")
        )
        data.WriteEntities(
            pb.WriteEntitiesRequest(
                ops=[pb.WriteOp(upsert_json=frank), pb.WriteOp(add_parent=member)]
            ),
            metadata=auth,
        )
        print("  the README's write made first: frank is a member of website")
    expect("alice viewProject website", decision(d), ALLOW)
    print(f"  determined by {list(d.determining_policies)}, policy version {d.policy_version}")
    d = authz.IsAuthorized(ask("erin", "editWiki", "Blue::Project", "website"))
    expect("erin (view) editWiki website", decision(d), DENY)

    # A batch: answers come back in order.
    batch = authz.BatchIsAuthorized(
        pb.BatchIsAuthorizedRequest(
            requests=[
                ask("carol", "deleteRecord", "Blue::Record", "website-2"),  # her own record
                ask("carol", "deleteRecord", "Blue::Record", "website-1"),  # bob's
                ask("alice", "inviteMember", "Blue::Project", "website", '{"role": "admin"}'),
                ask("dave", "inviteMember", "Blue::Project", "website", '{"role": "admin"}'),
            ]
        )
    )
    expect("batch", [decision(r) for r in batch.responses], [ALLOW, DENY, ALLOW, DENY])

    # A membership write, by a user of the client's own (so that a server on which the README's
    # write example already made frank a member answers the same): the user is created, joins
    # website as a member, leaves again, and is deleted. The write's revision, given as
    # min_revision, makes the next decision see it.
    me = f"python-client-{os.getpid()}"
    user = '{"uid": {"type": "Blue::User", "id": "%s"}, "attrs": {}, "parents": []}' % me
    created = data.WriteEntities(
        pb.WriteEntitiesRequest(ops=[pb.WriteOp(upsert_json=user)]), metadata=auth
    )
    d = authz.IsAuthorized(
        ask(me, "viewProject", "Blue::Project", "website", min_revision=created.revision)
    )
    expect(f"{me} viewProject website, before", decision(d), DENY)
    edge = pb.Edge(child=uid("Blue::User", me), parent=uid("Blue::Role", "website/member"))
    written = data.WriteEntities(
        pb.WriteEntitiesRequest(ops=[pb.WriteOp(add_parent=edge)]), metadata=auth
    )
    print(f"  membership written at revision {written.revision}")
    d = authz.IsAuthorized(
        ask(me, "createRecord", "Blue::Project", "website", min_revision=written.revision)
    )
    expect(f"{me} createRecord website, as a member", decision(d), ALLOW)
    removed = data.WriteEntities(
        pb.WriteEntitiesRequest(ops=[pb.WriteOp(remove_parent=edge)]), metadata=auth
    )
    d = authz.IsAuthorized(
        ask(me, "viewProject", "Blue::Project", "website", min_revision=removed.revision)
    )
    expect(f"{me} viewProject website, after leaving", decision(d), DENY)
    data.WriteEntities(
        pb.WriteEntitiesRequest(ops=[pb.WriteOp(delete=uid("Blue::User", me))]), metadata=auth
    )

    # Without the token the data service refuses.
    try:
        data.WriteEntities(pb.WriteEntitiesRequest(ops=[pb.WriteOp(add_parent=edge)]))
        sys.exit("FAIL a write without the token was accepted")
    except grpc.RpcError as e:
        expect("write without the token", e.code(), grpc.StatusCode.UNAUTHENTICATED)
    print("ok: the Python client got every expected answer")


if __name__ == "__main__":
    main()
