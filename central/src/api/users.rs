//! User administration for security administrators: `GET /users`, `POST /users`,
//! `PATCH /users/{name}`. Passwords set here must be changed by the user at the next login.

use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, patch};
use serde::Deserialize;

use super::auth::{MANAGE_USERS, Role};
use super::calllog::ClientAddr;
use super::{ApiError, ApiState, JsonBody, Principal, page, problem};
use crate::identity::{IdentityError, NewUser, UserPatch};
use crate::ingest::now_ms;

/// Maps an identity error to its answer.
pub fn identity_error(e: IdentityError) -> Response {
    match e {
        IdentityError::Invalid(d) => ApiError::new(StatusCode::BAD_REQUEST, d).into_response(),
        IdentityError::Policy(v) => {
            problem(StatusCode::BAD_REQUEST, &v.to_string(), serde_json::json!({ "rule": "password_policy" }))
        }
        IdentityError::NoSuchUser(u) => ApiError::not_found(format!("no user {u:?}")).into_response(),
        IdentityError::Exists(u) => {
            ApiError::new(StatusCode::CONFLICT, format!("user {u:?} exists already")).into_response()
        }
        other => ApiError::internal(other.to_string()).into_response(),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateBody {
    name: String,
    role: Role,
    #[serde(default)]
    enterprises: Option<Vec<String>>,
    /// Initial password; a compliant one is generated (and answered once) when absent.
    #[serde(default)]
    password: Option<String>,
}

/// `GET /users`.
async fn list(State(st): State<ApiState>, p: Principal) -> Result<Response, ApiError> {
    p.require(MANAGE_USERS)?;
    match st.identity.users().await {
        Ok(users) => Ok(page(users, None).into_response()),
        Err(e) => Ok(identity_error(e)),
    }
}

/// `POST /users`: 201 with the user (and the generated password, when one was generated).
async fn create(
    State(st): State<ApiState>,
    p: Principal,
    client: ClientAddr,
    JsonBody(body): JsonBody<CreateBody>,
) -> Result<Response, ApiError> {
    p.require(MANAGE_USERS)?;
    let (password, generated) = match body.password {
        Some(pw) => (pw, false),
        None => match st.identity.generate_password(&body.name) {
            Ok(pw) => (pw, true),
            Err(e) => return Ok(identity_error(e)),
        },
    };
    let new = NewUser {
        name: body.name,
        role: body.role,
        enterprises: body.enterprises,
        password: password.clone(),
        must_change: true,
    };
    match st.identity.add_user(new, &p.user, &client.0, now_ms()).await {
        Ok(user) => {
            let body = serde_json::json!({ "user": user, "password": generated.then_some(password) });
            Ok((StatusCode::CREATED, axum::Json(body)).into_response())
        }
        Err(e) => Ok(identity_error(e)),
    }
}

/// `PATCH /users/{name}`.
async fn update(
    State(st): State<ApiState>,
    p: Principal,
    client: ClientAddr,
    Path(name): Path<String>,
    JsonBody(body): JsonBody<UserPatch>,
) -> Result<Response, ApiError> {
    p.require(MANAGE_USERS)?;
    match st.identity.update_user(&name, body, &p.user, &client.0, now_ms()).await {
        Ok(user) => Ok(axum::Json(user).into_response()),
        Err(e) => Ok(identity_error(e)),
    }
}

/// The user routes.
pub fn routes() -> Router<ApiState> {
    Router::new().route("/api/v1/users", get(list).post(create)).route("/api/v1/users/{name}", patch(update))
}
