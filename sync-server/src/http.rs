//! The HTTP API (axum): routing, auth, content negotiation, body limits. What each endpoint
//! does is in [`crate::service`]; the protocol is `docs/sync-protocol.md`.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use entidb::EntityId;
use entidb_sync::wire::{
    BootstrapPosition, Claims, CreateDatabase, DatabaseInfo, DatabaseList, ErrorCode, Format,
    PushRequest,
};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use tokio::sync::watch;

use crate::auth::{AuthError, Keys};
use crate::config::Config;
use crate::error::ApiError;
use crate::hosted::Hosts;
use crate::service;

/// Everything a handler needs; cheap to clone.
#[derive(Debug, Clone)]
pub struct AppState {
    /// The configuration.
    pub config: Arc<Config>,
    /// Token verification keys.
    pub keys: Arc<Keys>,
    /// The hosted databases.
    pub hosts: Arc<Hosts>,
    /// Becomes true when the server starts shutting down.
    pub shutdown: watch::Receiver<bool>,
}

/// The router with every route and layer.
pub fn router(state: AppState) -> Router {
    let config = state.config.clone();
    let mut app = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/v1/admin/databases", get(list_dbs).post(create_db))
        .route("/v1/admin/databases/{name}", delete(delete_db))
        .route("/v1/db/{db}/push", post(push))
        .route("/v1/db/{db}/pull", get(pull))
        .route("/v1/db/{db}/bootstrap", get(bootstrap))
        .route("/v1/db/{db}/conflicts", get(conflicts))
        .fallback(|headers: HeaderMap| async move {
            reply_err(
                &headers,
                ApiError::new(ErrorCode::NotFound, "no such endpoint"),
            )
        })
        .with_state(state)
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            Duration::from_millis(config.request_timeout_ms),
        ))
        .layer(tower::limit::GlobalConcurrencyLimitLayer::new(
            config.max_in_flight,
        ))
        .layer(tower_http::trace::TraceLayer::new_for_http());
    if !config.cors_origins.is_empty() {
        use tower_http::cors::{AllowOrigin, Any, CorsLayer};
        let origins = if config.cors_origins.iter().any(|o| o == "*") {
            AllowOrigin::any()
        } else {
            AllowOrigin::list(
                config
                    .cors_origins
                    .iter()
                    .filter_map(|o| HeaderValue::from_str(o).ok()),
            )
        };
        app = app.layer(
            CorsLayer::new()
                .allow_origin(origins)
                .allow_methods(Any)
                .allow_headers(Any),
        );
    }
    app
}

fn format_of(headers: &HeaderMap) -> Format {
    Format::from_accept(headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()))
}

fn reply<T: serde::Serialize>(headers: &HeaderMap, status: StatusCode, value: &T) -> Response {
    let fmt = format_of(headers);
    match fmt.encode(value) {
        Ok(bytes) => (status, [(header::CONTENT_TYPE, fmt.media_type())], bytes).into_response(),
        Err(e) => reply_err(
            headers,
            ApiError::internal(format!("encoding a reply: {e}")),
        ),
    }
}

fn reply_err(headers: &HeaderMap, e: ApiError) -> Response {
    let fmt = format_of(headers);
    let status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let bytes = fmt
        .encode(&e.body)
        .unwrap_or_else(|_| b"{\"code\":\"internal\",\"message\":\"encoding failed\"}".to_vec());
    let mut resp = (status, [(header::CONTENT_TYPE, fmt.media_type())], bytes).into_response();
    if status == StatusCode::UNAUTHORIZED {
        resp.headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    resp
}

fn respond<T: serde::Serialize>(headers: &HeaderMap, r: Result<T, ApiError>) -> Response {
    match r {
        Ok(v) => reply(headers, StatusCode::OK, &v),
        Err(e) => reply_err(headers, e),
    }
}

fn authenticate(state: &AppState, headers: &HeaderMap) -> Result<Claims, ApiError> {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .ok_or(AuthError::Missing);
    token
        .and_then(|t| state.keys.verify(t.trim()))
        .map_err(|e| ApiError::new(ErrorCode::Unauthorized, e.to_string()))
}

async fn read_body<T: DeserializeOwned>(
    state: &AppState,
    headers: &HeaderMap,
    body: Body,
) -> Result<T, ApiError> {
    let limit = state.config.max_body_bytes;
    let too_large = || {
        ApiError::new(
            ErrorCode::PayloadTooLarge,
            format!("the request body exceeds {limit} bytes"),
        )
    };
    if let Some(len) = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        && len > limit as u64
    {
        return Err(too_large());
    }
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| {
            ApiError::new(
                ErrorCode::UnsupportedMediaType,
                "missing Content-Type: use application/cbor or application/json",
            )
        })?;
    let fmt = Format::from_content_type(ct)
        .map_err(|e| ApiError::new(ErrorCode::UnsupportedMediaType, e.to_string()))?;
    let bytes = axum::body::to_bytes(body, limit)
        .await
        .map_err(|_| too_large())?;
    fmt.decode(&bytes)
        .map_err(|e| ApiError::new(ErrorCode::MalformedBody, e.to_string()))
}

fn query<T: DeserializeOwned + Default>(q: Option<String>) -> Result<T, ApiError> {
    match q {
        None => Ok(T::default()),
        Some(q) => serde_urlencoded::from_str(&q)
            .map_err(|e| ApiError::new(ErrorCode::BadRequest, format!("bad query string: {e}"))),
    }
}

async fn readyz(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if *state.shutdown.borrow() {
        return reply_err(
            &headers,
            ApiError::new(ErrorCode::Unavailable, "the server is shutting down"),
        );
    }
    if !state.hosts.dir().is_dir() {
        return reply_err(
            &headers,
            ApiError::new(ErrorCode::Unavailable, "the data directory is missing"),
        );
    }
    (StatusCode::OK, "ready").into_response()
}

fn require_admin(claims: &Claims) -> Result<(), ApiError> {
    if claims.is_admin() {
        Ok(())
    } else {
        Err(ApiError::new(
            ErrorCode::Forbidden,
            "this endpoint needs the admin scope",
        ))
    }
}

async fn list_dbs(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let r = async {
        require_admin(&authenticate(&state, &headers)?)?;
        let mut databases = Vec::new();
        for name in state.hosts.names()? {
            let h = state.hosts.get(&name).await?;
            databases.push(DatabaseInfo {
                cursor: h.db.last_sequence(),
                name,
            });
        }
        Ok(DatabaseList { databases })
    }
    .await;
    respond(&headers, r)
}

async fn create_db(State(state): State<AppState>, headers: HeaderMap, body: Body) -> Response {
    let r = async {
        require_admin(&authenticate(&state, &headers)?)?;
        let req: CreateDatabase = read_body(&state, &headers, body).await?;
        let h = state.hosts.create(&req.name).await?;
        tracing::info!(database = %req.name, "database created");
        Ok(DatabaseInfo {
            name: req.name,
            cursor: h.db.last_sequence(),
        })
    }
    .await;
    respond(&headers, r)
}

async fn delete_db(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Response {
    let r = async {
        require_admin(&authenticate(&state, &headers)?)?;
        state.hosts.delete(&name).await?;
        tracing::info!(database = %name, "database deleted");
        Ok(serde_json::json!({ "deleted": name }))
    }
    .await;
    respond(&headers, r)
}

async fn push(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(db): Path<String>,
    body: Body,
) -> Response {
    let r = async {
        let claims = authenticate(&state, &headers)?;
        service::check_db(&claims, &db)?;
        let hosted = state.hosts.get(&db).await?;
        let req: PushRequest = read_body(&state, &headers, body).await?;
        service::push(&state.config, &hosted, &claims, req).await
    }
    .await;
    respond(&headers, r)
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct PullParams {
    since: Option<u64>,
    limit: Option<usize>,
    wait_ms: Option<u64>,
}

async fn pull(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(db): Path<String>,
    RawQuery(q): RawQuery,
) -> Response {
    let r = async {
        let claims = authenticate(&state, &headers)?;
        service::check_db(&claims, &db)?;
        let p: PullParams = query(q)?;
        let hosted = state.hosts.get(&db).await?;
        let limit = p
            .limit
            .unwrap_or(state.config.max_page)
            .clamp(1, state.config.max_page);
        let wait = p
            .wait_ms
            .map(|w| Duration::from_millis(w.min(state.config.max_wait_ms)));
        service::pull(
            &hosted,
            &claims,
            p.since.unwrap_or(0),
            limit,
            wait,
            &state.shutdown,
        )
        .await
    }
    .await;
    respond(&headers, r)
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct BootstrapParams {
    collections: Option<String>,
    collection: Option<String>,
    after: Option<EntityId>,
    limit: Option<usize>,
}

async fn bootstrap(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(db): Path<String>,
    RawQuery(q): RawQuery,
) -> Response {
    let r = async {
        let claims = authenticate(&state, &headers)?;
        service::check_db(&claims, &db)?;
        let p: BootstrapParams = query(q)?;
        let hosted = state.hosts.get(&db).await?;
        let limit = p
            .limit
            .unwrap_or(state.config.max_page)
            .clamp(1, state.config.max_page);
        let from = match (p.collection, p.after) {
            (Some(collection), after) => Some(BootstrapPosition { collection, after }),
            (None, Some(_)) => {
                return Err(ApiError::new(
                    ErrorCode::BadRequest,
                    "`after` needs `collection`",
                ));
            }
            (None, None) => None,
        };
        service::bootstrap(&hosted, &claims, p.collections.as_deref(), from, limit).await
    }
    .await;
    respond(&headers, r)
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConflictParams {
    after: Option<EntityId>,
    limit: Option<usize>,
}

async fn conflicts(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(db): Path<String>,
    RawQuery(q): RawQuery,
) -> Response {
    let r = async {
        let claims = authenticate(&state, &headers)?;
        service::check_db(&claims, &db)?;
        let p: ConflictParams = query(q)?;
        let hosted = state.hosts.get(&db).await?;
        let limit = p
            .limit
            .unwrap_or(state.config.max_page)
            .clamp(1, state.config.max_page);
        service::conflicts(&hosted, &claims, p.after, limit).await
    }
    .await;
    respond(&headers, r)
}
