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
    BootstrapPosition, BootstrapResponse, Claims, ConflictsResponse, CreateDatabase, DatabaseInfo,
    DatabaseList, ErrorBody, ErrorCode, Format, PROTOCOL_VERSION, PullResponse, PushRequest,
    PushResponse,
};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use tokio::sync::watch;

use crate::auth::{AuthError, Keys};
use crate::config::Config;
use crate::error::ApiError;
use crate::hosted::Hosts;
use crate::metrics::{GaugeGuard, Metrics};
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
    /// Prometheus metrics.
    pub metrics: Arc<Metrics>,
    /// The `max_live` places of long polls and event streams.
    pub live: Arc<tokio::sync::Semaphore>,
}

/// The answer to `DELETE /v2/admin/databases/{name}`.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct DeletedDatabase {
    /// The deleted database's name.
    pub deleted: String,
}

/// The OpenAPI document of the HTTP API (served at `/openapi.json`).
#[derive(Debug, utoipa::OpenApi)]
#[openapi(
    info(title = "EntiDB sync server", description = "The sync protocol of docs/sync-protocol.md. Bodies are JSON or CBOR (Content-Type / Accept)."),
    paths(push, pull, events, bootstrap, conflicts, list_dbs, create_db, delete_db, readyz, render_metrics, healthz),
    modifiers(&BearerAuth),
    tags((name = "sync", description = "Push, pull, live updates, bootstrap, conflicts"),
         (name = "admin", description = "Hosted databases (admin scope)"),
         (name = "operations", description = "Health and metrics"))
)]
pub struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .build(),
            ),
        );
    }
}

#[utoipa::path(get, path = "/healthz", tag = "operations",
    responses((status = 200, description = "The process is up", content_type = "text/plain", body = String)))]
async fn healthz() -> &'static str {
    "ok"
}

async fn openapi_json() -> Response {
    use utoipa::OpenApi;
    match ApiDoc::openapi().to_json() {
        Ok(text) => ([(header::CONTENT_TYPE, "application/json")], text).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

/// Scrapes of `/metrics` served at once (more wait): a scraper sends one at a time.
const METRICS_IN_FLIGHT: usize = 4;

/// The router with every route and layer.
pub fn router(state: AppState) -> Router {
    let config = state.config.clone();
    let metrics = state.metrics.clone();
    // Requests that finish promptly share `max_in_flight` slots. Pulls (which may wait) and
    // event streams do not take a slot, so that waiting clients never starve pushes; they are
    // bounded by `max_live` instead. Health, readiness and metrics take no slot either: an
    // orchestrator's probe that queued behind a full server would time out, take the only
    // replica out of service, or restart it in the middle of its load. Metrics (which need
    // no token and cost more than a probe) have a few slots of their own.
    let operations = Router::new()
        .route("/metrics", get(render_metrics))
        .route_layer(tower::limit::GlobalConcurrencyLimitLayer::new(
            METRICS_IN_FLIGHT,
        ))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz));
    let prompt = Router::new()
        .route("/openapi.json", get(openapi_json))
        .route("/v2/admin/databases", get(list_dbs).post(create_db))
        .route("/v2/admin/databases/{name}", delete(delete_db))
        .route("/v2/db/{db}/push", post(push))
        .route("/v2/db/{db}/bootstrap", get(bootstrap))
        .route("/v2/db/{db}/conflicts", get(conflicts))
        .route_layer(tower::limit::GlobalConcurrencyLimitLayer::new(
            config.max_in_flight,
        ));
    let live = Router::new()
        .route("/v2/db/{db}/pull", get(pull))
        .route("/v2/db/{db}/events", get(events));
    let mut app = prompt
        .merge(live)
        .merge(operations)
        // Set before the metrics layer, so that these answers are counted too.
        .method_not_allowed_fallback(
            |method: axum::http::Method, uri: axum::http::Uri, headers: HeaderMap| async move {
                let message = format!("{} does not serve {method}", uri.path());
                reply_err(
                    &headers,
                    ApiError::new(ErrorCode::MethodNotAllowed, message),
                )
            },
        )
        .route_layer(axum::middleware::from_fn_with_state(
            metrics,
            crate::metrics::track,
        ))
        .fallback(|uri: axum::http::Uri, headers: HeaderMap| async move {
            let message = if uri.path().starts_with("/v1/") {
                // Protocol version 1 carried documents in place; this server would answer
                // such a client in a form it misreads (see `wire::PROTOCOL_VERSION`).
                format!(
                    "protocol version 1 is not served: this server speaks version \
                     {PROTOCOL_VERSION} (documents are tag 24 in CBOR bodies, \
                     docs/sync-protocol.md); upgrade the client"
                )
            } else {
                "no such endpoint".to_owned()
            };
            reply_err(&headers, ApiError::new(ErrorCode::NotFound, message))
        })
        .with_state(state)
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            Duration::from_millis(config.request_timeout_ms),
        ))
        .layer(
            tower_http::trace::TraceLayer::new_for_http()
                .make_span_with(|req: &axum::http::Request<Body>| {
                    let route = req
                        .extensions()
                        .get::<axum::extract::MatchedPath>()
                        .map_or("unmatched", |p| p.as_str());
                    tracing::info_span!(
                        "http_request",
                        otel.name = %format!("{} {route}", req.method()),
                        http.request.method = %req.method(),
                        http.route = route,
                        http.response.status_code = tracing::field::Empty,
                    )
                })
                .on_response(
                    |resp: &axum::http::Response<Body>,
                     _latency: Duration,
                     span: &tracing::Span| {
                        span.record("http.response.status_code", resp.status().as_u16());
                    },
                ),
        );
    if !config.cors_origins.is_empty() {
        use tower_http::cors::{AllowHeaders, AllowOrigin, Any, CorsLayer};
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
        // A browser's requests carry `Authorization`, which the Fetch standard leaves out
        // of a wildcard `Access-Control-Allow-Headers: *` (Chromium 156 still accepts the
        // wildcard; a browser that follows the standard refuses the request), so the
        // preflight answer names the headers the page asked for. The origin
        // list is the gate; every request still needs a valid token. Browsers may cache a
        // preflight for an hour (Safari caps it at minutes), or every push and pull would
        // cost two round trips.
        app = app.layer(
            CorsLayer::new()
                .allow_origin(origins)
                .allow_methods(Any)
                .allow_headers(AllowHeaders::mirror_request())
                .max_age(std::time::Duration::from_secs(3600)),
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
        // Every message has a JSON form; a document (stored from CBOR) may not.
        Err(e) if fmt == Format::Json => reply_err(headers, no_json_form(&e)),
        Err(e) => reply_err(
            headers,
            ApiError::internal(format!("encoding a reply: {e}")),
        ),
    }
}

/// The error for an answer that cannot be written as JSON: a document in it has no JSON
/// form (only CBOR can hold it).
fn no_json_form(e: &dyn std::fmt::Display) -> ApiError {
    ApiError::new(
        ErrorCode::NotAcceptable,
        format!(
            "the answer holds a document with no JSON form ({e}); ask for CBOR with \
             Accept: application/cbor"
        ),
    )
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
    bearer_token(headers)
        .and_then(|t| state.keys.verify(t))
        .map_err(|e| ApiError::new(ErrorCode::Unauthorized, e.to_string()))
}

/// The token of the request's one `Authorization: Bearer` header (the scheme's name in any
/// case, RFC 9110 §11.1). Several `Authorization` headers are refused: a proxy and this
/// server could each take another one.
fn bearer_token(headers: &HeaderMap) -> Result<&str, AuthError> {
    let mut all = headers.get_all(header::AUTHORIZATION).iter();
    let (Some(value), None) = (all.next(), all.next()) else {
        return Err(if headers.contains_key(header::AUTHORIZATION) {
            AuthError::Invalid("more than one Authorization header".into())
        } else {
            AuthError::Missing
        });
    };
    let value = value.to_str().map_err(|_| AuthError::Missing)?;
    match value.split_once(' ') {
        Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => Ok(token.trim()),
        _ => Err(AuthError::Missing),
    }
}

async fn read_body<T: entidb_sync::wire::Message>(
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
    let bytes = axum::body::to_bytes(body, limit).await.map_err(|e| {
        // Over the limit (a chunked body gives no length up front), or a body that did not
        // arrive whole (a broken chunked encoding, a client gone).
        let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&e);
        while let Some(s) = source {
            if s.is::<http_body_util::LengthLimitError>() {
                return too_large();
            }
            source = s.source();
        }
        ApiError::new(
            ErrorCode::MalformedBody,
            format!("the request body could not be read: {e}"),
        )
    })?;
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

#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "Prometheus/OpenMetrics text", content_type = "application/openmetrics-text", body = String)))]
async fn render_metrics(State(state): State<AppState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.render(),
    )
        .into_response()
}

/// The common start of every `/v2/db/{db}/...` read: the token, its database, the query
/// parameters and the open database.
async fn open_for<P: DeserializeOwned + Default>(
    state: &AppState,
    headers: &HeaderMap,
    db: &str,
    q: Option<String>,
) -> Result<(Claims, P, Arc<crate::hosted::Hosted>), ApiError> {
    let claims = authenticate(state, headers)?;
    service::check_db(&claims, db)?;
    let p: P = query(q)?;
    let hosted = state.hosts.get(db).await?;
    Ok((claims, p, hosted))
}

/// Refuses a new long poll or event stream when `max_live` are already waiting.
/// Takes one of the `max_live` places of waiting clients for as long as it is held (and
/// counts it in the gauge). A semaphore's places: requests arriving together cannot all
/// pass a check before any of them counts, and none is refused while a place is free.
fn reserve_live(state: &AppState) -> Result<LivePlace, ApiError> {
    match state.live.clone().try_acquire_owned() {
        Ok(permit) => Ok(LivePlace {
            _permit: permit,
            _gauge: GaugeGuard::new(&state.metrics.live_waiters),
        }),
        Err(_) => Err(ApiError::new(
            ErrorCode::Unavailable,
            format!(
                "{} clients are already waiting for changes (max_live); retry later",
                state.config.max_live
            ),
        )),
    }
}

/// A place among the `max_live` waiting clients, given back when dropped.
#[derive(Debug)]
struct LivePlace {
    _permit: tokio::sync::OwnedSemaphorePermit,
    _gauge: GaugeGuard,
}

/// A requested page size, defaulted and capped by `max_page`.
fn page_limit(state: &AppState, requested: Option<usize>) -> usize {
    service::page_limit(&state.config, requested)
}

#[utoipa::path(get, path = "/readyz", tag = "operations",
    responses((status = 200, description = "Ready", content_type = "text/plain", body = String),
              (status = 503, description = "Shutting down or the data directory is missing", body = ErrorBody)))]
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

/// An event stream's first page, read by its setup: nothing to send (and the cursor it read
/// to), or its event (with the cursor after it and its number of changes).
enum FirstPage {
    Empty(u64),
    Event(axum::response::sse::Event, u64, usize),
}

/// A page as an event stream's `changes` event (406 when a document has no JSON form).
fn changes_event(
    p: &entidb_sync::wire::PullResponse,
) -> Result<axum::response::sse::Event, ApiError> {
    axum::response::sse::Event::default()
        .event("changes")
        .id(p.cursor.to_string())
        .json_data(p)
        .map_err(|e| no_json_form(&e))
}

/// An event stream's last event: `error`, with the `ErrorBody` as its data.
fn error_event(e: &ApiError) -> axum::response::sse::Event {
    let data = serde_json::to_string(&e.body).unwrap_or_else(|_| {
        r#"{"code":"internal","message":"the error could not be encoded"}"#.to_owned()
    });
    axum::response::sse::Event::default()
        .event("error")
        .data(data)
}

/// How long `claims` stay valid (with the verifier's leeway), or `None` once they expired.
fn token_lifetime_left(claims: &Claims) -> Option<Duration> {
    let until = claims.exp.saturating_add(crate::auth::LEEWAY_SECS);
    let now = crate::auth::now_secs();
    (now < until).then(|| Duration::from_secs(until - now))
}

/// The one path parameter of a route (a database name), or an error answer with a body
/// (axum's own rejection of a path that does not decode, such as `%FF`, is plain text).
struct PathName(String);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for PathName {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, Self::Rejection> {
        match Path::<String>::from_request_parts(parts, state).await {
            Ok(Path(name)) => Ok(PathName(name)),
            Err(e) => Err(reply_err(
                &parts.headers,
                ApiError::new(
                    ErrorCode::BadRequest,
                    format!("bad path: {}", e.body_text()),
                ),
            )),
        }
    }
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

/// An admin token administers the databases its `db` claim allows: all of them for `*`,
/// else only the one it names.
fn require_admin_of(claims: &Claims, name: &str) -> Result<(), ApiError> {
    require_admin(claims)?;
    service::check_db(claims, name)
}

#[utoipa::path(get, path = "/v2/admin/databases", tag = "admin", security(("bearer" = [])),
    responses((status = 200, description = "The hosted databases", body = DatabaseList),
              (status = 401, description = "Missing, invalid or expired token", body = ErrorBody),
              (status = 403, description = "Needs the admin scope", body = ErrorBody),
              (status = 503, description = "Shutting down", body = ErrorBody)))]
async fn list_dbs(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let r = async {
        let claims = authenticate(&state, &headers)?;
        require_admin(&claims)?;
        let mut databases = Vec::new();
        // Only the databases the token's `db` claim allows.
        for name in state.hosts.names()? {
            if !claims.allows_db(&name) {
                continue;
            }
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

#[utoipa::path(post, path = "/v2/admin/databases", tag = "admin", security(("bearer" = [])),
    request_body(content = CreateDatabase, content_type = "application/json", description = "Also accepted as application/cbor"),
    responses((status = 200, description = "Created", body = DatabaseInfo),
              (status = 400, description = "Invalid name or malformed body", body = ErrorBody),
              (status = 401, description = "Missing, invalid or expired token", body = ErrorBody),
              (status = 403, description = "Needs the admin scope", body = ErrorBody),
              (status = 409, description = "The database exists", body = ErrorBody),
              (status = 413, description = "Body too large", body = ErrorBody),
              (status = 415, description = "Neither CBOR nor JSON", body = ErrorBody),
              (status = 503, description = "Shutting down", body = ErrorBody)))]
async fn create_db(State(state): State<AppState>, headers: HeaderMap, body: Body) -> Response {
    let r = async {
        let claims = authenticate(&state, &headers)?;
        require_admin(&claims)?;
        let req: CreateDatabase = read_body(&state, &headers, body).await?;
        require_admin_of(&claims, &req.name)?;
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

#[utoipa::path(delete, path = "/v2/admin/databases/{name}", tag = "admin", security(("bearer" = [])),
    params(("name" = String, Path, description = "Database name", pattern = "^[a-z0-9][a-z0-9_-]{0,63}$")),
    responses((status = 200, description = "Deleted", body = DeletedDatabase),
              (status = 400, description = "Invalid name", body = ErrorBody),
              (status = 401, description = "Missing, invalid or expired token", body = ErrorBody),
              (status = 403, description = "Needs the admin scope", body = ErrorBody),
              (status = 404, description = "No such database", body = ErrorBody),
              (status = 503, description = "Shutting down, or the database is closing", body = ErrorBody)))]
async fn delete_db(
    State(state): State<AppState>,
    headers: HeaderMap,
    PathName(name): PathName,
) -> Response {
    let r = async {
        require_admin_of(&authenticate(&state, &headers)?, &name)?;
        state.hosts.delete(&name).await?;
        tracing::info!(database = %name, "database deleted");
        Ok(DeletedDatabase { deleted: name })
    }
    .await;
    respond(&headers, r)
}

/// A push's query: with `since`, the answer also carries the pull page after it.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct PushParams {
    /// Also answer with the page of changes after this cursor, read after the push
    /// (`PushResponse.pull`): one exchange instead of a push and a pull.
    since: Option<u64>,
    /// The page's limit, as in a pull (only with `since`).
    limit: Option<usize>,
}

#[utoipa::path(post, path = "/v2/db/{db}/push", tag = "sync", security(("bearer" = [])),
    params(("db" = String, Path, description = "Database name", pattern = "^[a-z0-9][a-z0-9_-]{0,63}$"), PushParams),
    request_body(content = PushRequest, content_type = "application/json", description = "Also accepted as application/cbor"),
    responses((status = 200, description = "Per-op results; applied atomically", body = PushResponse), (status = 400, description = "Bad request or malformed body", body = ErrorBody), (status = 401, description = "Missing, invalid or expired token", body = ErrorBody), (status = 403, description = "The token does not allow this", body = ErrorBody), (status = 404, description = "No such database", body = ErrorBody), (status = 406, description = "A document in the answer has no JSON form; ask for CBOR", body = ErrorBody),
              (status = 410, description = "`since` is ahead of the server (its database was restored or created again): bootstrap again; nothing was stored", body = ErrorBody),
              (status = 413, description = "Body or document too large, or an answer over 16 MiB of documents", body = ErrorBody),
              (status = 415, description = "Neither CBOR nor JSON", body = ErrorBody),
              (status = 503, description = "Shutting down, or the database is closing", body = ErrorBody)))]
async fn push(
    State(state): State<AppState>,
    headers: HeaderMap,
    PathName(db): PathName,
    RawQuery(q): RawQuery,
    body: Body,
) -> Response {
    let r = async {
        let claims = authenticate(&state, &headers)?;
        service::check_db(&claims, &db)?;
        let p: PushParams = query(q)?;
        if p.limit.is_some() && p.since.is_none() {
            return Err(ApiError::new(
                ErrorCode::BadRequest,
                "limit is the page size of the pull a push asks for with since; give since too",
            ));
        }
        let hosted = state.hosts.get(&db).await?;
        let req: PushRequest = read_body(&state, &headers, body).await?;
        let page = p.since.map(|since| (since, page_limit(&state, p.limit)));
        let resp =
            service::push_with_page(&state.config, &hosted, &claims, req, page, &state.shutdown)
                .await?;
        for r in &resp.results {
            state.metrics.op(match r.status {
                entidb_sync::wire::OpStatus::Applied => "applied",
                entidb_sync::wire::OpStatus::Merged => "merged",
                entidb_sync::wire::OpStatus::Duplicate => "duplicate",
                entidb_sync::wire::OpStatus::Rejected => "rejected",
            });
        }
        if let Some(page) = &resp.pull {
            state.metrics.changes_sent.inc_by(page.changes.len() as u64);
        }
        Ok(resp)
    }
    .await;
    respond(&headers, r)
}

#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct PullParams {
    since: Option<u64>,
    limit: Option<usize>,
    /// Long-poll wait; the server waits at most its `max_wait_ms`.
    #[param(maximum = 60000)]
    wait_ms: Option<u64>,
}

#[utoipa::path(get, path = "/v2/db/{db}/pull", tag = "sync", security(("bearer" = [])),
    params(("db" = String, Path, description = "Database name", pattern = "^[a-z0-9][a-z0-9_-]{0,63}$"), PullParams),
    responses((status = 200, description = "A page of the oplog", body = PullResponse), (status = 400, description = "Bad request or malformed body", body = ErrorBody), (status = 401, description = "Missing, invalid or expired token", body = ErrorBody), (status = 403, description = "The token does not allow this", body = ErrorBody), (status = 404, description = "No such database", body = ErrorBody), (status = 406, description = "A document in the answer has no JSON form; ask for CBOR", body = ErrorBody),
              (status = 410, description = "The cursor is behind the retained oplog, or ahead of the server (its database was restored or created again): bootstrap again", body = ErrorBody),
              (status = 503, description = "Too many clients waiting (max_live)", body = ErrorBody)))]
async fn pull(
    State(state): State<AppState>,
    headers: HeaderMap,
    PathName(db): PathName,
    RawQuery(q): RawQuery,
) -> Response {
    let r = async {
        let (claims, p, hosted): (_, PullParams, _) = open_for(&state, &headers, &db, q).await?;
        if p.wait_ms.is_some_and(|w| w > 60_000) {
            return Err(ApiError::new(
                ErrorCode::BadRequest,
                "wait_ms is at most 60000 (the server caps waits at its max_wait_ms)",
            ));
        }
        let limit = page_limit(&state, p.limit);
        let wait = p
            .wait_ms
            .map(|w| Duration::from_millis(w.min(state.config.max_wait_ms)));
        let _waiting = wait.map(|_| reserve_live(&state)).transpose()?;
        let page = service::pull(
            &hosted,
            &claims,
            p.since.unwrap_or(0),
            limit,
            wait,
            &state.shutdown,
        )
        .await?;
        state.metrics.changes_sent.inc_by(page.changes.len() as u64);
        Ok(page)
    }
    .await;
    respond(&headers, r)
}

#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct BootstrapParams {
    collections: Option<String>,
    collection: Option<String>,
    #[param(value_type = Option<String>, format = Uuid)]
    after: Option<EntityId>,
    limit: Option<usize>,
}

#[utoipa::path(get, path = "/v2/db/{db}/bootstrap", tag = "sync", security(("bearer" = [])),
    params(("db" = String, Path, description = "Database name", pattern = "^[a-z0-9][a-z0-9_-]{0,63}$"), BootstrapParams),
    responses((status = 200, description = "A page of the current state", body = BootstrapResponse), (status = 400, description = "Bad request or malformed body", body = ErrorBody), (status = 401, description = "Missing, invalid or expired token", body = ErrorBody), (status = 403, description = "The token does not allow this", body = ErrorBody), (status = 404, description = "No such database", body = ErrorBody), (status = 406, description = "A document in the answer has no JSON form; ask for CBOR", body = ErrorBody), (status = 503, description = "Shutting down, or the database is closing", body = ErrorBody)))]
async fn bootstrap(
    State(state): State<AppState>,
    headers: HeaderMap,
    PathName(db): PathName,
    RawQuery(q): RawQuery,
) -> Response {
    let r = async {
        let (claims, p, hosted): (_, BootstrapParams, _) =
            open_for(&state, &headers, &db, q).await?;
        let limit = page_limit(&state, p.limit);
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

#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct ConflictParams {
    #[param(value_type = Option<String>, format = Uuid)]
    after: Option<EntityId>,
    limit: Option<usize>,
}

#[utoipa::path(get, path = "/v2/db/{db}/conflicts", tag = "sync", security(("bearer" = [])),
    params(("db" = String, Path, description = "Database name", pattern = "^[a-z0-9][a-z0-9_-]{0,63}$"), ConflictParams),
    responses((status = 200, description = "A page of the conflict log", body = ConflictsResponse), (status = 400, description = "Bad request or malformed body", body = ErrorBody), (status = 401, description = "Missing, invalid or expired token", body = ErrorBody), (status = 403, description = "The token does not allow this", body = ErrorBody), (status = 404, description = "No such database", body = ErrorBody), (status = 406, description = "A document in the answer has no JSON form; ask for CBOR", body = ErrorBody), (status = 503, description = "Shutting down, or the database is closing", body = ErrorBody)))]
async fn conflicts(
    State(state): State<AppState>,
    headers: HeaderMap,
    PathName(db): PathName,
    RawQuery(q): RawQuery,
) -> Response {
    let r = async {
        let (claims, p, hosted): (_, ConflictParams, _) =
            open_for(&state, &headers, &db, q).await?;
        let limit = page_limit(&state, p.limit);
        service::conflicts(&hosted, &claims, p.after, limit).await
    }
    .await;
    respond(&headers, r)
}

#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct EventParams {
    since: Option<u64>,
}

/// `GET /v2/db/{db}/events?since=C`: server-sent events. Each event is `changes` with a JSON
/// `PullResponse` and `id` = its cursor (so a reconnecting `EventSource` resumes from
/// `Last-Event-ID`); a failure ends the stream with an `error` event holding an `ErrorBody`.
#[utoipa::path(get, path = "/v2/db/{db}/events", tag = "sync", security(("bearer" = [])),
    params(("db" = String, Path, description = "Database name", pattern = "^[a-z0-9][a-z0-9_-]{0,63}$"), EventParams),
    responses((status = 200, description = "Server-sent events: `changes` events carrying a PullResponse as JSON", content_type = "text/event-stream", body = String), (status = 400, description = "Bad request or malformed body", body = ErrorBody), (status = 401, description = "Missing, invalid or expired token", body = ErrorBody), (status = 403, description = "The token does not allow this", body = ErrorBody), (status = 404, description = "No such database", body = ErrorBody),
              (status = 406, description = "The first page holds a document with no JSON form; ask for CBOR pages with pull", body = ErrorBody),
              (status = 410, description = "The cursor is behind the retained oplog, or ahead of the server (its database was restored or created again): bootstrap again", body = ErrorBody),
              (status = 503, description = "Too many clients waiting (max_live), or shutting down", body = ErrorBody)))]
async fn events(
    State(state): State<AppState>,
    headers: HeaderMap,
    PathName(db): PathName,
    RawQuery(q): RawQuery,
) -> Response {
    use axum::response::sse::{KeepAlive, Sse};
    let setup = async {
        let (claims, p, hosted): (_, EventParams, _) = open_for(&state, &headers, &db, q).await?;
        let place = reserve_live(&state)?;
        let since = headers
            .get("last-event-id")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .or(p.since)
            .unwrap_or(0);
        // Errors that the first read would hit (a cursor behind the oplog, or ahead of the
        // server, a page with a document that has no JSON form) are answered as plain HTTP
        // errors, before the stream starts: a browser's `EventSource` reconnects after an
        // error event, but not after an error status.
        let first = service::pull(
            &hosted,
            &claims,
            since,
            state.config.max_page,
            None,
            &state.shutdown,
        )
        .await?;
        // Encoded here, once: the stream sends this event first.
        let first = match first.changes.is_empty() {
            true => FirstPage::Empty(first.cursor),
            false => FirstPage::Event(changes_event(&first)?, first.cursor, first.changes.len()),
        };
        Ok((claims, hosted, since, place, first))
    }
    .await;
    let (claims, hosted, since, place, first) = match setup {
        Ok(x) => x,
        Err(e) => return reply_err(&headers, e),
    };
    let page = state.config.max_page;
    let wait = Duration::from_millis(state.config.max_wait_ms);
    // Comments keep an idle stream's connection from counting as idle (`idle_timeout_ms`).
    let keep_alive =
        (state.config.idle_timeout() / 3).clamp(Duration::from_millis(1), Duration::from_secs(15));
    let shutdown = state.shutdown.clone();
    let metrics = state.metrics.clone();
    let guard = Arc::new(place);
    // The stream's state: the cursor to read after (`None`: the stream is over), and the
    // first page's event, encoded by the setup, still to send.
    let start = match first {
        // Nothing to send: read on after what the setup read (maybe transactions the token
        // cannot see).
        FirstPage::Empty(cursor) => (Some(cursor), None),
        FirstPage::Event(ev, next, n) => (Some(since), Some((ev, next, n))),
    };
    let stream = futures_util::stream::unfold(start, move |(cursor, first)| {
        let (hosted, claims, shutdown, metrics, guard) = (
            hosted.clone(),
            claims.clone(),
            shutdown.clone(),
            metrics.clone(),
            guard.clone(),
        );
        async move {
            let _alive = guard;
            let mut since = cursor?;
            let mut first = first;
            loop {
                if *shutdown.borrow() {
                    return None;
                }
                // The token is checked for the whole stream, not only when it opened: once
                // it expires (with the verifier's leeway) the stream ends with an
                // `unauthorized` error, and a wait never runs past that moment.
                let Some(left) = token_lifetime_left(&claims) else {
                    let e = ApiError::new(ErrorCode::Unauthorized, AuthError::Expired.to_string());
                    return Some((Ok(error_event(&e)), (None, None)));
                };
                if let Some((ev, next, n)) = first.take() {
                    metrics.changes_sent.inc_by(n as u64);
                    return Some((Ok(ev), (Some(next), None)));
                }
                let wait = wait.min(left);
                match service::pull(&hosted, &claims, since, page, Some(wait), &shutdown).await {
                    Ok(p) if p.changes.is_empty() => since = p.cursor,
                    // A page with no JSON form is not skipped (its changes would be lost to
                    // the client): the stream ends with the reason (its `Last-Event-ID` is
                    // still the page before, and a reconnection from there gets the same
                    // error as a plain 406).
                    Ok(p) => {
                        return Some(match changes_event(&p) {
                            Ok(ev) => {
                                metrics.changes_sent.inc_by(p.changes.len() as u64);
                                (
                                    Ok::<_, std::convert::Infallible>(ev),
                                    (Some(p.cursor), None),
                                )
                            }
                            Err(e) => (Ok(error_event(&e)), (None, None)),
                        });
                    }
                    Err(e) => return Some((Ok(error_event(&e)), (None, None))),
                }
            }
        }
    });
    Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(keep_alive))
        .into_response()
}
