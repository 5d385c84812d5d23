//! `GET /api/v1/openapi.json`: the OpenAPI 3.1 document, built from [`OPERATIONS`] — one line per
//! route, with who may call it. A test compares this table with every `.route(...)` in
//! `central/src/api/` and fails on a route missing here; the role-matrix test drives every role
//! against every operation from the same table. Adding a route means adding its line.

use axum::Router;
use axum::routing::get;
use serde_json::{Value, json};

use super::auth::{MANAGE_USERS, READ_DATA, READ_LOGS, Role};
use super::{ApiState, alarms, configs, enrolments, keys, updates};

/// Who may call an operation.
#[derive(Debug, Clone, Copy)]
pub enum Access {
    /// Anyone, without authentication.
    Public,
    /// Any authenticated user.
    Authenticated,
    /// Only these roles (others: 403).
    Roles(&'static [Role]),
}

/// One documented operation.
#[derive(Debug, Clone, Copy)]
pub struct Operation {
    /// HTTP method, lower case.
    pub method: &'static str,
    /// Path template (axum and OpenAPI agree on `{name}`).
    pub path: &'static str,
    /// Group.
    pub tag: &'static str,
    /// One line.
    pub summary: &'static str,
    /// Who may call it.
    pub access: Access,
    /// Query parameters: (name, JSON type, required).
    pub query: &'static [(&'static str, &'static str, bool)],
    /// Request body schema (a component name).
    pub body: Option<&'static str>,
    /// Success status and schema (a component name).
    pub ok: (u16, &'static str),
}

const LIST: &[(&str, &str, bool)] = &[("limit", "integer", false), ("cursor", "string", false)];
const RANGE: &[(&str, &str, bool)] = &[
    ("point", "string", true),
    ("from", "integer", true),
    ("to", "integer", true),
    ("limit", "integer", false),
    ("bucket_ms", "integer", false),
];

const ALARM_FILTER: &[(&str, &str, bool)] = &[
    ("open", "boolean", false),
    ("state", "string", false),
    ("grade", "string", false),
    ("enterprise", "string", false),
    ("point", "string", false),
    ("condition", "string", false),
    ("from_ms", "integer", false),
    ("to_ms", "integer", false),
    ("limit", "integer", false),
    ("cursor", "string", false),
];

const fn op(
    method: &'static str,
    path: &'static str,
    tag: &'static str,
    summary: &'static str,
    access: Access,
    ok: (u16, &'static str),
) -> Operation {
    Operation { method, path, tag, summary, access, query: &[], body: None, ok }
}

const fn with_query(mut o: Operation, q: &'static [(&'static str, &'static str, bool)]) -> Operation {
    o.query = q;
    o
}

const fn with_body(mut o: Operation, body: &'static str) -> Operation {
    o.body = Some(body);
    o
}

/// A request body of raw bytes (`application/octet-stream`), not JSON.
pub const BINARY_BODY: &str = "(binary)";

/// Every route of the API.
pub const OPERATIONS: &[Operation] = &[
    with_body(
        op(
            "post",
            "/api/v1/auth/login",
            "auth",
            "Log in: a session token (also set as the vigil_session cookie)",
            Access::Public,
            (200, "Session"),
        ),
        "Login",
    ),
    op("post", "/api/v1/auth/logout", "auth", "End this session", Access::Authenticated, (204, "")),
    op("get", "/api/v1/auth/me", "auth", "This session", Access::Authenticated, (200, "Session")),
    with_body(
        op(
            "post",
            "/api/v1/auth/password",
            "auth",
            "Change a password (with a session, or naming the user when it expired)",
            Access::Public,
            (200, "Session"),
        ),
        "PasswordChange",
    ),
    op("get", "/api/v1/users", "users", "Users", Access::Roles(MANAGE_USERS), (200, "UserPage")),
    with_body(
        op("post", "/api/v1/users", "users", "Create a user", Access::Roles(MANAGE_USERS), (201, "CreatedUser")),
        "NewUser",
    ),
    with_body(
        op(
            "patch",
            "/api/v1/users/{name}",
            "users",
            "Change a user's role, scope, state or password; unlock",
            Access::Roles(MANAGE_USERS),
            (200, "User"),
        ),
        "UserPatch",
    ),
    with_query(
        op(
            "get",
            "/api/v1/api-calls",
            "logs",
            "The API-call log, newest first (?format=csv exports)",
            Access::Roles(READ_LOGS),
            (200, "CallPage"),
        ),
        &[
            ("user", "string", false),
            ("status", "integer", false),
            ("path", "string", false),
            ("from_ms", "integer", false),
            ("to_ms", "integer", false),
            ("limit", "integer", false),
            ("cursor", "string", false),
            ("format", "string", false),
        ],
    ),
    with_query(
        op(
            "get",
            "/api/v1/audit",
            "logs",
            "The security audit log or (source=alarms) the alarm audit chain",
            Access::Roles(READ_LOGS),
            (200, "AuditPage"),
        ),
        &[
            ("source", "string", false),
            ("from_ms", "integer", false),
            ("to_ms", "integer", false),
            ("limit", "integer", false),
            ("cursor", "string", false),
            ("format", "string", false),
        ],
    ),
    with_query(
        op(
            "get",
            "/api/v1/enterprises",
            "resources",
            "Enterprises with registered gateways",
            Access::Roles(READ_DATA),
            (200, "EnterprisePage"),
        ),
        LIST,
    ),
    with_query(
        op(
            "get",
            "/api/v1/gateways",
            "resources",
            "Gateways with status",
            Access::Roles(READ_DATA),
            (200, "GatewayPage"),
        ),
        &[("enterprise", "string", false), ("limit", "integer", false), ("cursor", "string", false)],
    ),
    op("get", "/api/v1/gateways/{id}", "resources", "One gateway", Access::Roles(READ_DATA), (200, "Gateway")),
    with_body(
        op(
            "post",
            "/api/v1/gateways/{id}/keys",
            "resources",
            "Register another signing key of the gateway (rotation; the old one stays valid until revoked)",
            Access::Roles(keys::MANAGE_KEYS),
            (201, "GatewayKeys"),
        ),
        "NewGatewayKey",
    ),
    op(
        "delete",
        "/api/v1/gateways/{id}/keys/{key_id}",
        "resources",
        "Revoke one key of the gateway: its batches are refused from the next registry reload on",
        Access::Roles(keys::MANAGE_KEYS),
        (200, "GatewayKeys"),
    ),
    op(
        "post",
        "/api/v1/gateways/{id}/revoke",
        "resources",
        "Revoke every key of the gateway (theft, decommissioning); the broker disconnects it",
        Access::Roles(keys::REVOKE_GATEWAY),
        (200, "GatewayKeys"),
    ),
    with_body(
        op(
            "post",
            "/api/v1/gateways/{id}/config",
            "configuration",
            "Push a configuration file to a gateway (signed, on down/cmd; validated and applied there)",
            Access::Roles(configs::CONFIGURE),
            (202, "ConfigPush"),
        ),
        "NewConfigPush",
    ),
    with_query(
        op(
            "get",
            "/api/v1/gateways/{id}/config",
            "configuration",
            "The gateway's running configuration version and its pushes with their outcomes",
            Access::Roles(READ_DATA),
            (200, "ConfigPushes"),
        ),
        &[("limit", "integer", false)],
    ),
    op(
        "get",
        "/api/v1/gateways/{id}/config/{version}",
        "configuration",
        "One configuration push with its file",
        Access::Roles(READ_DATA),
        (200, "ConfigPushDocument"),
    ),
    // Gateway updates (central/src/api/updates.rs).
    with_body(
        op(
            "post",
            "/api/v1/updates",
            "updates",
            "Upload a signed update bundle (raw body, at most 256 MiB; header and length checked; an identical upload answers the stored bundle)",
            Access::Roles(updates::UPLOAD),
            (201, "UpdateBundle"),
        ),
        BINARY_BODY,
    ),
    with_query(
        op(
            "get",
            "/api/v1/updates",
            "updates",
            "Stored update bundles, newest first",
            Access::Roles(updates::ORDER),
            (200, "UpdateBundlePage"),
        ),
        &[("limit", "integer", false)],
    ),
    op(
        "get",
        "/api/v1/updates/download",
        "updates",
        "A gateway downloads the bundle of its order (the order's token in x-vigil-download-token; no session)",
        Access::Public,
        (200, ""),
    ),
    with_body(
        op(
            "post",
            "/api/v1/gateways/{id}/update",
            "updates",
            "Order a gateway to install a stored bundle (signed, on down/cmd; downloaded and checked there)",
            Access::Roles(updates::ORDER),
            (202, "UpdateOrder"),
        ),
        "NewUpdateOrder",
    ),
    with_query(
        op(
            "get",
            "/api/v1/gateways/{id}/update",
            "updates",
            "What the gateway runs and its update orders with their status, newest first",
            Access::Roles(READ_DATA),
            (200, "GatewayUpdates"),
        ),
        &[("limit", "integer", false)],
    ),
    op("get", "/api/v1/health", "resources", "Whether central's parts answer", Access::Public, (200, "Health")),
    with_body(
        op(
            "post",
            "/api/v1/enrolments",
            "enrolment",
            "Create a one-time enrolment token for a gateway (field technicians: assigned enterprises)",
            Access::Roles(enrolments::ENROL),
            (201, "EnrolmentToken"),
        ),
        "NewEnrolment",
    ),
    op(
        "get",
        "/api/v1/enrolments",
        "enrolment",
        "Pending enrolments (never the tokens)",
        Access::Roles(enrolments::ENROL),
        (200, "EnrolmentPage"),
    ),
    op(
        "delete",
        "/api/v1/enrolments/{id}",
        "enrolment",
        "Revoke a pending enrolment token (its id as listed); a used one cannot be revoked",
        Access::Roles(enrolments::ENROL),
        (200, "Enrolment"),
    ),
    with_body(
        op(
            "post",
            "/api/v1/enrol",
            "enrolment",
            "A gateway redeems its token: its key is registered, its certificate request signed",
            Access::Public,
            (200, "Enrolled"),
        ),
        "Enrol",
    ),
    with_query(
        op(
            "get",
            "/api/v1/points",
            "points",
            "Configured and stored points with unit, range, device and alarm limits",
            Access::Roles(READ_DATA),
            (200, "PointPage"),
        ),
        &[
            ("gateway", "string", false),
            ("enterprise", "string", false),
            ("device", "string", false),
            ("q", "string", false),
            ("limit", "integer", false),
            ("cursor", "string", false),
        ],
    ),
    with_query(
        op(
            "get",
            "/api/v1/devices",
            "points",
            "Devices of the gateways' catalogues, with protocol, address and point count",
            Access::Roles(READ_DATA),
            (200, "DevicePage"),
        ),
        &[
            ("gateway", "string", false),
            ("enterprise", "string", false),
            ("limit", "integer", false),
            ("cursor", "string", false),
        ],
    ),
    op(
        "get",
        "/api/v1/gateways/{id}/catalogue",
        "points",
        "The gateway's point catalogue (signed by it, or imported) and whether it matches what it runs",
        Access::Roles(READ_DATA),
        (200, "StoredCatalogue"),
    ),
    with_body(
        op(
            "put",
            "/api/v1/gateways/{id}/catalogue",
            "points",
            "Import a `vigil-edge catalogue` document for a gateway that has not reported its own (409 once it has)",
            Access::Roles(configs::CONFIGURE),
            (201, "StoredCatalogue"),
        ),
        "CatalogueDocument",
    ),
    with_query(
        op(
            "get",
            "/api/v1/latest",
            "history",
            "Latest sample of points (comma-separated gateway/point)",
            Access::Roles(READ_DATA),
            (200, "Latest"),
        ),
        &[("points", "string", true)],
    ),
    with_query(
        op(
            "get",
            "/api/v1/raw",
            "history",
            "Raw samples of a point in [from, to)",
            Access::Roles(READ_DATA),
            (200, "Raw"),
        ),
        RANGE,
    ),
    with_query(
        op(
            "get",
            "/api/v1/aggregate",
            "history",
            "Aggregates of a point over buckets of bucket_ms",
            Access::Roles(READ_DATA),
            (200, "Aggregate"),
        ),
        RANGE,
    ),
    op("get", "/metrics", "resources", "Prometheus metrics of this process (text)", Access::Public, (200, "")),
    op("get", "/api/v1/openapi.json", "resources", "This document", Access::Public, (200, "")),
    // Camera evidence (central/src/api/evidence.rs): snapshots that came with gas detections.
    with_query(
        op(
            "get",
            "/api/v1/evidence",
            "evidence",
            "A camera's stored snapshots",
            Access::Roles(READ_DATA),
            (200, "Object"),
        ),
        &[("gateway", "string", true), ("camera", "string", true)],
    ),
    op("get", "/api/v1/evidence/{sha256}", "evidence", "One snapshot image", Access::Roles(READ_DATA), (200, "")),
    // The alarm engine's routes (central/src/api/alarms.rs), with the roles checked there.
    with_query(
        op(
            "get",
            "/api/v1/alarms",
            "alarms",
            "Alarms, newest first, filtered",
            Access::Roles(alarms::READ),
            (200, "Object"),
        ),
        ALARM_FILTER,
    ),
    op(
        "get",
        "/api/v1/alarms/stream",
        "alarms",
        "Server-Sent Events of alarm changes (honours Last-Event-ID, else event: resync)",
        Access::Roles(alarms::READ),
        (200, ""),
    ),
    op("get", "/api/v1/alarms/{id}", "alarms", "One alarm", Access::Roles(alarms::READ), (200, "Object")),
    op(
        "get",
        "/api/v1/alarms/{id}/timeline",
        "alarms",
        "An alarm's timeline",
        Access::Roles(alarms::READ),
        (200, "Object"),
    ),
    with_body(
        op(
            "post",
            "/api/v1/alarms/{id}/{action}",
            "alarms",
            "An action: acknowledge, verify, false-alarm, dispatch, feedback, report, review, close, shelve, unshelve (409 when the state refuses it)",
            Access::Roles(alarms::FEEDBACK),
            (200, "Object"),
        ),
        "Object",
    ),
    op("get", "/api/v1/windows", "alarms", "Maintenance windows", Access::Roles(alarms::READ), (200, "Object")),
    with_body(
        op(
            "post",
            "/api/v1/windows",
            "alarms",
            "Request a maintenance window",
            Access::Roles(alarms::REQUEST_WINDOW),
            (200, "Object"),
        ),
        "Object",
    ),
    with_body(
        op(
            "post",
            "/api/v1/windows/{id}/{verb}",
            "alarms",
            "Approve or reject a window",
            Access::Roles(alarms::ACT),
            (200, "Object"),
        ),
        "Object",
    ),
    op(
        "get",
        "/api/v1/thresholds",
        "alarms",
        "Threshold change requests",
        Access::Roles(alarms::READ),
        (200, "Object"),
    ),
    with_body(
        op(
            "post",
            "/api/v1/thresholds",
            "alarms",
            "Request a threshold change",
            Access::Roles(alarms::ACT),
            (200, "Object"),
        ),
        "Object",
    ),
    with_body(
        op(
            "post",
            "/api/v1/thresholds/{id}/{verb}",
            "alarms",
            "Approve or reject a threshold change",
            Access::Roles(alarms::APPROVE_THRESHOLD),
            (200, "Object"),
        ),
        "Object",
    ),
    with_query(
        op(
            "get",
            "/api/v1/kpis",
            "alarms",
            "Alarm-load KPIs per enterprise (JSON or CSV)",
            Access::Roles(alarms::READ),
            (200, "Object"),
        ),
        &[("from_ms", "integer", false), ("to_ms", "integer", false), ("format", "string", false)],
    ),
];

fn schemas() -> Value {
    let ms = json!({ "type": "integer", "description": "UTC milliseconds" });
    let nullable_ms = json!({ "type": ["integer", "null"], "description": "UTC milliseconds" });
    let role = json!({ "type": "string", "enum": Role::ALL.iter().map(|r| r.as_str()).collect::<Vec<_>>() });
    let enterprises = json!({ "type": ["array", "null"], "items": { "type": "string" } });
    let page = |item: &str| {
        json!({
            "type": "object", "required": ["items", "next_cursor"],
            "properties": { "items": { "type": "array", "items": { "$ref": format!("#/components/schemas/{item}") } },
                            "next_cursor": { "type": ["string", "null"] } }
        })
    };
    let mut all = json!({
        "Problem": { "type": "object", "required": ["type", "title", "status", "detail"], "properties": {
            "type": { "type": "string" }, "title": { "type": "string" }, "status": { "type": "integer" },
            "detail": { "type": "string" }, "attempts_remaining": { "type": "integer" },
            "locked_until_ms": ms, "password_expired": { "type": "boolean" }, "rule": { "type": "string" } } },
        "Object": { "type": "object" },
        "Login": { "type": "object", "required": ["user", "password"], "additionalProperties": false,
            "properties": { "user": { "type": "string" }, "password": { "type": "string" } } },
        "PasswordChange": { "type": "object", "required": ["old", "new"], "additionalProperties": false,
            "properties": { "user": { "type": "string" }, "old": { "type": "string" }, "new": { "type": "string" } } },
        "Session": { "type": "object", "required": ["expires_at_ms", "user", "role", "enterprises", "password_expires_at_ms"],
            "properties": { "token": { "type": "string" }, "expires_at_ms": ms, "user": { "type": "string" }, "role": role,
                "enterprises": enterprises, "password_expires_at_ms": nullable_ms } },
        "User": { "type": "object", "required": ["name", "role", "enterprises", "disabled", "created_ms", "password_changed_ms", "must_change"],
            "properties": { "name": { "type": "string" }, "role": role, "enterprises": enterprises, "disabled": { "type": "boolean" },
                "created_ms": ms, "password_changed_ms": ms, "password_expires_at_ms": nullable_ms, "must_change": { "type": "boolean" },
                "locked_until_ms": nullable_ms, "last_login_ms": nullable_ms } },
        "UserPage": page("User"),
        "NewUser": { "type": "object", "required": ["name", "role"], "additionalProperties": false,
            "properties": { "name": { "type": "string" }, "role": role, "enterprises": enterprises, "password": { "type": "string" } } },
        "CreatedUser": { "type": "object", "required": ["user", "password"], "properties": {
            "user": { "$ref": "#/components/schemas/User" }, "password": { "type": ["string", "null"] } } },
        "UserPatch": { "type": "object", "additionalProperties": false, "properties": {
            "role": role, "enterprises": enterprises, "disabled": { "type": "boolean" }, "password": { "type": "string" },
            "unlock": { "type": "boolean" } } },
        "Call": { "type": "object", "properties": { "id": { "type": "integer" }, "ts_ms": ms, "user": { "type": ["string", "null"] },
            "role": { "type": ["string", "null"] }, "method": { "type": "string" }, "path": { "type": "string" },
            "query": { "type": "string" }, "status": { "type": "integer" }, "latency_us": { "type": "integer" },
            "client": { "type": "string" } } },
        "CallPage": page("Call"),
        "AuditEntry": { "type": "object", "properties": { "id": { "type": "integer" }, "ts_ms": ms, "actor": { "type": "string" },
            "action": { "type": "string" }, "target": { "type": "string" }, "detail": { "type": "string" },
            "client": { "type": "string" }, "hash": { "type": "string" } } },
        "AuditPage": page("AuditEntry"),
        "Enterprise": { "type": "object", "properties": { "id": { "type": "string" }, "gateways": { "type": "integer" },
            "online": { "type": "integer" } } },
        "EnterprisePage": page("Enterprise"),
        "Gateway": { "type": "object", "required": ["id", "enterprise", "keys"], "properties": {
            "id": { "type": "string" }, "enterprise": { "type": "string" }, "online": { "type": ["boolean", "null"] },
            "last_seen_ms": nullable_ms, "state_ms": nullable_ms, "agent_version": { "type": ["string", "null"] },
            "config_version": { "type": ["integer", "null"] },
            "config_push": { "type": ["object", "null"], "properties": { "version": { "type": "integer" },
                "status": { "type": "string" }, "detail": { "type": ["string", "null"] }, "ts_ms": { "type": "integer" } } },
            "spool_batches": { "type": ["array", "null"], "items": { "type": "integer" } },
            "spool_bytes": { "type": ["integer", "null"] }, "oldest_unacked_age_ms": { "type": ["integer", "null"] },
            "dropped": {}, "clock_offset_ms": { "type": ["integer", "null"] },
            "keys": { "type": "array", "items": { "type": "object" } } } },
        "GatewayPage": page("Gateway"),
        "NewConfigPush": { "type": "object", "required": ["toml"], "additionalProperties": false,
            "properties": { "toml": { "type": "string", "description": "The whole gateway configuration file" } } },
        "ConfigPush": { "type": "object", "required": ["gateway", "version", "sha256", "pushed_by", "pushed_ms", "status"], "properties": {
            "gateway": { "type": "string" }, "version": { "type": "integer" }, "sha256": { "type": "string" },
            "pushed_by": { "type": "string" }, "pushed_ms": { "type": "integer" }, "sent_ms": { "type": ["integer", "null"] },
            "status": { "type": "string", "enum": ["sent", "on_trial", "applied", "rejected", "rolled_back", "superseded"] },
            "detail": { "type": ["string", "null"] }, "result_ms": { "type": ["integer", "null"] } } },
        "ConfigPushes": { "type": "object", "required": ["gateway", "items"], "properties": {
            "gateway": { "type": "string" }, "running_version": { "type": ["integer", "null"] },
            "running_sha256": { "type": ["string", "null"] },
            "items": { "type": "array", "items": { "$ref": "#/components/schemas/ConfigPush" } } } },
        "ConfigPushDocument": { "allOf": [ { "$ref": "#/components/schemas/ConfigPush" },
            { "type": "object", "required": ["toml"], "properties": { "toml": { "type": "string" } } } ] },
        "Sample": { "type": "object", "properties": { "ts_ms": ms, "value": {}, "quality": { "type": "integer" } } },
        "Latest": { "type": "object", "properties": { "points": { "type": "array", "items": { "type": "object", "properties": {
            "point": { "type": "string" }, "sample": { "oneOf": [{ "$ref": "#/components/schemas/Sample" }, { "type": "null" }] } } } } } },
        "Raw": { "type": "object", "properties": { "point": { "type": "string" },
            "samples": { "type": "array", "items": { "$ref": "#/components/schemas/Sample" } } } },
        "Aggregate": { "type": "object", "properties": { "point": { "type": "string" },
            "buckets": { "type": "array", "items": { "type": "object" } } } },
        "Health": { "type": "object", "required": ["status"], "properties": { "status": { "type": "string", "enum": ["ok", "degraded"] },
            "version": { "type": "string" }, "started_ms": ms, "checks": { "type": "object" } } },
    });
    if let (Some(all), Value::Object(more)) = (all.as_object_mut(), enrolment_schemas(&ms)) {
        all.extend(more);
    }
    if let (Some(all), Value::Object(more)) = (all.as_object_mut(), update_schemas()) {
        all.extend(more);
    }
    if let (Some(all), Value::Object(more)) = (all.as_object_mut(), point_schemas()) {
        all.extend(more);
    }
    all
}

/// The point, device and catalogue components.
fn point_schemas() -> Value {
    let text = json!({ "type": "string" });
    let opt_text = json!({ "type": ["string", "null"] });
    let range = json!({ "type": ["array", "null"], "items": { "type": "number" }, "minItems": 2, "maxItems": 2 });
    let page = |item: &str| {
        json!({ "type": "object", "required": ["items", "next_cursor"], "properties": {
            "items": { "type": "array", "items": { "$ref": format!("#/components/schemas/{item}") } },
            "next_cursor": { "type": ["string", "null"] } } })
    };
    json!({
        "Point": { "type": "object", "required": ["key", "gateway", "point", "configured", "stored"], "properties": {
            "key": text, "gateway": text, "point": text, "enterprise": opt_text, "device": opt_text,
            "unit": opt_text, "range": range, "poll_ms": { "type": ["integer", "null"] }, "address": opt_text,
            "limits": { "type": ["object", "null"] },
            "configured": { "type": "boolean", "description": "listed in the gateway's catalogue" },
            "stored": { "type": "boolean", "description": "central holds history for it" } } },
        "PointPage": page("Point"),
        "Device": { "type": "object", "required": ["key", "gateway", "name", "protocol", "address", "points", "source"], "properties": {
            "key": text, "gateway": text, "enterprise": opt_text, "name": text,
            "protocol": { "type": "string", "enum": ["modbus_tcp", "modbus_rtu", "opcua", "derived"] },
            "address": text, "profile": opt_text, "points": { "type": "integer" },
            "source": { "type": "string", "enum": ["gateway", "import"] } } },
        "DevicePage": page("Device"),
        "NewGatewayKey": { "type": "object", "required": ["public_key"], "additionalProperties": false, "properties": {
            "public_key": { "type": "string", "description": "ed25519:<64 hex digits>, as vigil-edge keygen prints it" } } },
        "GatewayKeys": { "type": "object", "required": ["gateway", "keys"], "properties": { "gateway": text,
            "keys": { "type": "array", "items": { "type": "object", "properties": { "key_id": text, "public_key": text,
                "valid_from_ms": { "type": "integer" }, "valid_until_ms": { "type": ["integer", "null"] },
                "revoked_ms": { "type": ["integer", "null"] } } } } } },
        "CatalogueDocument": { "type": "object", "required": ["gateway", "ts_ms", "config_sha256", "devices", "points"],
            "additionalProperties": false, "properties": {
            "gateway": text, "ts_ms": { "type": "integer" },
            "config_sha256": { "type": "string", "description": "SHA-256 of the configuration file, 64 hex digits" },
            "devices": { "type": "array", "items": { "type": "object", "required": ["name", "protocol", "address"],
                "additionalProperties": false, "properties": { "name": text,
                "protocol": { "type": "string", "enum": ["modbus_tcp", "modbus_rtu", "opcua", "derived"] },
                "address": text, "profile": opt_text } } },
            "points": { "type": "array", "items": { "type": "object", "required": ["id", "device"],
                "additionalProperties": false, "properties": { "id": text, "device": text, "unit": text, "range": range,
                "poll_ms": { "type": "integer", "minimum": 0 }, "deadband": { "type": "number", "minimum": 0 },
                "address": text } } } } },
        "StoredCatalogue": { "type": "object", "required": ["gateway", "source", "received_ms", "document"], "properties": {
            "gateway": text, "source": { "type": "string", "enum": ["gateway", "import"] },
            "received_ms": { "type": "integer" }, "imported_by": opt_text,
            "current": { "type": ["boolean", "null"], "description": "describes the configuration the gateway reported running" },
            "document": { "$ref": "#/components/schemas/CatalogueDocument" } } },
    })
}

/// The update components.
fn update_schemas() -> Value {
    let int = json!({ "type": "integer" });
    let text = json!({ "type": "string" });
    let opt_int = json!({ "type": ["integer", "null"] });
    let opt_text = json!({ "type": ["string", "null"] });
    json!({
        "UpdateBundle": { "type": "object",
            "required": ["sha256", "version", "target", "size", "binary_len", "config_len", "created_ms", "key_id", "uploaded_by", "uploaded_ms"],
            "properties": { "sha256": text, "version": text, "target": text, "size": int, "binary_len": int,
                "config_len": int, "created_ms": int, "key_id": text, "uploaded_by": text, "uploaded_ms": int } },
        "UpdateBundlePage": { "type": "object", "required": ["items", "next_cursor"], "properties": {
            "items": { "type": "array", "items": { "$ref": "#/components/schemas/UpdateBundle" } },
            "next_cursor": { "type": ["string", "null"] } } },
        "NewUpdateOrder": { "type": "object", "required": ["bundle"], "additionalProperties": false, "properties": {
            "bundle": { "type": "string", "description": "SHA-256 of a stored bundle (lower-case hex)" },
            "token_ttl_s": { "type": "integer", "description": "download token lifetime, 1..=86400 s (default 900)" } } },
        "UpdateOrder": { "type": "object",
            "required": ["id", "gateway", "bundle", "version", "target", "ordered_by", "ordered_ms", "downloads", "status"],
            "properties": { "id": int, "gateway": text, "bundle": text, "version": text, "target": text,
                "ordered_by": text, "ordered_ms": int, "sent_ms": opt_int, "downloads": int,
                "status": { "type": "string", "enum": ["pending", "downloading", "installed", "on_trial", "committed", "rolled_back", "failed", "superseded"] },
                "detail": opt_text, "result_ms": opt_int } },
        "GatewayUpdates": { "type": "object", "required": ["gateway", "items"], "properties": {
            "gateway": text, "agent_version": opt_text, "installed": opt_text, "on_trial": opt_text,
            "history": { "type": "array", "items": { "type": "object", "properties": {
                "ts_ms": int, "event": text, "version": text, "detail": text } } },
            "items": { "type": "array", "items": { "$ref": "#/components/schemas/UpdateOrder" } } } },
    })
}

/// The enrolment components (apart: one `json!` of everything exceeds the macro recursion limit).
fn enrolment_schemas(ms: &Value) -> Value {
    let page = |item: &str| {
        json!({
            "type": "object", "required": ["items", "next_cursor"],
            "properties": { "items": { "type": "array", "items": { "$ref": format!("#/components/schemas/{item}") } },
                "next_cursor": { "type": ["string", "null"] } },
        })
    };
    json!({
        "NewEnrolment": { "type": "object", "required": ["gateway", "enterprise"], "additionalProperties": false,
            "properties": { "gateway": { "type": "string" }, "enterprise": { "type": "string" },
            "ttl_s": { "type": "integer", "description": "token lifetime, 60..=604800 s (default 3600)" } } },
        "EnrolmentToken": { "type": "object", "required": ["token", "expires_ms"], "properties": {
            "token": { "type": "string", "description": "shown once; central keeps only its SHA-256" },
            "expires_ms": ms, "gateway": { "type": "string" }, "enterprise": { "type": "string" } } },
        "Enrolment": { "type": "object", "properties": { "id": { "type": "string" }, "gateway": { "type": "string" },
            "enterprise": { "type": "string" }, "created_by": { "type": "string" }, "created_ms": ms, "expires_ms": ms } },
        "EnrolmentPage": page("Enrolment"),
        "Enrol": { "type": "object", "required": ["token_id", "public_key", "csr", "mac"], "additionalProperties": false,
            "description": "The token never travels: token_id names it (first 12 hex digits of SHA-256(token)), mac proves it (HMAC-SHA256 keyed by SHA-256(token), docs/PROTOCOL.md). The answer's MAC is in the vigil-enrolment-mac header.",
            "properties": { "token_id": { "type": "string" }, "mac": { "type": "string", "description": "hex" },
            "public_key": { "type": "string", "description": "ed25519:<hex>" },
            "csr": { "type": "string", "description": "PEM certificate signing request, CN = the gateway id" } } },
        "Enrolled": { "type": "object", "required": ["gateway", "enterprise", "cert_pem", "ca_pem", "central_public_key", "broker"],
            "properties": { "gateway": { "type": "string" }, "enterprise": { "type": "string" },
            "cert_pem": { "type": "string" }, "ca_pem": { "type": "string" }, "central_public_key": { "type": "string" },
            "broker": { "type": "object", "properties": { "host": { "type": "string" }, "port": { "type": "integer" } } } } },
    })
}

fn path_params(path: &str) -> Vec<&str> {
    path.split('/').filter_map(|s| s.strip_prefix('{').and_then(|s| s.strip_suffix('}'))).collect()
}

/// The whole document.
pub fn document() -> Value {
    let mut paths = serde_json::Map::new();
    for o in OPERATIONS {
        let mut params: Vec<Value> = path_params(o.path)
            .into_iter()
            .map(|p| json!({ "name": p, "in": "path", "required": true, "schema": { "type": "string" } }))
            .collect();
        params.extend(
            o.query
                .iter()
                .map(|(n, t, req)| json!({ "name": n, "in": "query", "required": req, "schema": { "type": t } })),
        );
        let ok = if o.ok.1.is_empty() {
            json!({ "description": "success" })
        } else {
            json!({ "description": "success", "content": { "application/json": { "schema": { "$ref": format!("#/components/schemas/{}", o.ok.1) } } } })
        };
        let problem = json!({ "description": "error", "content": { "application/problem+json": { "schema": { "$ref": "#/components/schemas/Problem" } } } });
        let mut responses = serde_json::Map::new();
        responses.insert(o.ok.0.to_string(), ok);
        responses.insert("default".into(), problem);
        let mut operation = json!({
            "summary": o.summary,
            "tags": [o.tag],
            "operationId": format!("{}_{}", o.method, o.path.trim_start_matches('/').replace(['/', '{', '}', '-', '.'], "_")),
            "parameters": params,
            "responses": responses,
        });
        match o.access {
            Access::Public => operation["security"] = json!([]),
            Access::Authenticated => {}
            Access::Roles(roles) => {
                operation["x-roles"] = json!(roles.iter().map(|r| r.as_str()).collect::<Vec<_>>());
            }
        }
        if o.body == Some(BINARY_BODY) {
            operation["requestBody"] = json!({ "required": true, "content": { "application/octet-stream": { "schema": { "type": "string", "format": "binary" } } } });
        } else if let Some(b) = o.body {
            operation["requestBody"] = json!({ "required": true, "content": { "application/json": { "schema": { "$ref": format!("#/components/schemas/{b}") } } } });
        }
        let entry = paths.entry(o.path.to_owned()).or_insert_with(|| json!({}));
        entry[o.method] = operation;
    }
    json!({
        "openapi": "3.1.0",
        "info": { "title": "Vigil central API", "version": env!("CARGO_PKG_VERSION"),
                  "description": "Errors are application/problem+json. Lists answer {items, next_cursor}; ?limit= defaults to 100, at most 1000. Times are UTC milliseconds. x-roles lists the roles allowed; others get 403. A confined (enterprise) caller gets 404 for other enterprises' objects." },
        "servers": [{ "url": "/" }],
        "security": [{ "bearer": [] }, { "cookie": [] }],
        "paths": paths,
        "components": {
            "securitySchemes": {
                "bearer": { "type": "http", "scheme": "bearer" },
                "cookie": { "type": "apiKey", "in": "cookie", "name": super::auth::COOKIE },
            },
            "schemas": schemas(),
        },
    })
}

async fn openapi() -> axum::Json<Value> {
    axum::Json(document())
}

/// The document's route.
pub fn routes() -> Router<ApiState> {
    Router::new().route("/api/v1/openapi.json", get(openapi))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// `(method, path)` of every `.route("...", get(..).post(..))` in the API's source files.
    fn routes_in_source() -> Vec<(String, String)> {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/api");
        let mut out = Vec::new();
        for entry in std::fs::read_dir(dir).unwrap() {
            let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
            let code: String =
                text.lines().filter(|l| !l.trim_start().starts_with("//")).collect::<Vec<_>>().join("\n");
            let mut rest = code.as_str();
            while let Some(ix) = rest.find(".route(\"") {
                rest = &rest[ix + 8..];
                let end = rest.find('"').unwrap();
                let path = rest[..end].to_owned();
                // The method router is everything up to the parenthesis closing `.route(`.
                let mut depth = 1;
                let mut close = 0;
                for (i, c) in rest.char_indices() {
                    match c {
                        '(' => depth += 1,
                        ')' => depth -= 1,
                        _ => {}
                    }
                    if depth == 0 {
                        close = i;
                        break;
                    }
                }
                let methods = &rest[end..close];
                for m in ["get", "post", "put", "patch", "delete"] {
                    let called = methods.match_indices(&format!("{m}(")).any(|(i, _)| {
                        i == 0
                            || !methods.as_bytes()[i - 1].is_ascii_alphanumeric() && methods.as_bytes()[i - 1] != b'_'
                    });
                    if called {
                        out.push((m.to_owned(), path.clone()));
                    }
                }
            }
        }
        out
    }

    #[test]
    fn every_route_in_the_source_is_documented_and_nothing_else() {
        let routes = routes_in_source();
        assert!(routes.len() >= 15, "the source scan found too little: {routes:?}");
        let doc = document();
        for (m, p) in &routes {
            assert!(
                doc["paths"][p][m].is_object(),
                "{} {p} is routed but missing from OPERATIONS in openapi.rs",
                m.to_uppercase()
            );
        }
        for o in OPERATIONS {
            assert!(
                routes.iter().any(|(m, p)| m == o.method && p == o.path),
                "{} {} is documented but no route serves it",
                o.method,
                o.path
            );
        }
        // References resolve.
        let text = doc.to_string();
        for r in text.split("\"$ref\":\"#/components/schemas/").skip(1) {
            let name = &r[..r.find('"').unwrap()];
            assert!(doc["components"]["schemas"][name].is_object(), "dangling $ref {name}");
        }
    }
}
