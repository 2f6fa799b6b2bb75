//! How the replicator reaches the server: one verb, [`Transport::send`], so tests and the
//! simulation can put any network (or none) between a client and a server.

use entidb_io::{BoxFuture, MaybeSend, MaybeSync};

/// HTTP method of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// GET.
    Get,
    /// POST.
    Post,
}

/// One request. `path` starts with `/v2/` and includes the query string.
#[derive(Debug, Clone)]
pub struct Request {
    /// GET or POST.
    pub method: Method,
    /// Path and query.
    pub path: String,
    /// CBOR body (POST only).
    pub body: Option<Vec<u8>>,
}

/// One response.
#[derive(Debug, Clone)]
pub struct Response {
    /// HTTP status.
    pub status: u16,
    /// Body bytes (CBOR on success and on errors from an EntiDB server).
    pub body: Vec<u8>,
}

/// A network failure: the request may or may not have reached the server.
#[derive(Debug, Clone, thiserror::Error)]
#[error("network error: {0}")]
pub struct TransportError(pub String);

/// Sends requests to a sync server. Implementations add the bearer token and ask for CBOR.
pub trait Transport: MaybeSend + MaybeSync + std::fmt::Debug + 'static {
    /// Sends one request and returns the server's response.
    ///
    /// Dropping the returned future must abandon the request (close or reset its stream, as
    /// reqwest does and a browser's `fetch` does with an `AbortController`): a live round
    /// drops its long poll when the app writes, and a poll left open on the server would hold
    /// one of its `max_live` places until the poll's wait ran out.
    fn send(&self, request: Request) -> BoxFuture<'_, Result<Response, TransportError>>;
}

/// How long [`HttpTransport::new`] waits for a connection to open.
pub const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(15);

/// How long [`HttpTransport::new`] waits for any byte of an answer: above the longest wait
/// a long poll asks for ([`crate::MAX_WAIT`], 60 s).
pub const READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(90);

/// The HTTP transport: reqwest, which is hyper with rustls on native targets and the
/// browser's `fetch` on `wasm32`. In a browser the server must allow the page's origin
/// (`cors_origins`, see docs/operations.md).
#[derive(Debug, Clone)]
pub struct HttpTransport {
    /// The client, or why it could not be built (reported by every request).
    client: Result<reqwest::Client, String>,
    base: String,
    token: String,
}

impl HttpTransport {
    /// A transport to the server at `base_url` (for example `http://127.0.0.1:7420`) that
    /// authenticates with `token`. Never panics: if the HTTP client cannot be built (no TLS
    /// roots could be loaded, say), every request fails with a [`TransportError`] that says
    /// why.
    ///
    /// On native targets it gives up connecting after [`CONNECT_TIMEOUT`] and a connection
    /// that sends nothing for [`READ_TIMEOUT`] (longer than any long poll a replicator asks
    /// for): a connection left half-open by a network change (a phone moving between
    /// networks) otherwise held a round, and the replicator's other calls behind it, for
    /// as long as the operating system kept the socket. (In a browser the page's `fetch`
    /// has its own limits.)
    pub fn new(base_url: &str, token: &str) -> HttpTransport {
        Self::with_timeouts(base_url, token, CONNECT_TIMEOUT, READ_TIMEOUT)
    }

    /// [`HttpTransport::new`] with other timeouts (ignored on `wasm32`).
    pub fn with_timeouts(
        base_url: &str,
        token: &str,
        connect: std::time::Duration,
        read: std::time::Duration,
    ) -> HttpTransport {
        let builder = reqwest::Client::builder();
        #[cfg(not(target_arch = "wasm32"))]
        let builder = builder.connect_timeout(connect).read_timeout(read);
        #[cfg(target_arch = "wasm32")]
        let _ = (connect, read);
        // Not `Client::new()`, which panics on such a failure.
        let client = builder.build().map_err(|e| describe(e).0);
        Self::over(client, base_url, token)
    }

    /// Like [`HttpTransport::new`], over a client you configured: the roots a server's
    /// certificate must chain to (a private CA), a proxy, timeouts. `reqwest` is
    /// re-exported as [`crate::reqwest`], so the versions match.
    ///
    /// ```no_run
    /// # fn demo(ca_pem: &[u8]) -> Result<(), Box<dyn std::error::Error>> {
    /// use entidb_sync::{HttpTransport, reqwest};
    ///
    /// let client = reqwest::Client::builder()
    ///     .tls_certs_only([reqwest::Certificate::from_pem(ca_pem)?])
    ///     .build()?;
    /// let transport = HttpTransport::with_client(client, "https://sync.internal", "TOKEN");
    /// # Ok(()) }
    /// ```
    pub fn with_client(client: reqwest::Client, base_url: &str, token: &str) -> HttpTransport {
        Self::over(Ok(client), base_url, token)
    }

    fn over(client: Result<reqwest::Client, String>, base_url: &str, token: &str) -> Self {
        HttpTransport {
            client,
            base: base_url.trim_end_matches('/').to_owned(),
            token: token.to_owned(),
        }
    }
}

impl Transport for HttpTransport {
    fn send(&self, request: Request) -> BoxFuture<'_, Result<Response, TransportError>> {
        Box::pin(async move {
            let client = self
                .client
                .as_ref()
                .map_err(|e| TransportError(format!("the HTTP client could not be built: {e}")))?;
            let url = format!("{}{}", self.base, request.path);
            let builder = match request.method {
                Method::Get => client.get(url),
                Method::Post => client.post(url),
            };
            let mut builder = builder
                .bearer_auth(&self.token)
                .header("accept", crate::wire::CBOR);
            if let Some(body) = request.body {
                builder = builder.header("content-type", crate::wire::CBOR).body(body);
            }
            let resp = builder.send().await.map_err(describe)?;
            let status = resp.status().as_u16();
            let body = resp.bytes().await.map_err(describe)?;
            Ok(Response {
                status,
                body: body.to_vec(),
            })
        })
    }
}

/// A reqwest error with its causes: reqwest's own message ("error sending request for url
/// ...") hides what went wrong (refused, timed out, a certificate the client does not trust).
fn describe(e: reqwest::Error) -> TransportError {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(cause) = source {
        // One line each: in a browser a cause is a JavaScript error with its whole stack.
        let cause_text = cause.to_string();
        let cause_text = cause_text.lines().next().unwrap_or_default().trim_end();
        // Layers often repeat their inner error's message.
        if !text.ends_with(cause_text) {
            text.push_str(": ");
            text.push_str(cause_text);
        }
        source = cause.source();
    }
    TransportError(text)
}
