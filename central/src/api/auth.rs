//! Who is calling: the authentication layer and the session endpoints under `/api/v1/auth/`.
//! The layer turns a bearer token or the `vigil_session` cookie into a [`Principal`] in the
//! request's extensions; handlers take a `Principal` argument (missing: 401) and check the role
//! with [`Principal::require`]. Every `/api/` path except [`PUBLIC`] answers 401 without one, even
//! if its handler forgot to ask.

use axum::Router;
use axum::extract::{FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;

use crate::identity::{IdentityError, LoginError, PolicyViolation, Session};
pub use crate::identity::{Principal, Role};
use crate::ingest::now_ms;

use super::calllog::{CallActor, ClientAddr};
use super::{ApiError, ApiState, JsonBody, problem};

/// The session cookie's name.
pub const COOKIE: &str = "vigil_session";

/// `/api/` paths answered without authentication.
pub const PUBLIC: &[&str] = &[
    "/api/v1/auth/login",
    "/api/v1/auth/password",
    "/api/v1/health",
    "/api/v1/openapi.json",
    "/api/v1/enrol",
    // The gateway's bundle download: the order's download token is its credential.
    crate::updates::DOWNLOAD_PATH,
];

/// Roles that read process data: points, values, history, gateways, enterprises.
pub const READ_DATA: &[Role] = &[Role::ParkAdmin, Role::Operator, Role::EnterpriseUser, Role::FieldTechnician];
/// Roles that manage users.
pub const MANAGE_USERS: &[Role] = &[Role::SecurityAdmin];
/// Roles that read the API-call and audit logs.
pub const READ_LOGS: &[Role] = &[Role::Auditor];

/// Why authentication failed, kept for the 401 answer's detail.
#[derive(Debug, Clone)]
struct AuthFailure(&'static str);

impl Principal {
    /// 403 unless the caller has one of `roles`.
    pub fn require(&self, roles: &[Role]) -> Result<(), ApiError> {
        if roles.contains(&self.role) {
            return Ok(());
        }
        let names: Vec<&str> = roles.iter().map(|r| r.as_str()).collect();
        Err(ApiError::forbidden(format!("role {} may not do this; it needs one of: {}", self.role, names.join(", "))))
    }
}

fn unauthorized(parts: &Parts) -> ApiError {
    let why = parts.extensions.get::<AuthFailure>().map_or("authentication required", |f| f.0);
    ApiError::new(StatusCode::UNAUTHORIZED, why)
}

impl<S: Send + Sync> FromRequestParts<S> for Principal {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        parts.extensions.get::<Principal>().cloned().ok_or_else(|| unauthorized(parts))
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Session {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        parts.extensions.get::<Session>().cloned().ok_or_else(|| unauthorized(parts))
    }
}

/// The token a request carries: `Authorization: Bearer T`, else the session cookie.
fn token(headers: &HeaderMap) -> Option<String> {
    if let Some(v) = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()) {
        let (scheme, rest) = v.split_once(' ')?;
        return scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim().to_owned());
    }
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v.to_owned())
}

/// The authentication layer.
pub async fn authenticate(State(st): State<ApiState>, mut req: Request, next: Next) -> Response {
    let mut actor = None;
    if let Some(t) = token(req.headers()) {
        match st.identity.authenticate(&t, now_ms()).await {
            Ok(Some(session)) => {
                let p = session.principal();
                actor = Some(CallActor { user: p.user.clone(), role: Some(p.role) });
                req.extensions_mut().insert(p);
                req.extensions_mut().insert(session);
            }
            Ok(None) => {
                req.extensions_mut().insert(AuthFailure("the token is unknown, expired or revoked; log in again"));
            }
            Err(e) => return ApiError::internal(format!("checking the token: {e}")).into_response(),
        }
    }
    let path = req.uri().path();
    if actor.is_none() && path.starts_with("/api/") && !PUBLIC.contains(&path) {
        let (parts, _) = req.into_parts();
        return unauthorized(&parts).into_response();
    }
    let mut resp = next.run(req).await;
    if let Some(a) = actor
        && resp.extensions().get::<CallActor>().is_none()
    {
        resp.extensions_mut().insert(a);
    }
    resp
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LoginBody {
    user: String,
    password: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PasswordBody {
    /// Needed only without a session (an expired password cannot log in).
    #[serde(default)]
    user: Option<String>,
    old: String,
    new: String,
}

fn cookie(st: &ApiState, value: &str, max_age_s: i64) -> HeaderValue {
    let secure = if st.settings.secure_cookie { "; Secure" } else { "" };
    let text = format!("{COOKIE}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age_s}{secure}");
    // Token and settings are ASCII; a failure here would be a bug, answered by no cookie.
    HeaderValue::from_str(&text).unwrap_or_else(|_| HeaderValue::from_static(""))
}

fn session_response(st: &ApiState, session: &Session) -> Response {
    let max_age = ((session.expires_at_ms - now_ms()) / 1000).max(0);
    let mut resp = axum::Json(session).into_response();
    if let Some(t) = &session.token {
        resp.headers_mut().insert(header::SET_COOKIE, cookie(st, t, max_age));
    }
    resp.extensions_mut().insert(CallActor { user: session.user.clone(), role: Some(session.role) });
    resp
}

fn login_error(e: LoginError) -> Response {
    let detail = e.to_string();
    match e {
        LoginError::BadCredentials { remaining } => {
            problem(StatusCode::UNAUTHORIZED, &detail, serde_json::json!({ "attempts_remaining": remaining }))
        }
        LoginError::Locked { until_ms } => {
            problem(StatusCode::LOCKED, &detail, serde_json::json!({ "locked_until_ms": until_ms }))
        }
        LoginError::PasswordExpired => {
            problem(StatusCode::FORBIDDEN, &detail, serde_json::json!({ "password_expired": true }))
        }
        LoginError::Disabled => problem(StatusCode::FORBIDDEN, &detail, serde_json::json!({})),
        LoginError::Identity(IdentityError::Policy(v)) => policy_error(&v),
        LoginError::Identity(e) => ApiError::internal(e.to_string()).into_response(),
    }
}

fn policy_error(v: &PolicyViolation) -> Response {
    let rule = match v {
        PolicyViolation::TooShort { .. } => "min_length",
        PolicyViolation::TooLong { .. } => "max_length",
        PolicyViolation::TooFewClasses { .. } => "min_classes",
        PolicyViolation::ContainsUserName => "user_name",
        PolicyViolation::Reused { .. } => "history",
    };
    problem(StatusCode::BAD_REQUEST, &v.to_string(), serde_json::json!({ "rule": rule }))
}

/// `POST /auth/login`.
async fn login(State(st): State<ApiState>, client: ClientAddr, JsonBody(body): JsonBody<LoginBody>) -> Response {
    let attempted = CallActor { user: body.user.clone(), role: None };
    let mut resp = match st.identity.login(&body.user, &body.password, &client.0, now_ms()).await {
        Ok(session) => return session_response(&st, &session),
        Err(e) => login_error(e),
    };
    resp.extensions_mut().insert(attempted);
    resp
}

/// `POST /auth/logout`.
async fn logout(State(st): State<ApiState>, client: ClientAddr, session: Session) -> Result<Response, ApiError> {
    st.identity.logout(&session, &client.0, now_ms()).await.map_err(|e| ApiError::internal(e.to_string()))?;
    let mut resp = StatusCode::NO_CONTENT.into_response();
    resp.headers_mut().insert(header::SET_COOKIE, cookie(&st, "", 0));
    Ok(resp)
}

/// `GET /auth/me`.
async fn me(session: Session) -> axum::Json<Session> {
    axum::Json(session)
}

/// `POST /auth/password`: with a session for its user, or without one naming `user` (how an
/// expired password is replaced). Answers a new session; the user's other sessions end.
async fn password(
    State(st): State<ApiState>,
    client: ClientAddr,
    session: Option<axum::Extension<Session>>,
    JsonBody(body): JsonBody<PasswordBody>,
) -> Response {
    let session = session.map(|s| s.0);
    let user = match (&session, &body.user) {
        (Some(s), Some(u)) if *u != s.user => {
            return ApiError::forbidden("a session changes only its own user's password").into_response();
        }
        (Some(s), _) => s.user.clone(),
        (None, Some(u)) => u.clone(),
        (None, None) => {
            return ApiError::new(StatusCode::UNAUTHORIZED, "log in, or name the user whose password to change")
                .into_response();
        }
    };
    let attempted = CallActor { user: user.clone(), role: session.as_ref().map(|s| s.role) };
    let mut resp = match st.identity.change_password(&user, &body.old, &body.new, &client.0, now_ms()).await {
        Ok(s) => return session_response(&st, &s),
        Err(e) => login_error(e),
    };
    resp.extensions_mut().insert(attempted);
    resp
}

/// The session routes.
pub fn routes() -> Router<ApiState> {
    Router::new()
        .route("/api/v1/auth/login", post(login))
        .route("/api/v1/auth/logout", post(logout))
        .route("/api/v1/auth/me", get(me))
        .route("/api/v1/auth/password", post(password))
}
