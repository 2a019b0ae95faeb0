//! The one place where a failure becomes an HTTP response: each `ProxyError` has its status, a
//! short public body, and a reason for the log. Nothing on the request path returns `Err` to hyper.

use http::StatusCode;

/// Why tandem answered a request itself instead of relaying a backend's response.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("no pool serves host `{host}` and this path")]
    NoPool { host: String },
    #[error("no backend of pool `{pool}` takes new requests")]
    NoBackend { pool: String },
    #[error("request target of {length} bytes is over the {limit} byte limit")]
    UriTooLong { length: usize, limit: usize },
    #[error("bad request: {0}")]
    BadRequest(&'static str),
    #[error("cannot connect to the backend: {0}")]
    Connect(String),
    #[error("the backend did not answer in time: {0}")]
    Timeout(String),
    #[error("the backend failed: {0}")]
    Upstream(String),
}

impl ProxyError {
    /// The status the client receives.
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::NoPool { .. } => StatusCode::NOT_FOUND,
            ProxyError::NoBackend { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::UriTooLong { .. } => StatusCode::URI_TOO_LONG,
            ProxyError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ProxyError::Connect(_) | ProxyError::Upstream(_) => StatusCode::BAD_GATEWAY,
            ProxyError::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    /// The plain-text body the client receives: what happened, without internal details.
    pub fn public_body(&self) -> &'static str {
        match self {
            ProxyError::NoPool { .. } => "404 Not Found: no site is served at this address\n",
            ProxyError::NoBackend { .. } => "503 Service Unavailable: no server is available\n",
            ProxyError::UriTooLong { .. } => "414 URI Too Long\n",
            ProxyError::BadRequest(_) => "400 Bad Request\n",
            ProxyError::Connect(_) | ProxyError::Upstream(_) => {
                "502 Bad Gateway: the server failed\n"
            }
            ProxyError::Timeout(_) => "504 Gateway Timeout: the server did not answer in time\n",
        }
    }

    /// Whether the client connection should be closed after this response (its framing may be off).
    pub fn closes_connection(&self) -> bool {
        matches!(
            self,
            ProxyError::BadRequest(_) | ProxyError::UriTooLong { .. }
        )
    }
}

/// Describes an error and its sources in one line, outermost first.
pub fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(inner) = source {
        let inner_text = inner.to_string();
        if !text.contains(&inner_text) {
            text.push_str(": ");
            text.push_str(&inner_text);
        }
        source = inner.source();
    }
    text
}
