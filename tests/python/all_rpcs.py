"""Calls every RPC of the sidecar with stock Python grpcio over one target, default options.

Usage: all_rpcs.py PROTO_DIR OUT_DIR TARGET ADMIN_TOKEN

Generates the authz.v1 stubs from PROTO_DIR into OUT_DIR with grpcio-tools, then talks to
TARGET (`127.0.0.1:PORT` or `unix:/path/to.sock`) through `grpc.insecure_channel(TARGET)` with
no channel options, against a sidecar serving examples/monitoring-apps.yaml. Prints one line per
RPC and exits non-zero, naming the RPC, on the first unexpected answer.
"""

import os
import sys

import grpc
from grpc_tools import protoc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

proto_dir, out_dir, target, token = sys.argv[1:5]
code = protoc.main(
    [
        "grpc_tools.protoc",
        f"-I{proto_dir}",
        f"--python_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        os.path.join(proto_dir, "authz", "v1", "authz.proto"),
    ]
)
if code != 0:
    sys.exit(f"grpc_tools.protoc failed with {code}")
sys.path.insert(0, out_dir)
from authz.v1 import authz_pb2 as pb  # noqa: E402
from authz.v1 import authz_pb2_grpc as pb_grpc  # noqa: E402


def expect(rpc, condition, got):
    if not condition:
        sys.exit(f"{rpc}: unexpected answer over {target}: {got}")
    print(f"ok {rpc}")


channel = grpc.insecure_channel(target)
admin = (("authorization", f"Bearer {token}"),)
authz = pb_grpc.AuthzStub(channel)

# grpc.health.v1
health = health_pb2_grpc.HealthStub(channel)
for service in ("", "authz.v1.Authz"):
    r = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
    expect(f"Health.Check({service!r})", r.status == health_pb2.HealthCheckResponse.SERVING, r)

# Reflection, v1alpha (the Python client) and v1 (same messages, other service name).
def reflect(method):
    call = channel.stream_stream(
        method,
        request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
        response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
    )
    requests = [
        reflection_pb2.ServerReflectionRequest(list_services=""),
        reflection_pb2.ServerReflectionRequest(
            file_containing_symbol="envoy.service.auth.v3.Authorization"
        ),
        reflection_pb2.ServerReflectionRequest(file_containing_symbol="authz.v1.Authz"),
    ]
    return list(call(iter(requests), timeout=10))


for version in ("v1alpha", "v1"):
    rpc = f"grpc.reflection.{version}.ServerReflection/ServerReflectionInfo"
    listed, envoy_file, authz_file = reflect(f"/{rpc}")
    names = {s.name for s in listed.list_services_response.service}
    wanted = {
        "authz.v1.Authz",
        "grpc.health.v1.Health",
        "envoy.service.auth.v3.Authorization",
    }
    expect(f"{rpc} list_services", wanted <= names, names)
    expect(
        f"{rpc} file_containing_symbol(envoy.service.auth.v3.Authorization)",
        len(envoy_file.file_descriptor_response.file_descriptor_proto) > 0,
        envoy_file,
    )
    expect(
        f"{rpc} file_containing_symbol(authz.v1.Authz)",
        len(authz_file.file_descriptor_response.file_descriptor_proto) > 0,
        authz_file,
    )
# The stock Python reflection stub as well.
stub = reflection_pb2_grpc.ServerReflectionStub(channel)
answers = list(
    stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
)
expect("ServerReflectionStub (v1alpha)", len(answers) == 1, answers)

# authz.v1.Authz: every RPC.
r = authz.Check(
    pb.CheckRequest(
        subject="dispatcher",
        http=pb.HttpRequest(method="POST", path="/v1/alarms/a1/dispatch"),
    ),
    timeout=10,
)
expect("Check (http, allowed)", r.allowed and list(r.required) == ["alarms:write"], r)
r = authz.Check(pb.CheckRequest(subject="dashboard", permission="alarms:write"), timeout=10)
expect("Check (permission, denied)", not r.allowed and r.reason, r)
r = authz.Check(pb.CheckRequest(subject="ai-verifier", event="snapshot.created"), timeout=10)
expect("Check (event, allowed)", r.allowed, r)

r = authz.ListRoles(pb.ListRolesRequest(kind="app"), timeout=10)
expect("ListRoles", {"app-dashboard", "app-dispatcher"} <= {x.name for x in r.roles}, r)

try:
    authz.ListAudit(pb.ListAuditRequest(), timeout=10)
    sys.exit("ListAudit without a token was answered")
except grpc.RpcError as e:
    expect("ListAudit (no token)", e.code() == grpc.StatusCode.UNAUTHENTICATED, e.code())

r = authz.UpdatePermission(
    pb.UpdatePermissionRequest(
        role="app-dashboard", set=pb.RolePermission(name="alarms:write", enabled=True)
    ),
    metadata=admin,
    timeout=10,
)
expect("UpdatePermission", r.pending_approval and "alarms:write" in r.role.pending, r)
r = authz.ApprovePending(pb.ApprovePendingRequest(role="app-dashboard"), metadata=admin, timeout=10)
expect("ApprovePending (role)", not r.role.pending, r)
r = authz.Check(pb.CheckRequest(subject="dashboard", permission="alarms:write"), timeout=10)
expect("Check (after approval)", r.allowed, r)

r = authz.PutSubject(
    pb.PutSubjectRequest(subject=pb.Subject(id="py-app", type="app", roles=["app-readonly"])),
    metadata=admin,
    timeout=10,
)
if r.pending_approval:
    r = authz.ApprovePending(pb.ApprovePendingRequest(subject="py-app"), metadata=admin, timeout=10)
expect("PutSubject", r.revision > 0, r)
r = authz.Check(pb.CheckRequest(subject="py-app", permission="devices:read"), timeout=10)
expect("Check (new subject)", r.allowed, r)
r = authz.DeleteSubject(pb.DeleteSubjectRequest(id="py-app"), metadata=admin, timeout=10)
expect("DeleteSubject", r.revision > 0, r)
r = authz.Check(pb.CheckRequest(subject="py-app", permission="devices:read"), timeout=10)
expect("Check (deleted subject)", not r.allowed, r)

r = authz.ListAudit(pb.ListAuditRequest(), metadata=admin, timeout=10)
actions = [e.action for e in r.entries]
expect("ListAudit", len(actions) >= 3, actions)
print("all RPCs answered over", target)
