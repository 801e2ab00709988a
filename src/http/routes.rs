//! Every path the port serves, named once: the router registers these, and
//! `Front` labels its latency metrics and picks its fast lane by the same
//! names, so a route cannot be served without a label of its own (a test
//! walks the router's table and every gRPC method in the descriptors).

/// StackState's status check (`Front`'s fast lane for GET).
pub const STATUS: &str = "/api/server/status";
pub const INFO: &str = "/api/server/info";
/// Forward-auth: the bare path, with a slash, and any depth below.
pub const AUTH: &str = "/api/auth";
pub const AUTH_SLASH: &str = "/api/auth/";
pub const AUTH_BELOW: &str = "/api/auth/{*path}";
/// The REST token collection, one token, its rotation, revoke-by-value.
pub const TOKENS: &str = "/api/security/tokens";
pub const TOKEN: &str = "/api/security/tokens/{id}";
pub const ROTATE: &str = "/api/security/tokens/{id}/rotate";
/// The calling token rotating itself (a static path: it wins over `{id}`).
pub const ROTATE_SELF: &str = "/api/security/tokens/self/rotate";
pub const USAGE: &str = "/api/security/tokens/{id}/usage";
pub const REVOKE: &str = "/api/security/tokens/revoke";
pub const TOKEN_REVIEW: &str = "/api/kubernetes/tokenreview";
pub const INTROSPECT: &str = "/oauth2/introspect";
pub const HEALTHZ: &str = "/healthz";
pub const READYZ: &str = "/readyz";
pub const METRICS: &str = "/metrics";

/// The gRPC methods served, as paths (`/package.Service/Method`).
pub const GRPC_METHODS: &[&str] = &[
    "/stackstate.servicetoken.v1.TokenService/Validate",
    "/envoy.service.auth.v3.Authorization/Check",
    "/stackstate.servicetoken.v1.TokenService/Create",
    "/stackstate.servicetoken.v1.TokenService/List",
    "/stackstate.servicetoken.v1.TokenService/Delete",
    "/stackstate.servicetoken.v1.TokenService/Get",
    "/stackstate.servicetoken.v1.TokenService/Update",
    "/stackstate.servicetoken.v1.TokenService/Rotate",
    "/stackstate.servicetoken.v1.TokenService/RevokeLeaked",
    "/stackstate.servicetoken.v1.TokenService/GetUsage",
    "/stackstate.servicetoken.v1.TokenService/RotateSelf",
    "/stackstate.servicetoken.v1.TokenService/Watch",
    "/stackstate.servicetoken.v1.TokenService/ReportUses",
];

/// Watch: long-lived, so its connection is kept busy while it is open.
pub const GRPC_WATCH: &str = GRPC_METHODS[11];

/// gRPC's health check (answered even past the in-flight bound).
pub const GRPC_HEALTH_CHECK: &str = "/grpc.health.v1.Health/Check";

/// gRPC services served whole (their methods are tonic's): the prefix
/// their methods' paths start with, and the one label they share.
pub const GRPC_SERVICES: &[(&str, &str)] = &[
    ("/grpc.health.v1.Health/", "/grpc.health.v1.Health/{*rest}"),
    (
        "/grpc.reflection.v1.ServerReflection/",
        "/grpc.reflection.v1.ServerReflection/{*rest}",
    ),
    (
        "/grpc.reflection.v1alpha.ServerReflection/",
        "/grpc.reflection.v1alpha.ServerReflection/{*rest}",
    ),
];
